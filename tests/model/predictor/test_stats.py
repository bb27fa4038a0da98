"""Streaming percentiles equal np.percentile (linear) on the whole band, chunk by chunk."""

from __future__ import annotations

import numpy as np
import pytest

from model.predictor.stats import PercentileAccumulator, percentile_of_sorted_pair

INT_DTYPES = ["uint8", "int8", "uint16", "int16", "int32", "uint32"]
FLOAT_DTYPES = ["float32", "float64"]


def _values(dtype: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return (rng.standard_normal(n) * 1500 + 300).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -40_000), min(info.max, 70_000), n, endpoint=True).astype(dtype)


def _streamed(values: np.ndarray, chunks: int = 4, **kwargs) -> PercentileAccumulator:
    acc = PercentileAccumulator(values.dtype, **kwargs)
    for chunk in np.array_split(values, chunks):
        acc.add(chunk)
    return acc


@pytest.mark.parametrize("dtype", INT_DTYPES + FLOAT_DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 257, 10_001])
def test_streamed_percentile_equals_numpy(dtype, n):
    # GIVEN values of a band split into strips
    values = _values(dtype, n, np.random.default_rng(n))
    # WHEN the accumulator sees them strip by strip
    acc = _streamed(values)
    # THEN the result is bit-identical to np.percentile on all of them in float64
    assert acc.exact
    assert acc.result() == np.percentile(values.astype(np.float64), 90)


@pytest.mark.parametrize("q", [0.0, 10.0, 50.0, 90.0, 99.9, 100.0])
def test_any_percentile_equals_numpy(q):
    values = _values("uint16", 1234, np.random.default_rng(1))
    assert _streamed(values, q=q).result() == np.percentile(values.astype(np.float64), q)


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_constant_band(dtype):
    values = np.full(1000, -7 if dtype == "int16" else 7, dtype=dtype)
    assert _streamed(values).result() == np.percentile(values.astype(np.float64), 90)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_nothing_valid_gives_zero(dtype):
    # GIVEN a band whose pixels are all nodata (so nothing is added)
    acc = PercentileAccumulator(np.dtype(dtype))
    acc.add(np.array([], dtype=dtype))
    # THEN the percentile is 0, which the normaliser turns into an all-zero band
    assert acc.result() == 0.0


def test_non_finite_floats_are_ignored():
    values = np.array([np.nan, 1.0, np.inf, 2.0, -np.inf, 3.0], dtype="float32")
    assert _streamed(values, chunks=2).result() == np.percentile([1.0, 2.0, 3.0], 90)


def test_histogram_mode_for_16_bit_and_collect_mode_for_floats():
    assert PercentileAccumulator(np.dtype("uint16")).mode == "hist"
    assert PercentileAccumulator(np.dtype("int8")).mode == "hist"
    assert PercentileAccumulator(np.dtype("float32")).mode == "collect"


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
def test_past_the_budget_is_a_close_approximation(dtype):
    # GIVEN more values than the exact budget allows
    values = _values(dtype, 200_000, np.random.default_rng(3))
    acc = _streamed(values, chunks=20, exact_budget_bytes=10_000)
    # THEN the accumulator says it approximated, within one bin (relative 2**-11) of the exact value
    assert not acc.exact and acc.mode == "approx"
    exact = np.percentile(values.astype(np.float64), 90)
    assert acc.result() == pytest.approx(exact, rel=2**-10)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 11, 100, 1001])
def test_percentile_of_sorted_pair_matches_numpy(n):
    values = np.sort(np.random.default_rng(n).random(n) * 100)
    assert percentile_of_sorted_pair(n, 90, lambda k: values[k]) == np.percentile(values, 90)
