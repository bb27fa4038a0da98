"""The serving engine (OpenVINO) without torch: the shipped graphs, their sha256 checks and agreement with the
old service's mask (the engine choice: test_loading.py). Runs in the torch-free test venv too (``make test-serving``).
"""

from __future__ import annotations

import numpy as np
import pytest

from model.card import DEFAULT_CARD_PATH, load_card
from model.errors import CheckpointError, ConfigError
from model.network.engines.artefacts import graph_for, serving_graphs
from model.network.engines.loading import clear_engine_cache, load_inference_model
from model.options import PredictOptions
from model.predictor.predict import predict_file
from tests.fixtures.engines import AGREEMENT, TEST_TIF, copy_demo_card, old_service_mask


@pytest.fixture(autouse=True)
def fresh_engine_cache():
    clear_engine_cache()
    yield
    clear_engine_cache()


# -- the shipped graphs --------------------------------------------------------------------------------------


def test_demo_card_ships_verified_fp32_and_int8_graphs():
    # GIVEN the demo card WHEN its serving section is read
    card = load_card(DEFAULT_CARD_PATH)
    graphs = serving_graphs(card)
    # THEN both graphs are there, on the serving engine, with the agreement the export measured above the bars
    assert set(graphs) == {"fp32", "int8"}
    assert graphs["fp32"].engine == "openvino"
    assert graphs["fp32"].agreement["mask_agreement"] >= 0.9999
    assert graphs["fp32"].agreement["max_abs_score_diff"] <= 1e-4
    assert graphs["int8"].agreement["mask_agreement"] >= 0.995
    assert graph_for(card, "bf16") == graphs["fp32"]
    # AND the files are small enough to ship in the package
    sizes = [(DEFAULT_CARD_PATH.parent / f.file).stat().st_size for g in graphs.values() for f in g.files.values()]
    assert sum(sizes) < 8 * 1024**2


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_serving_engine_agrees_with_the_old_services_mask(precision, tmp_path):
    # GIVEN the demo model on the serving engine
    model = load_inference_model(engine="openvino", precision=precision)
    assert model.engine == "openvino" and model.precision == precision
    # WHEN it segments the README's test scene
    result = predict_file(model, TEST_TIF, tmp_path / "out.npy", PredictOptions(precision=precision))
    mask = np.load(result.out_path)
    # THEN its mask agrees with the old service's as closely as the issue asks
    expected = old_service_mask()
    assert mask.shape == expected.shape == (512, 512) and mask.dtype == np.float32
    assert (mask == expected).mean() >= AGREEMENT[precision]
    assert 0.05 < expected.mean() < 0.95


def test_tiled_raster_on_the_serving_engine_matches_its_one_tile_pass(make_raster, tmp_path):
    # GIVEN a raster of several tiles (tile 128 here) WHEN predicted in tiles and in one pass
    model = load_inference_model(engine="openvino")
    path = make_raster(300, 260)
    predict_file(model, path, tmp_path / "tiled.npy", PredictOptions(tile_size=128, tile_overlap=16))
    predict_file(model, path, tmp_path / "whole.npy", PredictOptions(tile_size=512))
    tiled, whole = np.load(tmp_path / "tiled.npy"), np.load(tmp_path / "whole.npy")
    # THEN the seams change little (the torch engine's tiling bar) and every pixel was written
    assert tiled.shape == (300, 260)
    assert (tiled == whole).mean() >= 0.995


def test_a_graph_file_with_the_wrong_sha256_is_refused(tmp_path):
    # GIVEN a copy of the demo card whose int8 weights lost one byte's worth of integrity
    card_path = copy_demo_card(tmp_path)
    weights = tmp_path / graph_for(load_card(card_path), "int8").files["bin"].file
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    # WHEN loaded THEN the sha256 check refuses it, naming the file; fp32 still loads
    with pytest.raises(CheckpointError, match=r"demo\.int8\.bin has sha256"):
        load_inference_model(card_path, engine="openvino", precision="int8")
    assert load_inference_model(card_path, engine="openvino", precision="fp32").engine == "openvino"


def test_a_missing_graph_file_is_a_clear_error(tmp_path):
    card_path = copy_demo_card(tmp_path)
    (tmp_path / graph_for(load_card(card_path), "fp32").files["xml"].file).unlink()
    with pytest.raises(CheckpointError, match="graph file not found"):
        load_inference_model(card_path, engine="openvino")


def test_a_model_loaded_for_one_precision_refuses_another():
    model = load_inference_model(engine="openvino", precision="int8")
    with pytest.raises(ConfigError, match="loaded for PRECISION=int8"):
        model.tile_engine(PredictOptions(precision="fp32"), one_tile=True)


def test_a_runner_gives_each_tile_of_a_call_its_own_scores_and_reuses_them_next_call():
    model = load_inference_model(engine="openvino", precision="fp32")
    runner = model.tile_engine(PredictOptions(precision="fp32"), one_tile=False)
    rng = np.random.default_rng(5)
    a, b = (rng.random((10, 64, 80), dtype=np.float32) for _ in range(2))
    # WHEN two tiles go in one call, THEN each has scores of its own (the same as alone)
    first, second = (s.copy() for s in runner([a, b]))
    assert not np.array_equal(first, second)
    (alone,) = runner([b])
    assert np.array_equal(alone, second)
    # AND the next call of the same shape reuses the arrays: the scores are the caller's until then
    (again,) = runner([a])
    assert again is alone and np.array_equal(again, first)
