"""predict_file: the old service's result on one tile, the whole raster tiled and streamed beyond it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import model.network.engines.torch_engine as torch_engine
import model.predictor.predict as predict_module
from model.card import DEFAULT_CARD_PATH, load_card
from model.errors import ConfigError, InputError, RasterBandsError, RasterReadError, RasterTooLargeError
from model.io.raster import open_raster, read_header
from model.network.checkpoint import LoadedModel, build_model
from model.predictor.predict import PredictOptions, compute_percentiles, make_normaliser, normalise_values, predict_file
from tests.fixtures.paths import REPO_ROOT

TINY = {"depth": 2, "start_filts": 2}  # for tests about geometry, not about the network
SMALL = {"depth": 3, "start_filts": 4}


def old_service(path: Path, net: torch.nn.Module, bands=tuple(range(1, 11)), threshold=0.5) -> np.ndarray:
    """An independent re-implementation of the old Flask service's procedure (the reference)."""
    with rasterio.open(path) as src:
        image = src.read(list(bands)).astype(np.float64)
    for i, band in enumerate(image):
        p90 = np.percentile(band, 90)
        image[i] = np.clip(band, 0, p90) / p90 if p90 > 0 else 0
    x = torch.from_numpy(np.ascontiguousarray(image.astype(np.float32))[None])
    with torch.no_grad():
        out = net(x)
    return (out[0, 0].numpy() > threshold).astype(np.float32)


@pytest.fixture
def load(random_model_card):
    def make(**kwargs):
        return build_model(load_card(random_model_card(**kwargs)))

    return make


def _no_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".npy", ".tmp"))


# -- the old service, exactly --------------------------------------------------------------------------------


def test_one_512_tile_equals_the_old_service_exactly(load, make_raster, tmp_path):
    # GIVEN the old service's input: a 512 x 512 x 10 uint16 GeoTIFF, and a U-Net
    model = load()
    path = make_raster(512, 512)
    # WHEN predicted
    result = predict_file(model, path, tmp_path / "out.npy")
    # THEN the .npy is bit for bit what the old service returned
    mask = np.load(tmp_path / "out.npy")
    expected = old_service(path, model.net)
    assert mask.dtype == np.float32 and mask.shape == (512, 512)
    assert np.array_equal(mask, expected)
    assert 0.05 < expected.mean() < 0.95  # a mask with both classes, so the comparison means something
    assert result.tiles == 1 and result.valid_pixels == 512 * 512
    assert result.positive_fraction == pytest.approx(expected.mean())


@pytest.mark.skipif(not DEFAULT_CARD_PATH.exists(), reason="demo weights not built yet")
def test_demo_model_equals_the_old_service_on_the_test_scene(tmp_path):
    model = build_model(load_card(DEFAULT_CARD_PATH))
    scene = REPO_ROOT / "data" / "test-1.tif"
    predict_file(model, scene, tmp_path / "out.npy")
    expected = old_service(scene, model.net, model.card.bands, model.card.threshold)
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)


class _FixedRunner:
    """A stand-in runner answering fixed scores, counting its calls."""

    batch_size = 1

    def __init__(self, value: float) -> None:
        self.value, self.calls = value, 0

    def __call__(self, tiles):
        self.calls += 1
        return [np.full(t.shape[1:], self.value, dtype=np.float32) for t in tiles]


@pytest.mark.parametrize(
    ("fast_score", "recomputed"),
    [(0.9, False), (0.1, False), (0.5 + 2e-4, False), (0.5 + 5e-5, True), (0.5 - 5e-5, True), (0.5, True)],
)
def test_guarded_runner_recomputes_only_tiles_near_the_threshold(fast_score, recomputed):
    # GIVEN a fast runner and an exact one, guarded at 1e-4 around the threshold 0.5
    fast, exact = _FixedRunner(fast_score), _FixedRunner(0.25)
    runner = torch_engine.GuardedRunner(fast, exact, threshold=0.5, guard=1e-4)
    # WHEN one tile runs
    (out,) = runner([np.zeros((10, 16, 16), dtype=np.float32)])
    # THEN the exact runner answers exactly when a fast score lies within the guard
    assert exact.calls == int(recomputed) and runner.recomputed == int(recomputed)
    assert out[0, 0] == (0.25 if recomputed else np.float32(fast_score))


def test_one_tile_mask_is_exact_even_when_the_guard_always_recomputes(load, make_raster, tmp_path, monkeypatch):
    # GIVEN a guard so wide that every tile is recomputed in the old arithmetic
    monkeypatch.setattr(torch_engine, "EXACT_GUARD", 10.0)
    model = load()
    path = make_raster(512, 512)
    # WHEN predicted
    predict_file(model, path, tmp_path / "out.npy")
    # THEN the mask is still the old service's, bit for bit
    assert np.array_equal(np.load(tmp_path / "out.npy"), old_service(path, model.net))


@pytest.mark.parametrize(("output", "guarded"), [("mask", True), ("mask-uint8", True), ("score", False)])
def test_one_tile_runner_choice(load, output, guarded):
    model = load(**SMALL)
    runner = torch_engine.choose_runner(model, "cpu", PredictOptions(output=output), one_tile=True)
    assert isinstance(runner, torch_engine.GuardedRunner) == guarded
    if not guarded:
        assert runner.channels_last is False  # one-tile scores keep the old arithmetic


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_every_dtype_matches_the_old_procedure(load, make_raster, tmp_path, dtype):
    model = load(**SMALL)
    path = make_raster(64, 48, dtype=dtype, seed=3)
    predict_file(model, path, tmp_path / "out.npy")
    assert np.array_equal(np.load(tmp_path / "out.npy"), old_service(path, model.net))


def test_more_bands_than_needed_uses_the_cards_bands(load, make_raster, tmp_path):
    # GIVEN a 13-band raster and a card reading 10 of them (Sentinel-2 style: skip B1, B9, B10)
    bands = (2, 3, 4, 5, 6, 7, 8, 9, 12, 13)
    model = load(bands=bands, **SMALL)
    path = make_raster(64, 64, bands=13)
    predict_file(model, path, tmp_path / "out.npy")
    assert np.array_equal(np.load(tmp_path / "out.npy"), old_service(path, model.net, bands))


def test_normaliser_lookup_tables_equal_the_float64_formula():
    rng = np.random.default_rng(0)
    for dtype in ("uint8", "int8", "uint16", "int16"):
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, (3, 20, 20), endpoint=True).astype(dtype)
        p90s = [float(np.percentile(b.astype(np.float64), 90)) for b in data[:2]] + [0.0]
        got = make_normaliser(np.dtype(dtype), p90s)(data)
        for band, p90, out in zip(data, p90s, got, strict=True):
            assert np.array_equal(out, normalise_values(band.astype(np.float64), p90))


# -- layouts -------------------------------------------------------------------------------------------------


LAYOUTS = {
    "striped": {},
    "tiled-lzw": {"tiled": True, "blockxsize": 32, "blockysize": 32, "compress": "lzw"},
    "deflate-band": {"compress": "deflate", "interleave": "band"},
    "zstd-pixel": {
        "tiled": True,
        "blockxsize": 16,
        "blockysize": 16,
        "compress": "zstd",
        "interleave": "pixel",
    },
    "bigtiff": {"BIGTIFF": "YES", "compress": "deflate", "predictor": 2},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_file_layout_does_not_change_the_result(load, make_raster, tmp_path, layout):
    model = load(**TINY, tile_size=64, tile_overlap=16)
    plain = make_raster(150, 100, name="plain.tif")
    other = make_raster(150, 100, name="other.tif", **LAYOUTS[layout])
    a = predict_file(model, plain, tmp_path / "a.npy", PredictOptions(output="score"))
    predict_file(model, other, tmp_path / "b.npy", PredictOptions(output="score"))
    assert a.tiles > 1
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


# -- geometry ------------------------------------------------------------------------------------------------


class Passthrough(torch.nn.Module):
    """A "network" whose score is its first input band: the output shows where every tile landed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x[:, :1])


def _passthrough_model(card_path: Path) -> LoadedModel:
    model = build_model(load_card(card_path))
    return LoadedModel(card=model.card, net=Passthrough(), sha256=model.sha256)


def _expected_passthrough(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        band = src.read(1).astype(np.float64)
    return normalise_values(band, float(np.percentile(band, 90)))


@pytest.mark.parametrize(("height", "width"), [(17, 23), (517, 333), (1000, 3000), (1, 1), (2, 700), (600, 1)])
def test_output_is_exactly_h_by_w_with_every_tile_in_place(random_model_card, make_raster, tmp_path, height, width):
    # GIVEN a network that echoes its first band, so the output must equal the normalised band everywhere
    model = _passthrough_model(random_model_card(**TINY))
    data = np.random.default_rng(height).integers(0, 10_000, (10, height, width)).astype("uint16")
    path = make_raster(height, width, bands=10, dtype="uint16", data=data)
    # WHEN predicted (tiled, padded where the raster is smaller than a tile)
    result = predict_file(model, path, tmp_path / "out.npy", PredictOptions(output="score"))
    # THEN the output is H x W and each pixel came from the right place
    out = np.load(tmp_path / "out.npy")
    assert out.shape == result.shape == (height, width)
    assert np.array_equal(out, _expected_passthrough(path))


@pytest.mark.slow
def test_8192_square_streams_to_the_right_shape(random_model_card, make_raster, tmp_path):
    # GIVEN an 8192 x 8192 single-band raster and a pass-through network (the geometry is under test)
    model = _passthrough_model(random_model_card(in_channels=1, depth=1, start_filts=1))
    yy, xx = np.indices((8192, 8192), dtype=np.uint16)
    data = ((yy // 7 + xx // 5) % 251).astype(np.uint8)[None]
    del yy, xx
    path = make_raster(8192, 8192, bands=1, dtype="uint8", data=data, tiled=True, compress="deflate")
    del data
    # WHEN predicted
    result = predict_file(model, path, tmp_path / "out.npy", PredictOptions(output="mask-uint8"))
    # THEN the mask is 8192 x 8192 and equals the thresholded normalised band everywhere
    out = np.load(tmp_path / "out.npy", mmap_mode="r")
    assert out.shape == result.shape == (8192, 8192) and out.dtype == np.uint8
    assert result.tiles == 8 * 8  # the fitted grid: 8 windows of 1088 per axis (19 of 512 with the card's tile)
    assert np.array_equal(out, (_expected_passthrough(path) > 0.5).astype(np.uint8))


def _one_pass_mask(path: Path, model) -> np.ndarray:
    """The whole raster through the network in one forward pass (the tiling's ground truth)."""
    with open_raster(path) as src:
        header = read_header(src, path)
        p90s = compute_percentiles(src, header, model.card.bands)
        x = make_normaliser(np.dtype(header.dtypes[0]), p90s)(src.read(list(model.card.bands)))
    with torch.inference_mode():
        return model.net(torch.from_numpy(x[None]))[0, 0].numpy() > model.card.threshold


@pytest.mark.slow
def test_tiled_agrees_with_one_pass(load, make_raster, tmp_path):
    # GIVEN a 1024 x 1024 scene, tiled 512 with overlap 64 (3 x 3 tiles), and a seeded random U-Net
    path = make_raster(1024, 1024, seed=5)
    _assert_tiled_agrees(load(), path, tmp_path, nontrivial=True)


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_CARD_PATH.exists(), reason="demo weights not built yet")
def test_tiled_agrees_with_one_pass_demo_model(make_raster, tmp_path):
    from model.training.synthetic import make_scene

    path = make_raster(1024, 1024, data=make_scene(101, size=1024)[0])
    _assert_tiled_agrees(build_model(load_card(DEFAULT_CARD_PATH)), path, tmp_path, nontrivial=False)


def _assert_tiled_agrees(model, path: Path, tmp_path: Path, nontrivial: bool) -> None:
    result = predict_file(model, path, tmp_path / "out.npy", PredictOptions(fit_tiles=False))  # the card's grid
    tiled = np.load(tmp_path / "out.npy") > 0.5
    one_pass = _one_pass_mask(path, model)
    assert result.tiles == 9
    if nontrivial:
        assert 0.02 < one_pass.mean() < 0.98  # both classes present, so agreement means something
    # THEN at least 99.5% of the pixels agree with a single forward pass over the whole raster
    assert (tiled == one_pass).mean() >= 0.995


# -- nodata, output modes ------------------------------------------------------------------------------------


def test_nodata_is_excluded_from_stats_and_zero_in_the_output(load, make_raster, tmp_path):
    # GIVEN a raster whose top-left corner is nodata in band 4
    data = np.random.default_rng(0).integers(0, 5000, (10, 96, 80)).astype("uint16")
    data[3, :40, :30] = 65535
    path = make_raster(96, 80, data=data, nodata=65535)
    # THEN band 4's percentile leaves the nodata pixels out
    with open_raster(path) as src:
        p90s = compute_percentiles(src, read_header(src, path), range(1, 11))
    valid = np.ones((96, 80), dtype=bool)
    valid[:40, :30] = False
    assert p90s[3] == np.percentile(data[3][valid].astype(np.float64), 90)
    assert p90s[0] == np.percentile(data[0][valid].astype(np.float64), 90)
    # AND every output mode has 0 there
    model = load(**SMALL, threshold=0.0)  # threshold 0: every valid pixel with a positive score is 1
    for mode in ("mask", "mask-uint8", "score"):
        result = predict_file(model, path, tmp_path / f"{mode}.npy", PredictOptions(output=mode))
        out = np.load(tmp_path / f"{mode}.npy")
        assert (out[:40, :30] == 0).all()
        assert result.valid_pixels == valid.sum()
    assert np.load(tmp_path / "mask.npy")[valid].mean() > 0.5


def test_all_nodata_gives_an_empty_mask(load, make_raster, tmp_path):
    path = make_raster(32, 32, data=np.zeros((10, 32, 32), "uint16"), nodata=0)
    result = predict_file(load(**TINY), path, tmp_path / "out.npy")
    assert not np.load(tmp_path / "out.npy").any()
    assert result.valid_pixels == 0 and result.positive_fraction == 0.0


def test_output_modes_agree(load, make_raster, tmp_path):
    model = load(**SMALL)
    path = make_raster(80, 96)
    for mode in ("mask", "mask-uint8", "score"):
        predict_file(model, path, tmp_path / f"{mode}.npy", PredictOptions(output=mode))
    mask, mask8, score = (np.load(tmp_path / f"{m}.npy") for m in ("mask", "mask-uint8", "score"))
    assert (mask.dtype, mask8.dtype, score.dtype) == (np.float32, np.uint8, np.float32)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert np.array_equal(mask8, mask.astype(np.uint8))
    assert np.array_equal(mask, (score > 0.5).astype(np.float32))
    assert (score >= 0).all() and score.max() > 0.5


def test_bf16_runs_and_agrees_with_fp32(load, make_raster, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(torch_engine, "_bf16_warned", False)
    model = load(**SMALL)
    path = make_raster(64, 64)
    predict_file(model, path, tmp_path / "fp32.npy")
    with caplog.at_level(logging.WARNING, logger="model.network.engines.torch_engine"):
        predict_file(model, path, tmp_path / "bf16.npy", PredictOptions(precision="bf16"))
        predict_file(model, path, tmp_path / "bf16.npy", PredictOptions(precision="bf16"))
    agreement = (np.load(tmp_path / "fp32.npy") == np.load(tmp_path / "bf16.npy")).mean()
    assert agreement >= 0.99
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert len([r for r in caplog.records if "bf16" in r.getMessage()]) == 1  # one line, not one per call


# -- refusals ------------------------------------------------------------------------------------------------


def _huge_header(path: Path) -> Path:
    with rasterio.open(
        path, "w", driver="GTiff", width=200_000, height=200_000, count=10, dtype="uint16",
        tiled=True, blockxsize=4096, blockysize=4096, BIGTIFF="YES", SPARSE_OK="TRUE",
    ):  # fmt: skip
        pass
    return path


def _truncated(make_raster, tmp_path: Path) -> Path:
    path = make_raster(600, 600, name="whole.tif", tiled=True, blockxsize=256, blockysize=256, compress="zstd")
    cut = tmp_path / "in.tif"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    path.unlink()
    return cut


def _write(tmp: Path, content: bytes) -> Path:
    (tmp / "in.tif").write_bytes(content)
    return tmp / "in.tif"


BAD_INPUTS = {
    "3 bands": (lambda make_raster, tmp: make_raster(32, 32, bands=3, name="in.tif"), RasterBandsError),
    "empty": (lambda make_raster, tmp: _write(tmp, b""), RasterReadError),
    "png": (lambda make_raster, tmp: _write(tmp, b"\x89PNG\r\n\x1a\n" + bytes(100)), RasterReadError),
    "truncated": (_truncated, RasterReadError),
    "200000 x 200000": (lambda make_raster, tmp: _huge_header(tmp / "in.tif"), RasterTooLargeError),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_fail_clearly_and_leave_nothing(load, make_raster, tmp_path, monkeypatch, case):
    build, error = BAD_INPUTS[case]
    src = Path(build(make_raster, tmp_path))
    model = load(**TINY)
    if error is not RasterReadError:
        # Decided from the header: no pixel may be read.
        monkeypatch.setattr(predict_module, "read_window", _must_not_read)
    with pytest.raises(error) as info:
        predict_file(model, src, tmp_path / "out.npy")
    assert isinstance(info.value, InputError)
    assert "\n" not in str(info.value) and "in.tif" in str(info.value)
    assert _no_leftovers(tmp_path) == []


def _must_not_read(*_args, **_kwargs):
    raise AssertionError("pixels were read")


def test_max_pixels_is_respected(load, make_raster, tmp_path):
    path = make_raster(100, 100)
    with pytest.raises(RasterTooLargeError, match="10,000 pixels"):
        predict_file(load(**TINY), path, tmp_path / "out.npy", PredictOptions(max_pixels=9_999))


def test_an_existing_output_survives_a_failure(load, make_raster, tmp_path):
    (tmp_path / "out.npy").write_bytes(b"old")
    src = make_raster(16, 16, bands=2)
    with pytest.raises(RasterBandsError):
        predict_file(load(**TINY), src, tmp_path / "out.npy")
    assert (tmp_path / "out.npy").read_bytes() == b"old"


def test_the_input_is_never_overwritten(load, make_raster):
    src = make_raster(16, 16)
    with pytest.raises(InputError, match="overwrite the input"):
        predict_file(load(**TINY), src, src)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_config_error(load, make_raster, tmp_path):
    with pytest.raises(ConfigError, match="CUDA"):
        predict_file(load(**TINY), make_raster(16, 16), tmp_path / "o.npy", PredictOptions(device="cuda"))
    result = predict_file(load(**TINY), make_raster(16, 16), tmp_path / "o.npy", PredictOptions(device="auto"))
    assert result.shape == (16, 16)


def test_peak_memory_does_not_grow_with_height(load, make_raster, tmp_path, monkeypatch):
    import tracemalloc

    # Statistics windows of 64 rows, as a tall raster gets from the real budget (4 M pixels): below it the
    # whole raster is one window, and its histogram's int64 copy grows with height by design.
    monkeypatch.setattr(predict_module, "STATS_STRIP_PIXELS", 96 * 64)
    model = load(in_channels=2, depth=1, start_filts=1, tile_size=64, tile_overlap=8)
    predict_file(model, make_raster(64, 96, bands=2, name="warm-up.tif"), tmp_path / "out.npy")  # lazy set-up
    peaks = []
    for height in (256, 1024):
        path = make_raster(height, 96, bands=2, name=f"h{height}.tif", tiled=True, blockxsize=16, blockysize=16)
        tracemalloc.start()
        predict_file(model, path, tmp_path / "out.npy")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] * 1.5  # 4x the rows, about the same peak of numpy buffers


@pytest.mark.parametrize("alongside", [True, False])
def test_pass_1_counts_alongside_the_decoding_exactly(make_raster, monkeypatch, alongside):
    # GIVEN a raster read in several pass-1 strips, with nodata, counted in a thread or inline
    data = np.random.default_rng(3).integers(100, 5000, (10, 300, 70)).astype("uint16")
    data[:, :9, :4] = 7
    path = make_raster(300, 70, data=data, nodata=7, tiled=True, blockxsize=32, blockysize=32)
    monkeypatch.setattr(predict_module, "STATS_STRIP_PIXELS", 64 * 70)
    monkeypatch.setattr(predict_module, "COUNT_ALONGSIDE_MIN_CPUS", 0 if alongside else 10**6)
    seen = []
    with open_raster(path) as ds:
        header = read_header(ds, path)
        # WHEN the p90s are computed, THEN they are numpy's over the valid pixels, and every strip was kept as read
        p90s = compute_percentiles(ds, header, range(1, 11), keep=lambda w, d, v: seen.append((w, d.copy(), v.copy())))
    valid = data[0] != 7
    assert p90s == [float(np.percentile(band[valid], 90)) for band in data]
    assert len(seen) > 2
    for window, kept, kept_valid in seen:
        rows, cols = window.toslices()
        assert np.array_equal(kept, data[:, rows, cols]) and np.array_equal(kept_valid, valid[rows, cols])


def test_a_failure_while_counting_stops_pass_1(make_raster, monkeypatch):
    path = make_raster(300, 70, tiled=True, blockxsize=32, blockysize=32)
    monkeypatch.setattr(predict_module, "STATS_STRIP_PIXELS", 64 * 70)
    monkeypatch.setattr(predict_module, "COUNT_ALONGSIDE_MIN_CPUS", 0)
    calls = []

    def keep(window, data, valid):
        calls.append(window)
        raise OSError("disk full")

    with open_raster(path) as ds, pytest.raises(OSError, match="disk full"):
        compute_percentiles(ds, read_header(ds, path), range(1, 11), keep=keep)
    assert len(calls) == 1  # no strip counted after the failure
    assert not any(t.name.startswith("rasterfn-count") for t in threading.enumerate())
