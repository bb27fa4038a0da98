"""Split one raster's work into row bands that parallel invocations process (pure: no I/O, no torch).

A band is a run of whole tile rows of the raster's :class:`~model.predictor.tiling.TilePlan`. It *emits* the raster rows
from its first tile row's start to the next band's first tile row's start (the last band: to the bottom), which
are exactly the rows :func:`model.predictor.predict.predict_rows` yields for those tile rows. To give those rows the
same arithmetic as the whole run, a band also *computes* the earlier tile rows that reach into it (its overlap
rows) and throws their own rows away: every score is then the same sum in the same order, so the bands' bytes
put end to end are the single-invocation ``.npy`` byte for byte.

The ``.npy`` is assembled as an S3 multipart upload, one part per band: part 1 carries the ``.npy`` header.
S3 wants every part but the last to be at least :data:`S3_MIN_PART_BYTES` and at most :data:`S3_MAX_PARTS`
parts, so :func:`plan_shards` gives a narrow raster fewer (taller) bands, down to one.

Statistics: the bands' rows are disjoint and cover the raster, so each band counts its rows' values into
mergeable histograms (:meth:`model.predictor.stats.PercentileAccumulator.histogram`) and :func:`merge_percentiles`
answers exactly what the whole-raster pass would for 8/16-bit integers; for floats and wide integers it is the
documented key-histogram approximation (relative error below 2**-11).

Example:
    >>> from model.predictor.tiling import plan_tiles
    >>> shards = plan_shards(plan_tiles(300, 64, 64, 8, 16), "uint8", wanted=3, min_part_bytes=1)
    >>> [(b.row_start, b.row_stop, b.first_tile_row, b.emit_tile_row) for b in shards.bands]
    [(0, 94, 0, 0), (94, 188, 1, 2), (188, 300, 3, 4)]
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npy_format

from model.predictor.stats import DEFAULT_PERCENTILE, PercentileAccumulator
from model.predictor.tiling import TilePlan

S3_MIN_PART_BYTES = 5 * 1024**2  # every part of a multipart upload but the last
S3_MAX_PARTS = 10_000


@dataclass(frozen=True)
class RowBand:
    """One shard: the tile rows it computes (``first_tile_row`` on) and the raster rows it emits (``row_start`` on)."""

    index: int
    first_tile_row: int  # the first tile row computed: earlier ones reaching into the band come first
    emit_tile_row: int  # the first tile row whose rows the band emits
    stop_tile_row: int
    row_start: int
    row_stop: int
    read_rows: int  # raster rows read (overlap included): what MAX_PIXELS bounds, times the width

    @property
    def part_number(self) -> int:
        """The band's S3 part number (1-based)."""
        return self.index + 1

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start


@dataclass(frozen=True)
class ShardPlan:
    """The bands of one raster and where each one's bytes go in the ``.npy``."""

    height: int
    width: int
    dtype: str
    header: bytes  # the .npy header, the start of part 1
    bands: tuple[RowBand, ...]

    @property
    def row_bytes(self) -> int:
        return self.width * np.dtype(self.dtype).itemsize

    def part_bytes(self, band: RowBand) -> int:
        """The size of ``band``'s part: its rows, plus the header for the first."""
        return band.rows * self.row_bytes + (len(self.header) if band.index == 0 else 0)

    @property
    def total_bytes(self) -> int:
        return len(self.header) + self.height * self.row_bytes


def npy_header(shape: tuple[int, ...], dtype: str | np.dtype) -> bytes:
    """The header :class:`model.io.npy_writer.NpyWriter` writes for an array of ``shape`` and ``dtype`` (format 1.0)."""
    out = io.BytesIO()
    header = {"descr": npy_format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    npy_format.write_array_header_1_0(out, header)
    return out.getvalue()


def plan_shards(
    plan: TilePlan,
    dtype: str,
    wanted: int,
    max_band_pixels: int | None = None,
    min_part_bytes: int = S3_MIN_PART_BYTES,
    max_parts: int = S3_MAX_PARTS,
) -> ShardPlan:
    """At most ``wanted`` bands (as close to it as the limits allow) of whole tile rows of ``plan``.

    Every part but the last holds at least ``min_part_bytes``; each band reads at most ``max_band_pixels``
    pixels (``None``: no limit). Tries ``wanted``, then fewer bands, then more; raises :class:`ValueError` when
    no count satisfies both (a raster too wide for ``max_band_pixels`` even one tile row at a time).
    """
    tile_rows = len(plan.rows)
    wanted = max(1, min(wanted, tile_rows, max_parts))
    header = npy_header((plan.height, plan.width), dtype)
    candidates = [*range(wanted, 0, -1), *range(wanted + 1, min(tile_rows, max_parts) + 1)]
    for count in candidates:
        shards = ShardPlan(plan.height, plan.width, str(np.dtype(dtype)), header, _bands(plan, count))
        if _fits(shards, plan, max_band_pixels, min_part_bytes):
            return shards
    raise ValueError(
        f"no split of {plan.height} x {plan.width} into bands of tile rows keeps each band under "
        f"{max_band_pixels:,} pixels read and each part but the last at {min_part_bytes:,} bytes or more"
    )


def _bands(plan: TilePlan, count: int) -> tuple[RowBand, ...]:
    # ``count`` bands whose tile-row counts differ by at most one (the shorter ones first).
    cuts = [i * len(plan.rows) // count for i in range(count + 1)]
    bands = []
    for index, (emit, stop) in enumerate(itertools.pairwise(cuts)):
        row_start = plan.rows[emit].start if emit else 0
        row_stop = plan.rows[stop].start if stop < len(plan.rows) else plan.height
        # Earlier tile rows whose pixels reach the band's first row add to its scores: compute them first.
        first = emit
        while first and plan.rows[first - 1].stop > row_start:
            first -= 1
        read_rows = plan.rows[stop - 1].stop - plan.rows[first].start
        bands.append(RowBand(index, first, emit, stop, row_start, row_stop, read_rows))
    return tuple(bands)


def _fits(shards: ShardPlan, plan: TilePlan, max_band_pixels: int | None, min_part_bytes: int) -> bool:
    if any(shards.part_bytes(band) < min_part_bytes for band in shards.bands[:-1]):
        return False
    return max_band_pixels is None or all(band.read_rows * plan.width <= max_band_pixels for band in shards.bands)


def merge_percentiles(
    dtype: str | np.dtype,
    shard_histograms: Iterable[Sequence[tuple[str, np.ndarray]]],
    q: float = DEFAULT_PERCENTILE,
) -> list[float]:
    """Each band's ``q``-th percentile over every shard, from the shards' per-band ``(mode, counts)``."""
    accumulators: list[PercentileAccumulator] | None = None
    for histograms in shard_histograms:
        if accumulators is None:
            accumulators = [PercentileAccumulator(np.dtype(dtype), q) for _ in histograms]
        for acc, (mode, counts) in zip(accumulators, histograms, strict=True):
            acc.merge_histogram(mode, counts)
    if accumulators is None:
        raise ValueError("no shard statistics to merge")
    return [acc.result() for acc in accumulators]
