"""Decode each block once: pass 1 keeps the samples it decoded, in memory or in a temp file, for pass 2.

The whole-raster p90s need every pixel before the first tile can be normalised, so without a copy pass 2
decodes the raster again, overlaps included. The copy holds the model's bands as raw samples (``bands x height
x width``, and one validity flag per pixel when the raster can have invalid pixels):

- :class:`DecodedInMemory`: numpy arrays, when the copy fits the memory budget (:func:`memory_budget`: at most
  :data:`MEMORY_BUDGET_MAX_BYTES` with GDAL's block cache, and a quarter of the memory this process may use),
  in the process' :class:`Arena`; pass 2 reads views of them, so keeping the copy costs one copy of each window;
- :class:`DecodedRaster`: an unnamed file (``O_TMPFILE``) in ``TMPDIR``, freed by the kernel when it is closed
  or when the process dies, so nothing can be left behind. It is read and written with ``pread``/``pwrite``,
  never mapped, so its pages count against the page cache, not the process' RSS.

:func:`plan_copy` says which, if any. Measured (``make bench`` [6], 2 cores, 4096 x 4096 x 10 uint16 DEFLATE in
512 x 512 blocks): pass 1 decodes in 0.55-0.74 s; pass 2 decodes again in 0.44-0.53 s on the fitted grid
(1072-row tile rows overlapping by 64 re-decode one block row each); keeping the copy in the arena takes 0.04 s,
in fresh pages 0.4-0.9 s (a process' first scene: the VM's host backs freed memory lazily). Writing a file copy
takes 0.6-0.96 s and reading it back 0.06 s, about 1.45 decodes, so a file copy is kept only where pass 2 would
decode the raster at least :data:`COPY_COST_IN_DECODES` times over and the copy fits the disk. No copy pays for
an uncompressed raster (reading it back is what re-reading the file costs), nor for fan-out shards (pass 1 runs
in other invocations; :mod:`model.predictor.bands`). ``PredictOptions.decode_once=True`` keeps it whenever it
fits (memory first), ``False`` never.

Example:
    >>> redecode_factor([(0, 1072), (1008, 2080), (2016, 3088), (3024, 4096)], block_height=512, height=4096)
    1.375
    >>> plan_copy(335_544_320, redecode=1.0, compression="DEFLATE", free_bytes=10**10, memory_bytes=512 * 2**20)[0]
    'memory'
    >>> plan_copy(1_342_177_280, redecode=1.1, compression="DEFLATE", free_bytes=10**10, memory_bytes=512 * 2**20)[0]
    'none'
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence

import numpy as np
from rasterio.windows import Window

from model.io.raster import RasterHeader
from model.memory import memory_limit_bytes

DISK_MARGIN_BYTES = 64 * 1024**2  # left free in TMPDIR beside the copy (the output is written there too)
COPY_COST_IN_DECODES = 1.45  # writing + reading a file copy / decoding the raster once (measured, see above)
# A copy in memory adds to the process' peak: with GDAL's block cache, at most 512 MiB of decoded pixels are held,
# which keeps `rasterfn predict`'s peak RSS under 1.2 GB (issue 9) and holds 4096 x 4096 x 10 uint16 (352 MB with
# validity) beside the cache of 512-row blocks (128 MiB).
MEMORY_BUDGET_MAX_BYTES = 512 * 1024**2
MEMORY_BUDGET_SHARE = 4  # of the memory this process may use, at most 1/4 for a copy


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


def memory_budget(block_cache_bytes: int = 0, limit_bytes: int | None = None, at_once: int = 1) -> int:
    """Bytes a copy may take in memory: a quarter of what this process may use, shared by the ``at_once``
    predictions its machine runs at once (Knative's worker processes), at most the ceiling less what GDAL's
    block cache may hold (both are decoded pixels held at once: together they stay under the ceiling)."""
    limit = memory_limit_bytes() if limit_bytes is None else limit_bytes
    share = limit // (MEMORY_BUDGET_SHARE * max(1, at_once))
    return max(0, min(MEMORY_BUDGET_MAX_BYTES - block_cache_bytes, share))


def plan_copy(
    bytes_needed: int,
    redecode: float,
    compression: str,
    free_bytes: int,
    memory_bytes: int,
    force: bool | None = None,
) -> tuple[str, str]:
    """Where pass 1 should keep what it decodes for pass 2 (``memory``, ``disk``, ``none``) and why; pure.

    ``memory_bytes``: what a copy may take in memory; ``free_bytes``: free in TMPDIR; ``force``: True keeps it
    whenever it fits, False never, None decides by cost.
    """
    if force is False:
        return "none", "decoded twice (decode_once=False)"
    if compression == "NONE":
        return "none", "uncompressed: pass 2 reads the file itself"
    size = f"{bytes_needed / 1e6:.1f} MB"
    if bytes_needed <= memory_bytes:
        return "memory", f"{compression}: decoded once, {size} kept in memory (budget {memory_bytes / 1e6:.0f} MB)"
    if force is None and redecode < COPY_COST_IN_DECODES:
        why = f"pass 2 decodes it {redecode:.2f}x: cheaper than a file copy ({COPY_COST_IN_DECODES}x)"
        return "none", f"{size} over the memory budget; {why}"
    if bytes_needed + DISK_MARGIN_BYTES > free_bytes:
        return "none", f"{size} would not fit TMPDIR ({free_bytes / 1e6:.1f} MB free): decoded twice"
    return "disk", f"{compression}, re-decoded {redecode:.2f}x: decoded once, {size} kept in TMPDIR"


class Arena:
    """One block of memory that copies in memory reuse, prediction after prediction, held for the process' life.

    Where the host backs memory lazily (Lambda's Firecracker, this project's VMs), touching 335 MB of fresh
    pages took 0.4-0.9 s, more than decoding the raster again; pages this process already touched cost a
    copy. So the block stays (it never exceeds the largest copy kept, itself within :func:`memory_budget`),
    is grown when a larger copy fits the budget, freed when a raster's budget is smaller than it (so the block and
    GDAL's cache never hold more than the ceiling together), and lent to one copy at a time: a copy made while
    it is lent gets memory of its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block: np.ndarray | None = None

    @property
    def held_bytes(self) -> int:
        return 0 if self._block is None else self._block.nbytes

    def lend(self, nbytes: int) -> np.ndarray | None:
        """``nbytes`` of the block (uint8), or None while it is lent; give it back with :meth:`give_back`."""
        if not self._lock.acquire(blocking=False):
            return None
        if self._block is None or self._block.nbytes < nbytes:
            self._block = None  # the old block is freed before the larger one is touched
            self._block = np.empty(nbytes, dtype=np.uint8)
        return self._block[:nbytes]

    def give_back(self) -> None:
        self._lock.release()

    def trim(self, max_bytes: int = 0) -> None:
        """Free the block if it holds more than ``max_bytes`` (a raster whose budget is smaller: its GDAL cache
        is larger) and is not lent; the next copy starts from fresh pages."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self.held_bytes > max_bytes:
                self._block = None
        finally:
            self._lock.release()


ARENA = Arena()


class DecodedInMemory:
    """The decoded samples of ``bands`` (and their validity) in memory; read back as read-only views.

    The memory is lent by ``arena`` (the predictor's: the process' :data:`ARENA`) where it is free, else its own.
    """

    def __init__(self, header: RasterHeader, bands: Sequence[int], arena: Arena | None = None) -> None:
        self.bands = tuple(bands)
        self.bytes = decoded_bytes(header, self.bands)
        dtype = np.dtype(header.dtypes[self.bands[0] - 1])
        shape = (len(self.bands), header.height, header.width)
        self._arena = arena
        block = arena.lend(self.bytes) if arena is not None else None
        if block is None:
            self._arena = None
            block = np.empty(self.bytes, dtype=np.uint8)
        samples = len(self.bands) * header.height * header.width * dtype.itemsize
        # Every pixel is written by pass 1 before pass 2 reads: the block needs no clearing.
        self.data = block[:samples].view(dtype).reshape(shape)
        self.valid = block[samples:].view(bool).reshape(shape[1:]) if header.may_have_invalid else None

    def __enter__(self) -> DecodedInMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.data is None:
            return
        self.data = self.valid = None  # type: ignore[assignment]
        if self._arena is not None:
            self._arena.give_back()

    def write(self, window: Window, data: np.ndarray, valid: np.ndarray | None) -> None:
        """Keep ``data`` (``bands x h x w``) and ``valid`` (``h x w``, None: all valid) of ``window``."""
        rows, cols = _slices(window)
        self.data[:, rows, cols] = data
        if self.valid is not None:
            self.valid[rows, cols] = True if valid is None else valid

    def read_window(
        self, bands: Sequence[int], window: Window, all_valid: bool = True, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """What :func:`model.io.raster.read_window` returns for ``window``, as read-only views (``out`` unused)."""
        if tuple(bands) != self.bands:
            raise ValueError(f"the copy holds bands {self.bands}, not {tuple(bands)}")
        rows, cols = _slices(window)
        data = self.data[:, rows, cols]
        data.flags.writeable = False
        if self.valid is None:
            return data, None
        valid = self.valid[rows, cols]
        valid.flags.writeable = False
        return data, valid


def _slices(window: Window) -> tuple[slice, slice]:
    top, left = int(window.row_off), int(window.col_off)
    return slice(top, top + int(window.height)), slice(left, left + int(window.width))


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
