"""PRECISION=auto: the fastest native precision the card verified on every held-out scene, else fp32."""

from __future__ import annotations

import logging

import pytest

import model.network.engines.openvino_engine as openvino_engine
from model.card import DEFAULT_CARD_PATH, load_card
from model.network.engines.artefacts import verified_agreement
from model.network.engines.loading import load_inference_model, resolve_engine
from model.network.engines.precision import AUTO_MIN_AGREEMENT, auto_precision, card_worst_agreement, choose_precision

VERIFIED = {"int8": 0.9997, "bf16": 0.99993, "fp32": 1.0}


@pytest.mark.parametrize(
    ("native", "worst", "expected"),
    [
        ({"int8", "bf16"}, VERIFIED, "bf16"),  # int8 is faster but misses the bar on its worst scene
        ({"int8"}, VERIFIED, "fp32"),  # bf16 not native here
        (set(), VERIFIED, "fp32"),
        ({"int8", "bf16"}, {**VERIFIED, "int8": AUTO_MIN_AGREEMENT}, "int8"),  # the bar itself qualifies
        ({"bf16"}, {**VERIFIED, "bf16": AUTO_MIN_AGREEMENT - 1e-6}, "fp32"),  # one scene below: not auto
        ({"bf16"}, {"bf16": None, "fp32": 1.0}, "fp32"),  # not verified by the card
    ],
)
def test_choose_precision(native, worst, expected):
    precision, why = choose_precision(worst, native)
    assert precision == expected and why.startswith(expected)


def test_the_demo_card_verified_bf16_on_every_scene_and_int8_not():
    card = load_card(DEFAULT_CARD_PATH)
    worst = card_worst_agreement(card)
    assert worst["bf16"] is not None and worst["bf16"] >= AUTO_MIN_AGREEMENT
    assert worst["int8"] is not None and worst["int8"] < AUTO_MIN_AGREEMENT
    assert verified_agreement(card, "bf16")["scenes"] == verified_agreement(card, "fp32")["scenes"] == 8


def test_the_torch_engine_runs_auto_as_fp32():
    assert auto_precision(load_card(DEFAULT_CARD_PATH), "torch")[0] == "fp32"


@pytest.mark.parametrize(("capabilities", "expected"), [(("FP32", "BF16", "INT8"), "bf16"), (("FP32", "INT8"), "fp32")])
def test_auto_follows_the_cpu(monkeypatch, capabilities, expected):
    monkeypatch.setattr(openvino_engine, "cpu_capabilities", lambda: capabilities)
    assert auto_precision(load_card(DEFAULT_CARD_PATH), "openvino")[0] == expected


def test_loading_auto_loads_the_chosen_precision_and_logs_it(caplog):
    card = load_card(DEFAULT_CARD_PATH)
    assert resolve_engine("auto", card, "auto") == "openvino"
    with caplog.at_level(logging.INFO, logger="model.network.engines.loading"):
        model = load_inference_model(DEFAULT_CARD_PATH, engine="openvino", precision="auto")
    expected = auto_precision(card, "openvino")[0]
    assert model.precision == expected
    assert f"PRECISION=auto on openvino: {expected}" in caplog.text
