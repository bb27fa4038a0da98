"""The quicklook PNG: a few hundred pixels wide, aspect kept, class 1 green, nodata transparent; and the card's
true-colour bands found by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from model.card import DEFAULT_CARD_PATH, load_card
from model.errors import RasterBandsError
from model.io.cog import MASK_NODATA, CogWriter
from model.io.quicklook import (
    TrueColourSampler,
    quicklook_pixels,
    sampled,
    stretch,
    thumbnail_shape,
    true_colour_bands,
    write_quicklook,
)

HEIGHT, WIDTH = 1300, 1100


@pytest.fixture
def scene(tmp_path, make_raster):
    """An input raster and its mask COG: class 1 in the left half, nodata along the top 100 rows."""
    source = make_raster(HEIGHT, WIDTH, tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    scores = np.zeros((HEIGHT, WIDTH), np.float32)
    scores[:, : WIDTH // 2] = 0.9
    valid = np.ones((HEIGHT, WIDTH), bool)
    valid[:100] = False
    mask = tmp_path / "mask.tif"
    with CogWriter(mask, (HEIGHT, WIDTH), "mask", "EPSG:32633", (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), 0.5) as out:
        out.write_rows(scores, valid)
    return source, mask


def test_quicklook_png_is_small_keeps_the_aspect_and_shows_the_class(tmp_path, scene):
    source, mask = scene
    dst = tmp_path / "quick.png"
    write_quicklook(mask, source, (3, 2, 1), dst)
    with rasterio.open(dst) as png:
        assert png.driver == "PNG" and png.count == 4 and png.dtypes[0] == "uint8"
        assert png.width == 512 and png.height == round(HEIGHT * 512 / WIDTH)
        red, green, blue, alpha = png.read().astype(int)
    rows = slice(png.height // 10 + 2, None)  # below the nodata stripe
    left, right = slice(0, 250), slice(262, None)
    # Class 1 (the left half) is tinted green: green well above red and blue there, not in the right half.
    tint_left = (green[rows, left] - (red[rows, left] + blue[rows, left]) / 2).mean()
    tint_right = (green[rows, right] - (red[rows, right] + blue[rows, right]) / 2).mean()
    assert tint_left > tint_right + 60
    # The nodata stripe is transparent, the rest opaque.
    assert (alpha[: png.height * 100 // HEIGHT - 1] == 0).all()
    assert (alpha[rows] == 255).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "quick.png", "r.tif"]


def test_a_narrow_raster_is_not_upscaled(tmp_path, make_raster):
    source = make_raster(90, 60, name="small.tif")
    mask = tmp_path / "m.tif"
    with CogWriter(mask, (90, 60), "mask", "EPSG:32633", (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), 0.5) as out:
        out.write_rows(np.ones((90, 60), np.float32), None)
    write_quicklook(mask, source, (3, 2, 1), tmp_path / "q.png", width=300)
    with rasterio.open(tmp_path / "q.png") as png:
        assert (png.width, png.height) == (60, 90)


def test_missing_bands_are_refused_and_leave_nothing(tmp_path, scene):
    source, mask = scene
    with pytest.raises(RasterBandsError, match="11"):
        write_quicklook(mask, source, (11, 2, 1), tmp_path / "q.png")
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".q.png*"))


def test_stretch_maps_the_2nd_and_98th_percentiles_to_the_ends():
    band = np.arange(100, dtype=np.uint16).reshape(10, 10)
    valid = np.ones_like(band, bool)
    out = stretch(band, valid)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert out[0, 1] == 0 and out[9, 8] == 255 and 100 < out[5, 0] < 155
    # Invalid pixels do not count: a huge invalid value does not squash the stretch.
    band = band.astype(np.float32)
    band[0, 0] = 1e9
    valid[0, 0] = False
    assert abs(int(stretch(band, valid)[5, 0]) - int(out[5, 0])) <= 3
    assert (stretch(np.full((3, 3), np.nan, np.float32), np.ones((3, 3), bool)) == 0).all()


def test_quicklook_pixels_blend_green_and_hide_nodata():
    rgb = np.stack([np.tile(np.arange(10, dtype=np.float32), (10, 1))] * 3)
    mask = np.zeros((10, 10), np.uint8)
    mask[:, 5:] = 1
    mask[0] = MASK_NODATA
    out = quicklook_pixels(rgb, mask).astype(int)
    assert out.shape == (4, 10, 10)
    assert (out[3, 0] == 0).all() and (out[3, 1:] == 255).all()
    assert (out[0, 1:, :5] == out[1, 1:, :5]).all()  # grey stays grey outside the class
    assert (out[1, 1:, 5:] - out[0, 1:, 5:] >= 80).all()  # green inside it


def test_true_colour_bands_by_name():
    card = load_card(DEFAULT_CARD_PATH)  # B2, B3, B4, ... for bands 1..10
    assert true_colour_bands(card) == (3, 2, 1)
    shuffled = dataclasses.replace(card, bands=(4, 5, 6), architecture={**card.architecture, "in_channels": 3})
    named = dataclasses.replace(shuffled, extra={"band_names": ["Blue", "RED", "green"]})
    assert true_colour_bands(named) == (5, 6, 4)
    assert true_colour_bands(dataclasses.replace(shuffled, extra={})) == (4, 5, 6)
    assert true_colour_bands(dataclasses.replace(shuffled, extra={"band_names": ["B8", "B11", "B12"]})) == (4, 5, 6)
    one_band = dataclasses.replace(card, bands=(7,), extra={})
    assert true_colour_bands(one_band) == (7, 7, 7)


def test_the_sampler_picks_the_thumbnail_pixels_from_windows_in_any_order():
    # GIVEN a 1000 x 1777 raster shown to the sampler window by window, in an order no reader would use
    data = np.arange(10 * 1000 * 1777, dtype=np.uint32).reshape(10, 1000, 1777) % 65521
    sampler = TrueColourSampler((1000, 1777), tuple(range(1, 11)), (3, 2, 1), np.dtype("uint32"))
    windows = [(top, left) for top in range(0, 1000, 300) for left in range(0, 1777, 700)]
    for top, left in reversed(windows):
        window = Window(left, top, min(700, 1777 - left), min(300, 1000 - top))
        sampler(window, data[:, top : top + window.height, left : left + window.width], None)
    # THEN it holds exactly the thumbnail's pixels of bands 3, 2, 1, at most 512 wide, the aspect kept
    assert sampler.complete and sampler.out_shape == thumbnail_shape(1000, 1777) == (288, 512)
    expected = data[[2, 1, 0]][:, sampled(1000, 288)][:, :, sampled(1777, 512)]
    np.testing.assert_array_equal(sampler.rgb, expected)


def test_a_sampler_that_missed_windows_is_not_complete():
    sampler = TrueColourSampler((100, 100), (1, 2, 3), (3, 2, 1), np.dtype("uint16"))
    sampler(Window(0, 0, 100, 50), np.ones((3, 50, 100), np.uint16), None)
    assert not sampler.complete


def test_a_sampler_refuses_bands_the_predictor_does_not_read():
    with pytest.raises(ValueError, match="not among the bands read"):
        TrueColourSampler((10, 10), (1, 2), (3, 2, 1), np.dtype("uint16"))
