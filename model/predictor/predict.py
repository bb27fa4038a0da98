"""Segment a whole raster with the U-Net, tile by tile, streaming: ``predict_file(model, src, dst)``.

The procedure is the old service's, made to scale:

1. The header is checked against the limits before any pixel is read (bands, ``max_pixels``, data type, and
   the decode cost: codec, block sizes, compression ratio, see :mod:`model.io.decode_limits`).
2. Pass 1 reads the raster in strips and computes each band's 90th percentile over the WHOLE raster, exactly
   (see :mod:`model.predictor.stats`), leaving out invalid pixels (nodata, masked, non-finite), counting each
   strip while the next is decoded. Where it pays, it keeps what it decoded for pass 2, in memory within a
   budget or in an unnamed temp file (:mod:`model.predictor.decoded`).
3. Pass 2 reads strips of tile rows (plus the overlap) on the raster's fitted tile grid (:func:`plan_grid`,
   :func:`model.predictor.tiling.fit_tile`), normalises each tile's bands in float64 exactly as the old
   service did (``clip(band, 0, p90) / p90``, 0 when ``p90 <= 0``) and casts to float32 (for 8/16-bit
   integers through a per-band lookup table holding those same float64 results), runs the network on each
   tile and writes the finished rows of the ``.npy`` as soon as no later tile can touch them. Buffers are
   reused tile after tile; with a spare core the next strip is read meanwhile. Peak memory depends on the
   raster's width and the tile size, never on its height, but for the copy in memory, which its budget bounds.

The network runs behind an engine (:mod:`model.network.engines`): the predictor hands batches of normalised tiles to
``model.tile_engine(options, one_tile)`` and gets scores back, so this module imports no torch. A raster no
larger than one tile is one forward pass over the whole (padded to a multiple of 16 only if it is not one
already), so a 512 x 512 input on the torch engine gives exactly the old service's array (see
:mod:`model.network.engines.torch_engine`); the serving engine's fp32 graph agrees with it to the export's verified
tolerance. The tiling itself changes far more than the engine (see :mod:`model.predictor.tiling` for the seam handling
and its measured agreement with one pass).

Invalid pixels are 0 in the network's input and 0 in the output, whatever the mode.

Example:
    >>> from model.network.checkpoint import load_model
    >>> result = predict_file(load_model(), "data/test-1.tif", "/tmp/test-1.npy")   # doctest: +SKIP
    >>> result.shape, result.output
    ((512, 512), 'mask')
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from rasterio.windows import Window
from tqdm import tqdm

from model.cpus import available_cpus
from model.errors import ConfigError, InputError
from model.io.decode_limits import cache_bytes, stat_windows
from model.io.npy_writer import NpyWriter
from model.io.raster import RasterHeader, open_checked, read_window
from model.network.engines.base import InferenceModel, TileEngine
from model.options import OUTPUT_DTYPES, PRECISION_SETTINGS, PredictOptions
from model.predictor.decoded import (
    ARENA,
    DecodedInMemory,
    DecodedRaster,
    decoded_bytes,
    memory_budget,
    plan_copy,
    redecode_factor,
)
from model.predictor.stats import DEFAULT_EXACT_BUDGET_BYTES, PercentileAccumulator, split_budget
from model.predictor.tiling import DEFAULT_SEAM, Span, TilePlan, axis_weights, pad_tile, plan_fitted

log = logging.getLogger(__name__)

PERCENTILE = 90.0
DEFAULT_OPTIONS = PredictOptions()
STATS_STRIP_PIXELS = 4 * 1024 * 1024  # pixels per band read at once in pass 1
READ_GROUP_WIDTH = 8192  # pass 2 reads at most this many columns (plus one tile) at once
LUT_MAX_BITS = 16
READ_AHEAD_MIN_CPUS = 2  # read ahead only with more CPUs than this: on 2 the engine keeps both busy
# Pass 1 counts a strip while decoding the next from this many CPUs: on 2, 5.72 s against 5.89 s counting inline
# (4096^2 bf16, medians of 5 alternating runs in one process).
COUNT_ALONGSIDE_MIN_CPUS = 2
LUT_CHUNK_ROWS = 16  # rows gathered at once: numpy widens the indexes to intp, and a small chunk stays in cache
# Fitted grids (model.predictor.tiling.fit_tile) may grow the card's tile up to this factor per axis: 512 -> 1152,
# about 5x the pixels of a card tile in flight (the serving engine's fp32 peak RSS: ~0.75 GB at 1088 x 1088).
FITTED_TILE_FACTOR = 2.25


class RowSink(Protocol):
    """Another output fed the same rows as the ``.npy``: (scores, validity or None), top to bottom, each once."""

    def write_rows(self, scores: np.ndarray, valid: np.ndarray | None) -> None: ...


# Opened once the header is checked (a COG needs the raster's shape and georeferencing), closed after the last
# row: a clean exit finishes the output, an exception discards it.
SinkFactory = Callable[[RasterHeader], contextlib.AbstractContextManager[RowSink]]
# What pass 1 decodes, shown to another reader: (window, the card's bands in order, validity or None).
DecodedObserver = Callable[[Window, np.ndarray, "np.ndarray | None"], None]
ObserverFactory = Callable[[RasterHeader], DecodedObserver]


@dataclass(frozen=True)
class PredictionResult:
    out_path: Path
    shape: tuple[int, int]
    dtype: str
    output: str
    crs: str | None  # WKT or "EPSG:xxxx"
    transform: tuple[float, ...]  # affine a, b, c, d, e, f (rasterio Affine[:6])
    tiles: int
    valid_pixels: int
    positive_fraction: float  # of the valid pixels, above the card's threshold
    seconds: float


def predict_file(
    model: InferenceModel,
    src: str | Path,
    dst: str | Path,
    options: PredictOptions = DEFAULT_OPTIONS,
    *,
    interrupt: Callable[[], None] | None = None,
    sinks: Sequence[SinkFactory] = (),
    observers: Sequence[ObserverFactory] = (),
) -> PredictionResult:
    """Segment raster ``src`` into ``dst`` (.npy, H x W), written atomically; see the module docstring.

    Each of ``sinks`` is opened with the checked header and gets every (scores, validity) row block before it
    is written to the ``.npy`` (another output: a COG); on an error each is exited with it and keeps nothing.
    Each of ``observers``, made with the header, sees every window pass 1 decodes (a thumbnail's pixels).

    Raises :class:`InputError` subclasses for rasters that cannot be processed (nothing is left at ``dst``)
    and :class:`ConfigError` for invalid options. ``interrupt`` is called between strips and tiles; whatever
    it raises stops the prediction (the caller's deadline or cancellation) and leaves nothing at ``dst``.
    """
    check = interrupt or _no_interrupt
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    card = model.card
    tiling = resolve_tiling(model, options)
    _check_destination(src, dst)

    with open_checked(src, card.bands, options.max_pixels, options.limits) as (ds, header):
        plan = plan_grid(header, tiling, card.size_multiple)
        with _decoded_copy(header, card.bands, plan, options) as copy:
            seen = [make(header) for make in observers] + ([copy.write] if copy is not None else [])
            keep = _each(seen) if seen else None
            p90s = compute_percentiles(ds, header, card.bands, PERCENTILE, interrupt=check, keep=keep)
            run = TilePass.prepare(model, header, tiling, p90s, options)
            counts = Counts()
            source = copy if copy is not None else ds
            with contextlib.ExitStack() as outputs:
                shape = (header.height, header.width)
                writer = outputs.enter_context(NpyWriter(dst, shape, OUTPUT_DTYPES[options.output]))
                # Entered after the .npy, so they finish first: one that fails to finish discards the .npy too.
                extra = [outputs.enter_context(open_sink(header)) for open_sink in sinks]
                for rows, valid in run.rows(source, _checked(run.runner, check)):
                    counts.add(rows, valid, card.threshold)
                    for sink in extra:  # before to_output, which may reuse the rows' memory
                        sink.write_rows(rows, valid)
                    writer.write_rows(to_output(rows, valid, card.threshold, options.output))

    return PredictionResult(
        out_path=dst,
        shape=(header.height, header.width),
        dtype=OUTPUT_DTYPES[options.output],
        output=options.output,
        crs=header.crs,
        transform=header.transform,
        tiles=run.plan.tiles,
        valid_pixels=counts.valid,
        positive_fraction=counts.positive / counts.valid if counts.valid else 0.0,
        seconds=time.perf_counter() - started,
    )


# -- pass 1: statistics --------------------------------------------------------------------------------------


def compute_percentiles(
    ds,
    header: RasterHeader,
    bands: Sequence[int],
    q: float = PERCENTILE,
    *,
    interrupt: Callable[[], None] | None = None,
    keep: Callable[[Window, np.ndarray, np.ndarray | None], None] | None = None,
) -> list[float]:
    """Each band's ``q``-th percentile over the valid pixels of the whole raster, reading strip by strip.

    ``keep`` (e.g. :meth:`DecodedRaster.write`) gets every window's decoded samples and validity.
    """
    dtype = np.dtype(header.dtypes[bands[0] - 1])
    budget = split_budget(DEFAULT_EXACT_BUDGET_BYTES, len(bands))
    accumulators = [PercentileAccumulator(dtype, q, budget) for _ in bands]
    accumulate_bands(ds, header, bands, accumulators, interrupt=interrupt, keep=keep)
    return [acc.result() for acc in accumulators]


def accumulate_bands(
    ds,
    header: RasterHeader,
    bands: Sequence[int],
    accumulators: Sequence[PercentileAccumulator],
    start: int = 0,
    stop: int | None = None,
    *,
    interrupt: Callable[[], None] | None = None,
    keep: Callable[[Window, np.ndarray, np.ndarray | None], None] | None = None,
) -> None:
    """Add each band's valid pixels of rows ``start..stop-1`` (default: all) to its accumulator, strip by strip.

    With a spare core a strip is counted (and kept) in a background thread while the next one is decoded on
    this one: GDAL stays on the calling thread (its configuration is per thread) and lets go of the GIL.
    """

    def count(window: Window, data: np.ndarray, valid: np.ndarray | None) -> None:
        if keep is not None:
            keep(window, data, valid)
        for acc, values in zip(accumulators, data, strict=True):
            acc.add(values if valid is None else values[valid])

    buffers = Buffers(header.dtypes[bands[0] - 1])
    alongside = available_cpus() >= COUNT_ALONGSIDE_MIN_CPUS
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rasterfn-count") if alongside else None
    with pool or contextlib.nullcontext():
        counting = None
        for i, window in enumerate(_stat_windows(ds, header, start, stop)):
            if interrupt is not None:
                interrupt()
            # Alongside, two buffers alternate: the strip being counted is never the one being decoded into.
            out = buffers.get((len(bands), window.height, window.width), i % 2 if pool else 0)
            data, valid = read_window(ds, bands, window, header.all_valid, out)
            if pool is None:
                count(window, data, valid)
                continue
            if counting is not None:
                counting.result()
            counting = pool.submit(count, window, data, valid)
        if counting is not None:
            counting.result()


def _stat_windows(ds, header: RasterHeader, start: int = 0, stop: int | None = None) -> Iterator[Window]:
    """Windows over the whole raster, or clipped to rows ``start..stop-1`` (one shard's band)."""
    stop = header.height if stop is None else stop
    block = (header.layout.block_height, header.layout.block_width)
    for left, top, width, height in stat_windows(header.height, header.width, block, STATS_STRIP_PIXELS):
        first, last = max(top, start), min(top + height, stop)
        if first < last:
            yield Window(left, first, width, last - first)


# -- normalisation -------------------------------------------------------------------------------------------


def normalise_values(values: np.ndarray, p90: float) -> np.ndarray:
    """The old service's per-band normalisation of float64 ``values`` -> float32 (the reference formula)."""
    if p90 <= 0:
        return np.zeros(values.shape, dtype=np.float32)
    return (np.clip(values, 0, p90) / p90).astype(np.float32)


def make_normaliser(dtype: np.dtype, p90s: Sequence[float]) -> Callable[..., np.ndarray]:
    """A function (bands, h, w) raw -> (bands, h, w) float32, bit-identical to :func:`normalise_values`.

    It takes an optional ``out`` array to fill (pass 2 reuses one per tile shape: fresh pages cost more than
    the gather itself on a VM that backs memory lazily, as Lambda's do).

    8/16-bit integers go through per-band lookup tables of :func:`normalise_values` over every possible
    value: one gather instead of a float64 convert, clip and divide per pixel, with identical results.
    """
    if dtype.kind in "iu" and dtype.itemsize * 8 <= LUT_MAX_BITS:
        # Index with the raw bits as unsigned, so signed data needs no offset (and no copy).
        unsigned = np.dtype(f"u{dtype.itemsize}")
        every_value = np.arange(2 ** (8 * dtype.itemsize), dtype=unsigned).view(dtype).astype(np.float64)
        tables = [normalise_values(every_value, p) for p in p90s]

        def by_table(data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
            out = np.empty(data.shape, dtype=np.float32) if out is None else out
            for table, band, dest in zip(tables, data, out, strict=True):
                indexes = band.view(unsigned)
                for row in range(0, band.shape[0], LUT_CHUNK_ROWS):
                    rows = slice(row, row + LUT_CHUNK_ROWS)
                    np.take(table, indexes[rows], out=dest[rows], mode="clip")
            return out

        return by_table

    def by_formula(data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty(data.shape, dtype=np.float32) if out is None else out
        for p90, band, dest in zip(p90s, data, out, strict=True):
            dest[...] = normalise_values(band.astype(np.float64), p90)
        return out

    return by_formula


# -- pass 2: tiles -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiling:
    """Validated tile size and overlap for one model under one set of options; tiles may grow to ``max_tile``."""

    tile: int
    overlap: int
    max_tile: int  # == tile: the fixed grid of ``tile`` (an explicit TILE_SIZE); larger: a fitted grid


def plan_grid(header: RasterHeader, tiling: Tiling, multiple: int) -> TilePlan:
    """The tile grid of a raster: every caller (whole raster, fan-out bands) must use this one."""
    return plan_fitted(header.height, header.width, tiling.tile, tiling.overlap, multiple, tiling.max_tile)


@contextlib.contextmanager
def _decoded_copy(header: RasterHeader, bands: Sequence[int], plan: TilePlan, options: PredictOptions):
    """Pass 1's samples kept for pass 2 where that pays (:func:`plan_copy`): in memory, in TMPDIR, or None."""
    needed = decoded_bytes(header, bands)
    directory = tempfile.gettempdir()
    free = shutil.disk_usage(directory).free
    strips = [(span.start, span.stop) for span in plan.rows]
    redecode = redecode_factor(strips, header.layout.block_height, header.height)
    if options.copy_memory_bytes is None:
        memory = memory_budget(cache_bytes(header.layout, len(set(bands))), at_once=options.predictions_at_once)
    else:
        memory = options.copy_memory_bytes
    where, why = plan_copy(needed, redecode, header.layout.compression, free, memory, options.decode_once)
    ARENA.trim(memory)
    log.info("%s: %s", header.name, why)
    if where == "none":
        yield None
        return
    kept = DecodedInMemory(header, bands, ARENA) if where == "memory" else DecodedRaster(header, bands, directory)
    with kept as copy:
        yield copy


@dataclass(frozen=True)
class TilePass:
    """What pass 2 needs for one raster: its tile plan, the normaliser of its p90s and the engine's runner."""

    header: RasterHeader
    bands: Sequence[int]
    plan: TilePlan
    normalise: Callable[[np.ndarray], np.ndarray]
    runner: TileEngine
    options: PredictOptions

    @classmethod
    def prepare(
        cls, model: InferenceModel, header: RasterHeader, tiling: Tiling, p90s: Sequence[float], options: PredictOptions
    ) -> TilePass:
        card = model.card
        plan = plan_grid(header, tiling, card.size_multiple)
        normalise = make_normaliser(np.dtype(header.dtypes[card.bands[0] - 1]), p90s)
        return cls(header, card.bands, plan, normalise, model.tile_engine(options, one_tile=plan.tiles == 1), options)

    def rows(
        self, ds, runner: TileEngine | None = None, tile_rows: range | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """:func:`predict_rows` over this pass (``runner`` replaces the engine's, e.g. with an interrupt check)."""
        runner = self.runner if runner is None else runner
        return predict_rows(ds, self.header, self.bands, self.plan, self.normalise, runner, self.options, tile_rows)


def predict_rows(
    ds,
    header: RasterHeader,
    bands: Sequence[int],
    plan: TilePlan,
    normalise,
    runner: TileEngine,
    options,
    tile_rows: range | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield (score rows, validity rows or None) top to bottom, each row exactly once, blending the seams.

    ``tile_rows`` (default: all) limits the loop to those tile rows; iteration ``r`` yields the raster rows from
    ``plan.rows[r].start`` to the next tile row's start, so a row band that starts with every tile row reaching
    into it gets exactly the arithmetic of the whole run (see :mod:`model.predictor.shards`).
    """
    tile_rows = range(len(plan.rows)) if tile_rows is None else tile_rows
    width = header.width
    row_weights = axis_weights(plan.rows, DEFAULT_SEAM)
    col_weights = axis_weights(plan.cols, DEFAULT_SEAM)
    capacity = max(span.size for span in plan.rows)
    scores = np.zeros((capacity, width), dtype=np.float32)
    # Float data can hold NaN/inf without any nodata tag: those pixels are invalid too, so 0 in the output.
    valid = np.ones((capacity, width), dtype=bool) if header.may_have_invalid else None
    top = plan.rows[tile_rows[0]].start if tile_rows[0] else 0  # raster row held in scores[0]
    groups = _column_groups(plan.cols)
    inputs = Buffers(np.float32)
    windows = [
        Window(group[0].start, plan.rows[r].start, group[-1].stop - group[0].start, plan.rows[r].size)
        for r in tile_rows
        for group in groups
    ]
    total = len(tile_rows) * len(plan.cols)
    with (
        contextlib.closing(_strips(ds, bands, header, windows, _reads_ahead(ds, options))) as strips,
        tqdm(total=total, unit="tile", disable=not options.progress, file=sys.stderr, leave=False) as bar,
    ):
        for r in tile_rows:
            rspan = plan.rows[r]
            offset = rspan.start - top
            for group in groups:
                left, right = group[0].start, group[-1].stop
                data, strip_valid = next(strips)
                if valid is not None:
                    valid[offset : offset + rspan.size, left:right] = True if strip_valid is None else strip_valid
                for batch in _batches(group, runner.batch_size):
                    tiles = [
                        _tile_input(
                            data,
                            strip_valid,
                            normalise,
                            c,
                            left,
                            rspan,
                            inputs.get((len(bands), rspan.size, c.size), slot),
                        )
                        for slot, c in enumerate(batch)
                    ]
                    outputs = runner(tiles)
                    for cspan, out in zip(batch, outputs, strict=True):
                        _accumulate(scores, out, offset, rspan, cspan, row_weights[r], col_weights[cspan.index])
                    bar.update(len(batch))
            done = plan.rows[r + 1].start if r + 1 < len(plan.rows) else header.height
            count = done - top
            yield scores[:count].copy(), None if valid is None else valid[:count].copy()
            # Keep the rows later tiles still add to at the top of the buffers.
            keep = capacity - count
            scores[:keep] = scores[count:].copy()
            scores[keep:] = 0
            if valid is not None:
                valid[:keep] = valid[count:].copy()
            top = done


def _reads_ahead(source, options: PredictOptions) -> bool:
    """Whether pass 2 reads the next strip while the engine runs: from the decoded copy (plain ``pread``; GDAL
    stays on the calling thread), where a core is spare (``read_ahead=None``) or when asked."""
    if not isinstance(source, DecodedRaster):
        return False
    return available_cpus() > READ_AHEAD_MIN_CPUS if options.read_ahead is None else options.read_ahead


def _strips(source, bands: Sequence[int], header: RasterHeader, windows: Sequence[Window], ahead: bool):
    """(data, validity) of each window in turn, read into reused buffers; ``ahead``: the next one read in a
    background thread meanwhile (two buffers per shape, alternating)."""
    buffers = Buffers(header.dtypes[bands[0] - 1])

    def read(i: int):
        window = windows[i]
        out = buffers.get((len(bands), window.height, window.width), i % 2 if ahead else 0)
        return _read(source, bands, window, header.all_valid, out)

    if not ahead:
        for i in range(len(windows)):
            yield read(i)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rasterfn-read-ahead") as pool:
        pending = pool.submit(read, 0)
        for i in range(len(windows)):
            current = pending.result()
            if i + 1 < len(windows):
                pending = pool.submit(read, i + 1)
            yield current


def _read(source, bands: Sequence[int], window: Window, all_valid: bool, out: np.ndarray | None = None):
    """A window from the raster, or from pass 1's decoded copy (into ``out`` when given, or views of it)."""
    if isinstance(source, DecodedRaster | DecodedInMemory):
        return source.read_window(bands, window, all_valid, out)
    return read_window(source, bands, window, all_valid, out)


class Buffers:
    """Arrays of one dtype reused call after call, one per shape (and slot): on a VM that backs memory lazily,
    as Lambda's do, fresh pages cost more than decoding or normalising into them.

    A caller takes a slot per array it still holds while asking for the next (a batch's tiles; a strip read
    ahead while the last one is used).
    """

    def __init__(self, dtype: np.dtype | str) -> None:
        self.dtype = np.dtype(dtype)
        self._arrays: dict[tuple[tuple[int, ...], int], np.ndarray] = {}

    def get(self, shape: tuple[int, ...], slot: int = 0) -> np.ndarray:
        key = (tuple(int(n) for n in shape), slot)
        if key not in self._arrays:
            self._arrays[key] = np.empty(key[0], dtype=self.dtype)
        return self._arrays[key]


def _tile_input(data, strip_valid, normalise, cspan: Span, left: int, rspan: Span, out=None) -> np.ndarray:
    """One tile's normalised input, invalid pixels 0, padded: normalised per tile, so a strip stays raw."""
    columns = slice(cspan.start - left, cspan.stop - left)
    inputs = normalise(data[:, :, columns], out)
    if strip_valid is not None:
        inputs[:, ~strip_valid[:, columns]] = 0  # invalid pixels are 0 for the network (NaN included)
    return pad_tile(inputs, rspan.padded, cspan.padded)


def _accumulate(scores, out, offset: int, rspan: Span, cspan: Span, wy: np.ndarray, wx: np.ndarray) -> None:
    out = out[: rspan.size, : cspan.size]
    target = scores[offset : offset + rspan.size, cspan.start : cspan.stop]
    if wy.min() == 1 and wx.min() == 1:
        target += out  # a lone tile (weights all 1) keeps its scores bit for bit
    else:
        target += out * wy[:, None] * wx[None, :]


def _column_groups(cols: Sequence[Span]) -> list[list[Span]]:
    """Column spans in groups read together: wide rasters are read in pieces to bound memory."""
    groups: list[list[Span]] = [[cols[0]]]
    for span in cols[1:]:
        if span.stop - groups[-1][0].start > READ_GROUP_WIDTH + span.size:
            groups.append([span])
        else:
            groups[-1].append(span)
    return groups


def _batches(items: Sequence[Span], size: int) -> Iterator[Sequence[Span]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _each(observers: Sequence[DecodedObserver]) -> DecodedObserver:
    def observe(window: Window, data: np.ndarray, valid: np.ndarray | None) -> None:
        for observer in observers:
            observer(window, data, valid)

    return observe


def _no_interrupt() -> None:
    return None


def _checked(runner, interrupt: Callable[[], None]):
    """``runner`` that calls ``interrupt`` before every batch of tiles (keeps its ``batch_size``)."""
    if interrupt is _no_interrupt:
        return runner

    class _Checked:
        batch_size = runner.batch_size

        def __call__(self, tiles):
            interrupt()
            return runner(tiles)

    return _Checked()


# -- output --------------------------------------------------------------------------------------------------


def to_output(scores: np.ndarray, valid: np.ndarray | None, threshold: float, output: str) -> np.ndarray:
    result = scores if output == "score" else (scores > threshold).astype(OUTPUT_DTYPES[output])
    if valid is not None:
        result[~valid] = 0
    return result


class Counts:
    """Valid and positive pixels of the rows written so far."""

    def __init__(self) -> None:
        self.valid = 0
        self.positive = 0

    def add(self, scores: np.ndarray, valid: np.ndarray | None, threshold: float) -> None:
        above = scores > threshold
        if valid is None:
            self.valid += scores.size
            self.positive += int(np.count_nonzero(above))
        else:
            self.valid += int(np.count_nonzero(valid))
            self.positive += int(np.count_nonzero(above & valid))


def resolve_tiling(model: InferenceModel, options: PredictOptions) -> Tiling:
    """Validated tile size and overlap for ``model`` under ``options``."""
    card = model.card
    _check_options(options)
    tile = options.tile_size or card.tile_size
    overlap = card.tile_overlap if options.tile_overlap is None else options.tile_overlap
    if tile % card.size_multiple or not 0 <= overlap < tile // 2:
        raise ConfigError(f"tile {tile} / overlap {overlap} do not fit the network (multiple {card.size_multiple})")
    if options.tile_size or not options.fit_tiles:
        return Tiling(tile, overlap, tile)
    max_tile = int(tile * FITTED_TILE_FACTOR) // card.size_multiple * card.size_multiple
    return Tiling(tile, overlap, max(tile, max_tile))


def _check_options(options: PredictOptions) -> None:
    if options.output not in OUTPUT_DTYPES:
        raise ConfigError(f"output must be one of {tuple(OUTPUT_DTYPES)}, got {options.output!r}")
    if options.precision not in PRECISION_SETTINGS:
        raise ConfigError(f"precision must be one of {PRECISION_SETTINGS}, got {options.precision!r}")
    if options.max_pixels < 1:
        raise ConfigError(f"max_pixels must be >= 1, got {options.max_pixels}")


def _check_destination(src: Path, dst: Path) -> None:
    if not dst.parent.is_dir():
        raise InputError(f"output directory {dst.parent} does not exist")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise InputError(f"refusing to overwrite the input {src.name} with its own output")
