"""NaN and +-inf pixels are invalid even in a file without a nodata tag: 0 in every output mode."""

from __future__ import annotations

import numpy as np
import pytest

from model.network.checkpoint import load_model
from model.options import PredictOptions
from model.predictor.predict import predict_file
from tests.fixtures.models import TINY_MODEL, write_random_card
from tests.fixtures.rasters import smooth_bands


@pytest.mark.parametrize("output", ["mask", "mask-uint8", "score"])
def test_non_finite_pixels_are_zero_without_a_nodata_tag(make_raster, tmp_path, output):
    # GIVEN float32 reflectances with NaN, +inf and -inf pixels and no nodata value, and a model whose
    # threshold every score passes (so a scored invalid pixel would show as 1)
    data = smooth_bands(7, 10, 96, 80, "float32")
    data[2, 10:14, 20:30] = np.nan
    data[5, 50, 5] = np.inf
    data[9, 90, 70] = -np.inf
    path = make_raster(96, 80, dtype="float32", data=data, nodata=None, name="reflectance.tif")
    card = write_random_card(tmp_path, **{**TINY_MODEL, "threshold": -1e30})
    # WHEN predicted
    result = predict_file(load_model(card), path, tmp_path / "out.npy", PredictOptions(output=output))
    out = np.load(tmp_path / "out.npy")
    # THEN exactly the non-finite pixels are 0, and counted as invalid
    invalid = ~np.isfinite(data).all(axis=0)
    assert invalid.sum() == 40 + 1 + 1
    assert (out[invalid] == 0).all()
    assert np.count_nonzero(out[~invalid]) > 0.9 * np.count_nonzero(~invalid)  # the others are scored
    assert result.valid_pixels == 96 * 80 - int(invalid.sum())
