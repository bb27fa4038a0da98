"""Tile geometry and seam weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from model.predictor.tiling import (
    SEAM_MODES,
    axis_weights,
    computed_pixels,
    fit_tile,
    pad_tile,
    plan_axis,
    plan_fitted,
    plan_tiles,
)


@pytest.mark.parametrize("length", [1, 17, 500, 512])
def test_an_axis_no_longer_than_a_tile_is_one_span_padded_to_the_multiple(length):
    (span,) = plan_axis(length, 512, 64, 16)
    assert (span.start, span.size, span.own_start, span.own_stop) == (0, length, 0, length)
    assert span.padded % 16 == 0 and span.padded - length < 16


def test_a_multiple_of_16_is_not_padded():
    assert plan_axis(512, 512, 64, 16)[0].padded == 512


@pytest.mark.parametrize("length", [513, 1000, 1024, 3000, 4096, 8192])
@pytest.mark.parametrize("overlap", [0, 64, 128])
def test_spans_cover_the_axis_with_full_tiles_and_enough_overlap(length, overlap):
    spans = plan_axis(length, 512, overlap, 16)
    assert spans[0].start == 0 and spans[-1].stop == length
    assert all(s.size == s.padded == 512 for s in spans)
    assert all(a.stop - b.start >= overlap for a, b in itertools.pairwise(spans))
    # Under "crop" every pixel is owned by exactly one span, and it lies inside that span.
    owned = np.zeros(length, dtype=int)
    for s in spans:
        assert s.start <= s.own_start < s.own_stop <= s.stop
        owned[s.own_start : s.own_stop] += 1
    assert (owned == 1).all()


def test_fewest_tiles_for_the_overlap():
    # 4096 = 512 + 8 * 448 exactly: 9 tiles at stride 448.
    assert len(plan_axis(4096, 512, 64, 16)) == 9
    assert len(plan_axis(1024, 512, 64, 16)) == 3


@pytest.mark.parametrize("seam", SEAM_MODES)
@pytest.mark.parametrize("length", [17, 513, 1000, 4096])
def test_weights_sum_to_one_at_every_pixel(seam, length):
    spans = plan_axis(length, 512, 64, 16)
    total = np.zeros(length)
    for span, weights in zip(spans, axis_weights(spans, seam), strict=True):
        assert weights.dtype == np.float32 and weights.shape == (span.size,)
        total[span.start : span.stop] += weights
    np.testing.assert_allclose(total, 1, rtol=1e-6)


def test_crop_weights_are_zero_or_one():
    spans = plan_axis(3000, 512, 64, 16)
    for weights in axis_weights(spans, "crop"):
        assert set(np.unique(weights)) <= {0.0, 1.0}


def test_plan_tiles_counts_rows_times_cols():
    plan = plan_tiles(1000, 3000, 512, 64, 16)
    assert plan.tiles == len(plan.rows) * len(plan.cols) == 3 * 7


@pytest.mark.parametrize(("h", "w", "height", "width"), [(17, 23, 32, 32), (1, 1, 16, 16), (1, 5, 16, 16)])
def test_pad_tile_reflects_or_repeats(h, w, height, width):
    tile = np.arange(2 * h * w, dtype=np.float32).reshape(2, h, w)
    padded = pad_tile(tile, height, width)
    assert padded.shape == (2, height, width)
    np.testing.assert_array_equal(padded[:, :h, :w], tile)
    if h > 1:
        np.testing.assert_array_equal(padded[:, h, :w], tile[:, h - 2])  # reflect without repeating the edge
    else:
        np.testing.assert_array_equal(padded[:, 1, :w], tile[:, 0])


def test_pad_tile_returns_the_same_array_when_no_pad_is_needed():
    tile = np.zeros((3, 32, 16), dtype=np.float32)
    assert pad_tile(tile, 32, 16) is tile


def test_invalid_geometry_is_refused():
    with pytest.raises(ValueError):
        plan_axis(100, 500, 64, 16)
    with pytest.raises(ValueError):
        plan_axis(0, 512, 64, 16)


# -- fitted grids --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 500, 512])
def test_an_axis_no_longer_than_the_tile_keeps_the_tile(length):
    assert fit_tile(length, 512, 64, 16, 1152) == 512
    assert plan_axis(length, fit_tile(length, 512, 64, 16, 1152), 64, 16) == plan_axis(length, 512, 64, 16)


@pytest.mark.parametrize("length", [513, 900, 1500, 2048, 3000, 4096, 8192, 10980])
def test_a_fitted_axis_computes_no_more_and_keeps_the_overlap(length):
    size = fit_tile(length, 512, 64, 16, 1152)
    assert 512 <= size <= 1152 and size % 16 == 0
    spans = plan_axis(length, size, 64, 16)
    assert spans[0].start == 0 and spans[-1].stop == length
    assert all(a.stop - b.start >= 64 for a, b in itertools.pairwise(spans))
    # the fewest computed pixels of every allowed size (ties: the smallest size)
    allowed = range(512, 1152 + 1, 16)
    assert computed_pixels(length, size, 64, 16) == min(computed_pixels(length, s, 64, 16) for s in allowed)
    assert computed_pixels(length, size, 64, 16) <= computed_pixels(length, 512, 64, 16)


def test_fitted_4096_and_8192():
    # 4096: 4 windows of 1072 (4288 pixels computed, 1.10x) instead of 9 of 512 (4608, 1.27x per raster)
    assert (fit_tile(4096, 512, 64, 16, 1152), computed_pixels(4096, 1072, 64, 16)) == (1072, 4288)
    assert fit_tile(8192, 512, 64, 16, 1152) == 1088
    assert fit_tile(4096, 512, 64, 16, 512) == 512  # max_tile == tile: today's grid


def test_plan_fitted_fits_each_axis():
    plan = plan_fitted(4096, 300, 512, 64, 16, 1152)
    assert [s.size for s in plan.rows] == [1072] * 4 and [s.size for s in plan.cols] == [300]
    assert plan_fitted(1000, 3000, 512, 64, 16, 512) == plan_tiles(1000, 3000, 512, 64, 16)
