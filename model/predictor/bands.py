"""The fan-out's band entry points: one raster's row bands (:mod:`model.predictor.shards`) through predict's two passes.

:func:`band_statistics` is pass 1 over one band (mergeable histograms), :func:`predict_band` pass 2 with the
whole raster's p90s; the bytes a band writes are exactly those :func:`model.predictor.predict.predict_file` writes for
its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import InputError
from model.io.raster import RasterHeader, open_checked
from model.network.engines.base import InferenceModel
from model.options import OUTPUT_DTYPES, PredictOptions
from model.predictor.predict import (
    DEFAULT_OPTIONS,
    PERCENTILE,
    Counts,
    RowSink,
    TilePass,
    accumulate_bands,
    plan_grid,
    resolve_tiling,
    to_output,
)
from model.predictor.shards import RowBand, ShardPlan, plan_shards
from model.predictor.stats import PercentileAccumulator


@dataclass(frozen=True)
class BandResult:
    rows: int
    valid_pixels: int
    positive_pixels: int  # valid pixels above the card's threshold


def plan_raster_shards(
    model: InferenceModel, header: RasterHeader, wanted: int, options: PredictOptions = DEFAULT_OPTIONS, **limits
) -> ShardPlan:
    """The row bands of the raster ``header`` describes, as :func:`predict_band` will process them."""
    tiling = resolve_tiling(model, options)
    plan = plan_grid(header, tiling, model.card.size_multiple)
    return plan_shards(plan, OUTPUT_DTYPES[options.output], wanted, **limits)


def band_statistics(
    model: InferenceModel, src: str | Path, band: RowBand, options: PredictOptions = DEFAULT_OPTIONS
) -> list[tuple[str, np.ndarray]]:
    """Pass 1 over ``band``'s rows: each model band's mergeable histogram
    (:func:`~model.predictor.shards.merge_percentiles`).

    ``options.max_pixels`` bounds the whole raster (the scene limit of a sharded job).
    """
    bands = model.card.bands
    with open_checked(src, bands, options.max_pixels, options.limits) as (ds, header):
        dtype = np.dtype(header.dtypes[bands[0] - 1])
        accumulators = [PercentileAccumulator(dtype, PERCENTILE) for _ in bands]
        accumulate_bands(ds, header, bands, accumulators, band.row_start, band.row_stop)
    return [acc.histogram() for acc in accumulators]


def predict_band(
    model: InferenceModel,
    src: str | Path,
    band: RowBand,
    p90s: Sequence[float],
    write: Callable[[np.ndarray], object],
    options: PredictOptions = DEFAULT_OPTIONS,
    sink: RowSink | None = None,
) -> BandResult:
    """Pass 2 over ``band`` with the whole raster's ``p90s``: ``write`` gets the band's output rows, top to bottom.

    Their bytes are exactly those :func:`model.predictor.predict.predict_file` writes for rows
    ``band.row_start..band.row_stop-1``; ``sink`` (a COG part) gets the same rows' scores and validity first.
    """
    card = model.card
    tiling = resolve_tiling(model, options)
    with open_checked(src, card.bands, options.max_pixels, options.limits) as (ds, header):
        run = TilePass.prepare(model, header, tiling, p90s, options)
        plan = run.plan
        if band.stop_tile_row > len(plan.rows) or plan.rows[band.emit_tile_row].start > band.row_start:
            raise InputError(f"{header.name}: shard {band.index} does not fit this raster's tiles")
        counts = Counts()
        row = plan.rows[band.first_tile_row].start if band.first_tile_row else 0
        for scores, valid in run.rows(ds, tile_rows=range(band.first_tile_row, band.stop_tile_row)):
            top, row = row, row + scores.shape[0]
            if top < band.row_start:
                continue  # an overlap tile row's own rows: another band emits them
            counts.add(scores, valid, card.threshold)
            if sink is not None:  # before to_output, which may reuse the rows' memory
                sink.write_rows(scores, valid)
            write(to_output(scores, valid, card.threshold, options.output))
    return BandResult(row - band.row_start, counts.valid, counts.positive)
