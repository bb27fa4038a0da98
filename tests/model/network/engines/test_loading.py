"""model/network/engines/loading.py: which engine runs a card, and each model loaded once per process.

Runs in the torch-free test venv too (``make test-serving``): torch is only ever asked about, never imported.
"""

from __future__ import annotations

import json
import sys

import pytest

from model.card import load_card
from model.errors import ConfigError
from model.network.engines import loading
from model.network.engines.loading import clear_engine_cache, load_inference_model, resolve_engine
from tests.fixtures.engines import copy_demo_card


@pytest.fixture(autouse=True)
def fresh_engine_cache():
    clear_engine_cache()
    yield
    clear_engine_cache()


# -- choosing the engine -------------------------------------------------------------------------------------


def card_with_only(monkeypatch, folder, torch_installed: bool, graphs: bool):
    """A demo card copy (without its serving section unless ``graphs``), with openvino and maybe torch installed."""
    monkeypatch.setattr(loading, "installed", lambda pkg: pkg == "openvino" or (pkg == "torch" and torch_installed))
    card_path = copy_demo_card(folder, with_graphs=graphs)
    if not graphs:
        raw = json.loads(card_path.read_text())
        del raw["serving"]
        card_path.write_text(json.dumps(raw))
    return load_card(card_path)


@pytest.mark.parametrize(
    ("engine", "precision", "device", "torch_installed", "graphs", "expected"),
    [
        ("auto", "fp32", "cpu", True, True, "openvino"),
        ("auto", "int8", "cpu", False, True, "openvino"),
        ("auto", "fp32", "auto", False, True, "openvino"),
        ("auto", "fp32", "cuda", True, True, "torch"),
        ("auto", "fp32", "cpu", True, False, "torch"),
        ("torch", "bf16", "cpu", True, True, "torch"),
        ("openvino", "bf16", "cpu", False, True, "openvino"),
    ],
)
def test_engine_choice(monkeypatch, tmp_path, engine, precision, device, torch_installed, graphs, expected):
    card = card_with_only(monkeypatch, tmp_path, torch_installed, graphs)
    assert resolve_engine(engine, card, precision, device) == expected


@pytest.mark.parametrize(
    ("engine", "precision", "device", "torch_installed", "graphs", "message"),
    [
        ("torch", "int8", "cpu", True, True, "PRECISION=int8 needs ENGINE=openvino"),
        ("torch", "fp32", "cpu", False, True, "ENGINE=torch but torch is not installed"),
        ("openvino", "fp32", "cuda", True, True, "DEVICE=cuda needs ENGINE=torch"),
        ("openvino", "fp32", "cpu", True, False, "run `rasterfn export`"),
        ("auto", "fp32", "cpu", False, False, "no engine can run card"),
        ("auto", "int8", "cpu", True, False, "PRECISION=int8 needs ENGINE=openvino"),
        ("onnx", "fp32", "cpu", True, True, "engine must be one of"),
    ],
)
def test_impossible_engine_choices_fail_clearly(
    monkeypatch, tmp_path, engine, precision, device, torch_installed, graphs, message
):
    card = card_with_only(monkeypatch, tmp_path, torch_installed, graphs)
    with pytest.raises(ConfigError, match=message):
        resolve_engine(engine, card, precision, device)


# -- loading once per process --------------------------------------------------------------------------------


def test_a_model_is_loaded_once_per_card_and_precision():
    # GIVEN the demo card WHEN loaded twice on the serving engine THEN the second load is the first model
    first = load_inference_model(engine="openvino", precision="fp32")
    assert load_inference_model(engine="openvino", precision="fp32") is first
    # AND another precision is another model
    assert load_inference_model(engine="openvino", precision="int8") is not first


def test_clearing_the_cache_loads_the_model_again():
    first = load_inference_model(engine="openvino")
    clear_engine_cache()
    assert load_inference_model(engine="openvino") is not first


def test_choosing_an_engine_never_imports_torch(monkeypatch, tmp_path):
    card = load_card(copy_demo_card(tmp_path, with_graphs=True))
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert resolve_engine("auto", card, "fp32", "cpu") == "openvino"
    assert "torch" not in sys.modules
