"""Decode each block once: pass 1 keeps the samples it decoded in a temp file that pass 2 reads back.

The whole-raster p90s need every pixel before the first tile can be normalised, so without a copy pass 2
decodes the raster again, overlaps included. :class:`DecodedRaster` holds the model's bands as raw samples,
band by band (``bands x height x width``, then one validity byte per pixel when the raster can have invalid
pixels), in an unnamed file (``O_TMPFILE``) in ``TMPDIR``: the kernel frees it when it is closed or when the
process dies, so nothing can be left behind. It is read and written with ``pread``/``pwrite``, never mapped,
so its pages count against the page cache, not the process' RSS.

:func:`keep_decoded` says when the copy pays: when pass 2 would decode the compressed raster at least
:data:`COPY_COST_IN_DECODES` times over (:func:`redecode_factor`) and the copy fits the disk. Measured
(``make bench`` [6], 2 cores, 4096 x 4096 x 10 uint16 DEFLATE in 512 x 512 blocks): pass 1 decodes in
0.47-0.62 s; pass 2 decodes again in 0.60 s on the card's 512 grid (1.1x the raster: GDAL's cache of one row
of blocks serves the block row two tile rows share), about 0.69 s on the fitted grid (1.375x: 1072-row tile
rows overlapping by 64 re-decode one block row each); writing the copy takes 0.64-0.68 s and reading it
back 0.06 s (fresh page-cache pages on a VM that backs memory lazily), about 1.45 decodes. So on these tile
grids the copy does not pay here, and by default it is kept only where pass 2 would decode the raster at
least 1.45 times. It never pays for an uncompressed raster (reading it back is what re-reading the file
costs), nor for fan-out shards (pass 1 runs in other invocations; :mod:`model.predictor.bands`).
``PredictOptions.decode_once=True`` keeps it whenever it fits, ``False`` never.

Example:
    >>> redecode_factor([(0, 1072), (1008, 2080), (2016, 3088), (3024, 4096)], block_height=512, height=4096)
    1.375
    >>> keep_decoded(335_544_320, redecode=1.0, compression="DEFLATE", free_bytes=10**10)[0]
    False
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
from rasterio.windows import Window

from model.io.raster import RasterHeader

DISK_MARGIN_BYTES = 64 * 1024**2  # left free in TMPDIR beside the copy (the output is written there too)
COPY_COST_IN_DECODES = 1.45  # writing + reading the copy / decoding the raster once (measured, see above)


def decoded_bytes(header: RasterHeader, bands: Sequence[int]) -> int:
    """Bytes the copy of ``bands`` (and the validity plane, where needed) takes on disk."""
    itemsize = np.dtype(header.dtypes[bands[0] - 1]).itemsize
    planes = len(bands) * itemsize + (1 if header.may_have_invalid else 0)
    return header.height * header.width * planes


def redecode_factor(strips: Sequence[tuple[int, int]], block_height: int, height: int) -> float:
    """How many times pass 2 decodes the raster: rows of blocks its strips ``(start, stop)`` touch, top to
    bottom, less the previous strip's last one (GDAL's cache holds one row of blocks), over the raster's."""
    block_height = max(1, block_height)
    decoded, cached = 0, -1
    for start, stop in strips:
        first, last = start // block_height, (stop - 1) // block_height
        decoded += last - first + 1 - (first <= cached <= last)
        cached = last
    return decoded / -(-height // block_height)


def keep_decoded(
    bytes_needed: int, redecode: float, compression: str, free_bytes: int, force: bool | None = None
) -> tuple[bool, str]:
    """Whether pass 1 should keep what it decodes for pass 2, and why (one line for the log); pure.

    ``force``: True keeps it whenever it fits, False never; None decides by cost.
    """
    if force is False:
        return False, "decoded twice (decode_once=False)"
    if compression == "NONE":
        return False, "uncompressed: pass 2 reads the file itself"
    if force is None and redecode < COPY_COST_IN_DECODES:
        return False, f"pass 2 decodes it {redecode:.2f}x: cheaper than a copy ({COPY_COST_IN_DECODES}x)"
    if bytes_needed + DISK_MARGIN_BYTES > free_bytes:
        free = f"{free_bytes / 1e6:.1f} MB free"
        return False, f"{bytes_needed / 1e6:.1f} MB would not fit TMPDIR ({free}): decoded twice"
    return True, f"{compression}, re-decoded {redecode:.2f}x: decoded once, {bytes_needed / 1e6:.1f} MB kept in TMPDIR"


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
