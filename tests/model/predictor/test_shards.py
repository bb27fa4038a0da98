"""model.predictor.shards + bands.band_statistics/predict_band: row bands put end to end are predict_file's .npy."""

from __future__ import annotations

import io

import numpy as np
import pytest

from model.io.raster import open_raster, read_header
from model.network.checkpoint import load_model
from model.options import PredictOptions
from model.predictor.bands import band_statistics, plan_raster_shards, predict_band
from model.predictor.predict import compute_percentiles, predict_file, resolve_tiling
from model.predictor.shards import S3_MIN_PART_BYTES, merge_percentiles, npy_header, plan_shards
from model.predictor.stats import PercentileAccumulator
from model.predictor.tiling import plan_fitted, plan_tiles


@pytest.fixture(scope="module")
def tiny(tiny_model_card):
    return load_model(tiny_model_card)


def assemble(model, path, wanted, options, **limits) -> tuple[bytes, object]:
    """What the fan-out does, in one process: stats per band, merged p90s, each band's part, concatenated."""
    with open_raster(path) as ds:
        header = read_header(ds, path)
    shards = plan_raster_shards(model, header, wanted, options, **limits)
    histograms = [band_statistics(model, path, band, options) for band in shards.bands]
    p90s = merge_percentiles(header.dtypes[0], histograms)
    parts = []
    for band in shards.bands:
        out = io.BytesIO()
        if band.index == 0:
            out.write(shards.header)
        result = predict_band(model, path, band, p90s, out.write, options)
        assert result.rows == band.rows
        assert len(out.getvalue()) == shards.part_bytes(band)
        parts.append(out.getvalue())
    return b"".join(parts), shards


@pytest.mark.parametrize(
    ("height", "width", "wanted", "output", "nodata"),
    [
        (300, 70, 3, "mask", None),  # uneven: the last band has one tile row
        (530, 90, 4, "score", None),  # float32 output
        (250, 64, 2, "mask", 0),  # nodata: validity crosses the bands
        (64, 64, 5, "mask", None),  # one tile: one shard
        (700, 40, 20, "mask", None),  # more shards wanted than tile rows
    ],
)
def test_bands_assemble_to_predict_file_byte_for_byte(
    tiny, make_raster, tmp_path, height, width, wanted, output, nodata
):
    # GIVEN a raster and the single-invocation result
    path = make_raster(height, width, nodata=nodata, seed=height)
    options = PredictOptions(output=output)
    predict_file(tiny, path, tmp_path / "one.npy", options)
    # WHEN its bands run separately and their parts are concatenated
    assembled, shards = assemble(tiny, path, wanted, options, min_part_bytes=1)
    # THEN the bytes are the same
    card, tiling = tiny.card, resolve_tiling(tiny, options)  # the predictor's (fitted) grid
    fitted = plan_fitted(height, width, tiling.tile, tiling.overlap, card.size_multiple, tiling.max_tile)
    assert len(shards.bands) == min(wanted, len(fitted.rows))
    assert assembled == (tmp_path / "one.npy").read_bytes()


def test_bands_equal_predict_file_that_decoded_once(tiny, make_raster, tmp_path):
    # GIVEN a compressed raster of several tile rows: predict_file keeps pass 1's samples, the bands decode
    path = make_raster(520, 90, seed=9, tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    predict_file(tiny, path, tmp_path / "one.npy", PredictOptions(decode_once=True))
    # WHEN its bands run separately, THEN the bytes are the same
    assembled, shards = assemble(tiny, path, 4, PredictOptions(), min_part_bytes=1)
    assert len(shards.bands) > 1
    assert assembled == (tmp_path / "one.npy").read_bytes()


def test_narrow_raster_gets_fewer_bands_and_stays_identical(tiny, make_raster, tmp_path):
    # 400 x 64 uint8 is 25 KB: far below one 5 MiB part, so one band whatever was wanted
    path = make_raster(400, 64)
    predict_file(tiny, path, tmp_path / "one.npy")
    assembled, shards = assemble(tiny, path, 8, PredictOptions())
    assert len(shards.bands) == 1
    assert assembled == (tmp_path / "one.npy").read_bytes()


def test_merged_percentiles_equal_the_whole_raster_pass(tiny, make_raster):
    # int16 with nodata: a histogram per band and shard, merged, is the whole-raster pass exactly
    path = make_raster(333, 77, dtype="int16", nodata=-5, seed=3)
    shards = plan_shards(plan_tiles(333, 77, 64, 8, 16), "uint8", 4, min_part_bytes=1)
    with open_raster(path) as ds:
        whole = compute_percentiles(ds, read_header(ds, path), list(range(1, 11)))
    merged = merge_percentiles("int16", [band_statistics(tiny, path, band) for band in shards.bands])
    assert len(shards.bands) == 4
    assert merged == whole


def test_plan_keeps_parts_above_the_s3_minimum_and_under_the_part_limit():
    # A Sentinel-2 tile (10980 x 10980, tile 512 / overlap 64): uint8 rows are 10980 bytes, a tile row 477 rows
    plan = plan_tiles(10980, 10980, 512, 64, 16)
    shards = plan_shards(plan, "uint8", 50)
    assert all(shards.part_bytes(b) >= S3_MIN_PART_BYTES for b in shards.bands[:-1])
    assert len(shards.bands) <= 50
    rows = [r for b in shards.bands for r in range(b.row_start, b.row_stop)]
    assert rows == list(range(10980))  # every row once, in order
    assert shards.total_bytes == len(npy_header((10980, 10980), "uint8")) + 10980 * 10980
    assert len(plan_shards(plan_tiles(10**6, 64, 64, 8, 16), "uint8", 20_000, min_part_bytes=1).bands) == 10_000


def test_plan_refuses_when_no_band_fits_the_pixel_limit():
    with pytest.raises(ValueError, match="no split"):
        plan_shards(plan_tiles(1000, 1000, 64, 8, 16), "uint8", 4, max_band_pixels=1000, min_part_bytes=1)


def test_band_pixel_limit_adds_bands():
    plan = plan_tiles(1000, 100, 64, 8, 16)
    shards = plan_shards(plan, "uint8", 1, max_band_pixels=200 * 100, min_part_bytes=1)
    assert len(shards.bands) > 1
    assert all(b.read_rows * 100 <= 200 * 100 for b in shards.bands)


def test_float_histograms_merge_as_the_documented_approximation():
    rng = np.random.default_rng(0)
    values = rng.random(10_000).astype(np.float32)
    halves = []
    for part in (values[:4000], values[4000:]):
        acc = PercentileAccumulator(np.dtype("float32"))
        acc.add(part)
        halves.append([acc.histogram()])
    merged = merge_percentiles("float32", halves)[0]
    exact = float(np.percentile(values.astype(np.float64), 90))
    assert abs(merged - exact) <= exact * 2**-11
