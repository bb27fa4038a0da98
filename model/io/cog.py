"""The mask (or the scores) as a Cloud Optimized GeoTIFF, written rows top to bottom with bounded memory.

Rows go first into a plain tiled GeoTIFF (:class:`RowRasterWriter`, also what a fan-out shard writes for its
band of rows); GDAL's COG driver then copies that staging file into the COG and builds its overviews from it,
so no step holds more than one strip of 512 rows (plus GDAL's block cache, capped at :data:`GDAL_CACHE_BYTES`).
:func:`assemble_cog` does the same from several parts. Everything is written in a private temporary directory
and renamed over the destination only when complete: on any error the destination is untouched and no
temporary file is left behind.

Kinds: ``"mask"`` is uint8 (0 background, 1 the card's class, :data:`MASK_NODATA` where the input pixel was
invalid) with a colour map and nearest-neighbour overviews (they keep class values; averaging would invent
colours between classes); ``"score"`` is the score scaled to uint8 (``round(score * 254)``, declared as the
band's scale 1/254 so readers see probabilities; 255 nodata) with averaged overviews (a coarse pixel's mean
probability is the meaningful summary of a probability field). Not float32: a network's scores vary in their
low bits, so float32 barely compresses (207 MB and 10-19 s for 8192 x 8192, against 21 MB and 2 s scaled),
and a step of 1/254 is finer than any use of a probability map needs. Compression: see :data:`COG_OPTIONS`.

Example:
    >>> with CogWriter(tmp / "m.tif", (1024, 1024), "mask", header.crs, header.transform, 0.5) as out:  # doctest: +SKIP
    ...     out.write_rows(scores[:512], valid[:512])
    ...     out.write_rows(scores[512:], valid[512:])
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from model.cpus import available_cpus

MASK_NODATA = 255  # uint8 class raster: 0 background, 1 the card's class, 255 = invalid input pixel
SCORE_NODATA = 255  # uint8 scaled scores: 0..254 = score 0..1, 255 = invalid input pixel
SCORE_STEPS = 254
COG_BLOCK = 512
KINDS = ("mask", "score")
DTYPES = {"mask": "uint8", "score": "uint8"}
NODATA = {"mask": MASK_NODATA, "score": SCORE_NODATA}
# 0 transparent so the mask overlays imagery; 1 a visible green; nodata transparent (and declared as nodata).
MASK_COLOURS = {0: (0, 0, 0, 0), 1: (0, 200, 0, 255), MASK_NODATA: (0, 0, 0, 0)}
# GDAL's block cache while writing and while the COG driver builds overviews: bounded whatever the host's RAM
# (GDAL's default is 5% of it). Peak RSS streaming 16384 x 16384 scores was 290 MB, the process's 70 included.
GDAL_CACHE_BYTES = 64 * 1024**2
# Measured on an 8192 x 8192 mask (smooth blobs, 2 cores; the commit says more): ZSTD level 9 with the
# horizontal predictor was both the smallest (0.36 MB vs 0.67 MB DEFLATE, 0.74 MB ZSTD without predictor) and
# the fastest (0.31 s vs 0.48 s DEFLATE). Scaled scores: ZSTD 3 (21.5 MB, 1.8 s) rather than 9 (20.2 MB, 4.4 s).
COG_OPTIONS: dict[str, dict[str, Any]] = {
    "mask": {"COMPRESS": "ZSTD", "LEVEL": 9, "PREDICTOR": "YES", "OVERVIEW_RESAMPLING": "NEAREST"},
    "score": {"COMPRESS": "ZSTD", "LEVEL": 3, "PREDICTOR": "YES", "OVERVIEW_RESAMPLING": "AVERAGE"},
}
# The staging file and the fan-out's parts: written once and read once, so a fast ZSTD level.
STAGING_OPTIONS: dict[str, dict[str, Any]] = {
    "mask": {"compress": "zstd", "zstd_level": 1, "predictor": 2},
    "score": {"compress": "zstd", "zstd_level": 1, "predictor": 2},
}


def cog_values(scores: np.ndarray, valid: np.ndarray | None, threshold: float, kind: str) -> np.ndarray:
    """Rows of scores as the COG stores them (pure).

    ``"mask"``: uint8, 1 where ``scores > threshold`` else 0, :data:`MASK_NODATA` where not ``valid``;
    ``"score"``: uint8 ``round(score * 254)`` (scores clipped to [0, 1]), :data:`SCORE_NODATA` where not
    ``valid`` or not finite. ``valid`` None means every pixel is valid.
    """
    _check_kind(kind)
    if valid is not None and valid.shape != scores.shape:
        raise ValueError(f"valid of shape {valid.shape} does not match scores of shape {scores.shape}")
    if kind == "mask":
        out = (scores > threshold).astype(np.uint8)
        if valid is not None:
            out[~valid] = MASK_NODATA
        return out
    finite = np.isfinite(scores)
    out = np.rint(np.clip(np.where(finite, scores, 0), 0, 1) * SCORE_STEPS).astype(np.uint8)
    out[~finite] = SCORE_NODATA
    if valid is not None:
        out[~valid] = SCORE_NODATA
    return out


def score_of(values: np.ndarray) -> np.ndarray:
    """Scores (float32, NaN for nodata) from a score COG's stored values: the band's scale applied (pure)."""
    return np.where(values == SCORE_NODATA, np.nan, values / np.float32(SCORE_STEPS)).astype(np.float32)


def part_transform(transform: Sequence[float], first_row: int) -> tuple[float, ...]:
    """The affine transform of a band of rows starting at ``first_row`` of a raster with ``transform`` (pure)."""
    return tuple((Affine(*transform[:6]) @ Affine.translation(0, first_row))[:6])


class RowRasterWriter:
    """A plain tiled, compressed GeoTIFF written rows top to bottom; renamed into place when complete.

    ``transform`` is this raster's own: a fan-out part starting at row ``r`` of the whole raster has
    :func:`part_transform` ``(whole, r)``. Rows are buffered to whole rows of tiles, so each tile is written
    (and compressed) once.
    """

    def __init__(
        self, path: str | Path, shape: tuple[int, int], kind: str, crs: str | None, transform: Sequence[float]
    ) -> None:
        _check_kind(kind)
        self.path = Path(path)
        self.shape = _check_shape(shape)
        self.kind = kind
        self.dtype = np.dtype(DTYPES[kind])
        self.crs = crs
        self.transform = tuple(float(v) for v in transform[:6])
        self._rows_flushed = 0  # rows in the file; the rest of what was written waits in _buffer
        self._buffer = np.empty((0, self.shape[1]), self.dtype)
        self._dst: Any = None
        self._tmp: Path | None = None

    @property
    def rows_written(self) -> int:
        return self._rows_flushed + len(self._buffer)

    def __enter__(self) -> RowRasterWriter:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp.tif")
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            with _gdal_env(), warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._dst = rasterio.open(self._tmp, "w", **_profile(self.shape, self.kind, self.crs, self.transform))
                if self.kind == "mask":
                    self._dst.write_colormap(1, MASK_COLOURS)
                else:
                    self._dst.scales, self._dst.offsets = (1 / SCORE_STEPS,), (0.0,)
        except BaseException:
            self._discard()
            raise
        return self

    def write_values(self, values: np.ndarray) -> None:
        """Append the next rows, already converted by :func:`cog_values` (so of this kind's dtype)."""
        if self._dst is None:
            raise RuntimeError("RowRasterWriter is not open")
        if values.ndim != 2 or values.shape[1] != self.shape[1] or values.dtype != self.dtype:
            raise ValueError(
                f"rows of shape {values.shape} and type {values.dtype} do not fit a {self.dtype} raster "
                f"{self.shape[1]} pixels wide"
            )
        if self.rows_written + len(values) > self.shape[0]:
            raise ValueError(f"more than {self.shape[0]} rows written")
        self._buffer = np.concatenate([self._buffer, values])  # a copy: the caller may reuse its array
        while len(self._buffer) >= COG_BLOCK:
            self._flush(self._buffer[:COG_BLOCK])
            self._buffer = self._buffer[COG_BLOCK:]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            if self.rows_written != self.shape[0]:
                raise ValueError(f"only {self.rows_written} of {self.shape[0]} rows were written")
            if len(self._buffer):
                self._flush(self._buffer)
                self._buffer = self._buffer[:0]
            with _gdal_env():
                self._dst.close()
            assert self._tmp is not None
            os.replace(self._tmp, self.path)
        except BaseException:
            self._discard()
            raise

    def _flush(self, rows: np.ndarray) -> None:
        window = Window(0, self._rows_flushed, self.shape[1], len(rows))
        with _gdal_env():
            self._dst.write(np.ascontiguousarray(rows), 1, window=window)
        self._rows_flushed += len(rows)

    def _discard(self) -> None:
        self._buffer = np.empty((0, self.shape[1]), self.dtype)
        if self._dst is not None and not self._dst.closed:
            with _gdal_env(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._dst.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


class CogWriter:
    """The sink the predictor feeds: ``(scores, valid)`` rows top to bottom; the COG appears at ``path`` on a
    clean exit. ``tmp_dir`` holds the staging file (default: beside ``path``); the COG itself is built beside
    ``path`` so that the final rename is atomic."""

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, int],
        kind: str,
        crs: str | None,
        transform: Sequence[float],
        threshold: float,
        *,
        tmp_dir: str | Path | None = None,
    ) -> None:
        _check_kind(kind)
        self.path = Path(path)
        self.shape = _check_shape(shape)
        self.kind = kind
        self.crs = crs
        self.transform = tuple(float(v) for v in transform[:6])
        self.threshold = float(threshold)
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else self.path.parent
        self._work: Path | None = None
        self._staging: RowRasterWriter | None = None

    @property
    def rows_written(self) -> int:
        return 0 if self._staging is None else self._staging.rows_written

    def __enter__(self) -> CogWriter:
        self._work = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix=f".{self.path.name}."))
        try:
            staging = RowRasterWriter(self._work / "staging.tif", self.shape, self.kind, self.crs, self.transform)
            self._staging = staging.__enter__()
        except BaseException:
            self._discard()
            raise
        return self

    def write_rows(self, scores: np.ndarray, valid: np.ndarray | None) -> None:
        """Append the next rows of scores (and their validity; None: all valid)."""
        if self._staging is None:
            raise RuntimeError("CogWriter is not open")
        self._staging.write_values(cog_values(scores, valid, self.threshold, self.kind))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._staging is not None and self._work is not None
        try:
            self._staging.__exit__(exc_type, exc, tb)
            if exc_type is None:
                build_cog(self._work / "staging.tif", self.path, self.kind)
        finally:
            self._discard()

    def _discard(self) -> None:
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)


def build_cog(staging: Path, dst: Path, kind: str) -> None:
    """Copy a staging GeoTIFF (tiled, one band of ``kind``) into a COG at ``dst``, atomically.

    The COG driver writes its overviews to temporary files beside its output: all of them go in a private
    directory beside ``dst``, removed whatever happens.
    """
    _check_kind(kind)
    dst = Path(dst)
    work = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        out = work / "cog.tif"
        options = {**COG_OPTIONS[kind], "BLOCKSIZE": COG_BLOCK, "BIGTIFF": "IF_SAFER"}
        with _gdal_env(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            rasterio.shutil.copy(staging, out, driver="COG", NUM_THREADS=available_cpus(), **options)
        os.replace(out, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def assemble_cog(
    parts: Sequence[Path],
    dst: Path,
    shape: tuple[int, int],
    kind: str,
    crs: str | None,
    transform: Sequence[float],
    *,
    tmp_dir: str | Path | None = None,
) -> None:
    """The COG of a raster whose row bands were written as :class:`RowRasterWriter` parts (in row order),
    streamed strip by strip: memory bounded by a strip, never the whole raster.

    Each part must be ``kind``'s type, as wide as ``shape``, and georeferenced as its rows of the whole
    (:func:`part_transform`); together they must cover ``shape[0]`` rows exactly. Anything else is a
    ``ValueError`` naming the part, and nothing is written at ``dst``.
    """
    _check_kind(kind)
    dst = Path(dst)
    shape = _check_shape(shape)
    transform = tuple(float(v) for v in transform[:6])
    work = Path(tempfile.mkdtemp(dir=tmp_dir if tmp_dir is not None else dst.parent, prefix=f".{dst.name}."))
    try:
        staging = work / "staging.tif"
        with RowRasterWriter(staging, shape, kind, crs, transform) as out:
            for part in parts:
                _copy_part(Path(part), out, transform)
        build_cog(staging, dst, kind)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_part(part: Path, out: RowRasterWriter, whole: tuple[float, ...]) -> None:
    with _gdal_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src_cm = rasterio.open(part)
    with src_cm as src:
        expected = part_transform(whole, out.rows_written)
        problems = []
        if src.count != 1 or src.dtypes[0] != out.dtype.name or src.width != out.shape[1]:
            problems.append(f"{src.count} band(s) of {src.dtypes[0]}, {src.width} wide")
        if not np.allclose(tuple(src.transform)[:6], expected, rtol=0, atol=1e-9 * max(1.0, *map(abs, expected))):
            problems.append(f"transform {tuple(src.transform)[:6]} where rows from {out.rows_written} have {expected}")
        if problems:
            raise ValueError(
                f"part {part.name} does not fit a {out.dtype.name} raster {out.shape[1]} wide: " + "; ".join(problems)
            )
        for top in range(0, src.height, COG_BLOCK):
            with _gdal_env():
                rows = src.read(1, window=Window(0, top, src.width, min(COG_BLOCK, src.height - top)))
            out.write_values(rows)


def _profile(shape: tuple[int, int], kind: str, crs: str | None, transform: Sequence[float]) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "height": shape[0],
        "width": shape[1],
        "count": 1,
        "dtype": DTYPES[kind],
        "nodata": NODATA[kind],
        "crs": CRS.from_user_input(crs) if crs else None,
        "transform": Affine(*transform[:6]),
        "tiled": True,
        "blockxsize": COG_BLOCK,
        "blockysize": COG_BLOCK,
        "BIGTIFF": "IF_SAFER",
        **STAGING_OPTIONS[kind],
    }


def _gdal_env() -> rasterio.Env:
    # No .aux.xml sidecars: all we write (colour map, nodata, scale) lives in the TIFF's own tags.
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_PAM_ENABLED="NO")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(n) for n in shape)
    if height <= 0 or width <= 0:
        raise ValueError(f"a raster needs rows and columns, not shape {shape}")
    return height, width
