"""Decode each block once: pass 1 keeps the samples it decoded in a temp file that pass 2 reads back.

The whole-raster p90s need every pixel before the first tile can be normalised, so without a copy pass 2
decodes the raster again, overlaps included. :class:`DecodedRaster` holds the model's bands as raw samples,
band by band (``bands x height x width``, then one validity byte per pixel when the raster can have invalid
pixels), in an unnamed file (``O_TMPFILE``) in ``TMPDIR``: the kernel frees it when it is closed or when the
process dies, so nothing can be left behind. It is read and written with ``pread``/``pwrite``, never mapped,
so its pages count against the page cache, not the process' RSS.

:func:`keep_decoded` says when the copy pays: a compressed raster of more than one tile row whose copy fits
the disk. It does not pay for an uncompressed raster (reading it back is what re-reading the file costs), a
raster of one tile row (pass 2 reads each pixel about once anyway), nor for fan-out shards (pass 1 runs in
other invocations; :mod:`model.predictor.bands`).

Example:
    >>> keep_decoded(bytes_needed=335_544_320, tile_rows=4, compression="DEFLATE", free_bytes=10**10)
    (True, 'DEFLATE, 4 tile rows: decoded once, 335.5 MB kept in TMPDIR')
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
from rasterio.windows import Window

from model.io.raster import RasterHeader

DISK_MARGIN_BYTES = 64 * 1024**2  # left free in TMPDIR beside the copy (the output is written there too)


def decoded_bytes(header: RasterHeader, bands: Sequence[int]) -> int:
    """Bytes the copy of ``bands`` (and the validity plane, where needed) takes on disk."""
    itemsize = np.dtype(header.dtypes[bands[0] - 1]).itemsize
    planes = len(bands) * itemsize + (1 if header.may_have_invalid else 0)
    return header.height * header.width * planes


def keep_decoded(bytes_needed: int, tile_rows: int, compression: str, free_bytes: int) -> tuple[bool, str]:
    """Whether pass 1 should keep what it decodes for pass 2, and why (one line for the log); pure."""
    if compression == "NONE":
        return False, "uncompressed: pass 2 reads the file itself"
    if tile_rows < 2:
        return False, "one tile row: each pixel is decoded about once anyway"
    if bytes_needed + DISK_MARGIN_BYTES > free_bytes:
        free = f"{free_bytes / 1e6:.1f} MB free"
        return False, f"{bytes_needed / 1e6:.1f} MB would not fit TMPDIR ({free}): decoded twice"
    return True, f"{compression}, {tile_rows} tile rows: decoded once, {bytes_needed / 1e6:.1f} MB kept in TMPDIR"


class DecodedRaster:
    """The decoded samples of ``bands`` (and their validity) in an unnamed temp file; a context manager."""

    def __init__(self, header: RasterHeader, bands: Sequence[int], directory: str | None = None) -> None:
        self.bands = tuple(bands)
        self.height, self.width = header.height, header.width
        self.dtype = np.dtype(header.dtypes[self.bands[0] - 1])
        self.with_valid = header.may_have_invalid
        self.bytes = decoded_bytes(header, self.bands)
        # Unnamed where the OS allows: freed on close or on the process' death. Closed by close() / __exit__.
        self.file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        self.fd = self.file.fileno()
        try:
            os.ftruncate(self.fd, self.bytes)
        except BaseException:
            self.file.close()
            raise

    def __enter__(self) -> DecodedRaster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def _offset(self, plane: int, row: int, col: int, itemsize: int) -> int:
        return plane * self.height * self.width * self.dtype.itemsize + (row * self.width + col) * itemsize

    def write(self, window: Window, data: np.ndarray, valid: np.ndarray | None) -> None:
        """Keep ``data`` (``bands x h x w``) and ``valid`` (``h x w``, None: all valid) of ``window``."""
        left, top = int(window.col_off), int(window.row_off)
        for plane, values in enumerate(data):
            self._write_plane(plane, values.astype(self.dtype, copy=False), top, left)
        if self.with_valid:
            flags = np.ones(data.shape[1:], dtype=np.uint8) if valid is None else valid.astype(np.uint8)
            self._write_plane(len(self.bands), flags, top, left)

    def _write_plane(self, plane: int, values: np.ndarray, top: int, left: int) -> None:
        if values.shape[1] == self.width:  # whole rows: one contiguous run
            os.pwrite(self.fd, np.ascontiguousarray(values).data, self._offset(plane, top, 0, values.itemsize))
            return
        for i, row in enumerate(values):
            os.pwrite(self.fd, np.ascontiguousarray(row).data, self._offset(plane, top + i, left, values.itemsize))

    def read_window(
        self, bands: Sequence[int], window: Window, all_valid: bool = True, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """What :func:`model.io.raster.read_window` returns for ``window``, from the copy (validity: all or None).

        ``out``: an array of the result's shape and type to read into.
        """
        if tuple(bands) != self.bands:
            raise ValueError(f"the copy holds bands {self.bands}, not {tuple(bands)}")
        left, top = int(window.col_off), int(window.row_off)
        width, height = int(window.width), int(window.height)
        data = np.empty((len(self.bands), height, width), dtype=self.dtype) if out is None else out
        for plane in range(len(self.bands)):
            if width == self.width:  # whole rows: straight into the result
                self._read_into(data[plane], plane, top)
            else:
                data[plane] = self._read_plane(plane, self.dtype, top, left, height, width)
        valid = None
        if self.with_valid:
            valid = self._read_plane(len(self.bands), np.dtype(np.uint8), top, left, height, width).astype(bool)
        return data, valid

    def _read_plane(self, plane: int, dtype: np.dtype, top: int, left: int, height: int, width: int) -> np.ndarray:
        rows = np.empty((height, self.width), dtype=dtype)  # whole rows: one read; memory bounded by the width
        self._read_into(rows, plane, top)
        return rows[:, left : left + width]

    def _read_into(self, rows: np.ndarray, plane: int, top: int) -> None:
        got = os.preadv(self.fd, [rows.data.cast("B")], self._offset(plane, top, 0, rows.itemsize))
        if got != rows.nbytes:
            raise OSError(f"short read from the decoded copy: {got} of {rows.nbytes} bytes")
