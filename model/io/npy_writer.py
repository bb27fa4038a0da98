"""Write a ``.npy`` file row block by row block, atomically.

The header (format 1.0, C order) goes first, then rows as they are produced, so a large mask never has to be
held in memory. Everything is written to a temporary file beside the destination and renamed over it only when
every row has arrived; on any error (or too few rows) the temporary file is removed and the destination is
untouched.

Example:
    >>> with NpyWriter(tmp / "m.npy", (2, 3), "uint8") as out:   # doctest: +SKIP
    ...     out.write_rows(np.zeros((1, 3), "uint8"))
    ...     out.write_rows(np.ones((1, 3), "uint8"))
    >>> np.load(tmp / "m.npy").tolist()                          # doctest: +SKIP
    [[0, 0, 0], [1, 1, 1]]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.lib import format as npy_format


class NpyWriter:
    """Streams an array into ``path`` as ``.npy`` row block by row block; renamed into place on success."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: str | np.dtype) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.rows_written = 0
        self._row_shape = self.shape[1:]
        self._fh = None
        self._tmp: Path | None = None

    def __enter__(self) -> NpyWriter:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb")
        try:
            header = {
                "descr": npy_format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": self.shape,
            }
            npy_format.write_array_header_1_0(self._fh, header)
        except BaseException:
            self._discard()
            raise
        return self

    def write_rows(self, rows: np.ndarray) -> None:
        """Append the next ``rows.shape[0]`` rows (cast to the file's dtype if needed)."""
        if self._fh is None:
            raise RuntimeError("NpyWriter is not open")
        if rows.shape[1:] != self._row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} do not fit an array of shape {self.shape}")
        if self.rows_written + rows.shape[0] > self.shape[0]:
            raise ValueError(f"more than {self.shape[0]} rows written")
        self._fh.write(np.ascontiguousarray(rows, dtype=self.dtype).data)
        self.rows_written += rows.shape[0]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        if self.rows_written != self.shape[0]:
            self._discard()
            raise ValueError(f"only {self.rows_written} of {self.shape[0]} rows were written")
        try:
            assert self._fh is not None and self._tmp is not None
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
