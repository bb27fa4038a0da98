"""The committed demo weights: checksummed, in the old format, and as good as their card says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.card import DEFAULT_CARD_PATH, load_card
from model.network.checkpoint import build_model, sha256_file
from model.predictor.predict import predict_file
from model.training.synthetic import make_scene, write_scene_tif

QUALITY_BAR = 0.90


@pytest.fixture(scope="module")
def card():
    return load_card(DEFAULT_CARD_PATH)


def test_card_checksum_matches_the_weights_file(card):
    assert sha256_file(card.weights_path) == card.weights_sha256


def test_weights_are_an_old_format_fp16_checkpoint(card):
    raw = torch.load(card.weights_path, map_location="cpu", weights_only=True)
    assert set(raw) == {"model_state_dict"}
    assert {t.dtype for t in raw["model_state_dict"].values()} == {torch.float16}


def test_card_records_how_the_weights_were_made_and_their_quality(card):
    training, quality = card.extra["training"], card.extra["quality"]
    assert training["command"] == "rasterfn train-demo"
    assert training["generator"] == "model.training.synthetic.make_scene"
    assert quality["heldout_iou"] >= QUALITY_BAR
    first, stop = training["scene_seeds"]
    assert not set(quality["heldout_seeds"]) & set(range(first, stop)), "held-out seeds were trained on"


def test_heldout_iou_recomputed_through_the_product_inference(card, tmp_path):
    # GIVEN the first two held-out scenes of the card, as GeoTIFFs
    loaded = build_model(card)
    inter = union = 0
    for seed in card.extra["quality"]["heldout_seeds"][:2]:
        image, label = make_scene(seed)
        tif = write_scene_tif(tmp_path / f"{seed}.tif", image)
        # WHEN the product segments them
        result = predict_file(loaded, tif, tmp_path / f"{seed}.npy")
        mask = np.load(result.out_path).astype(bool)
        truth = label.astype(bool)
        inter += int((mask & truth).sum())
        union += int((mask | truth).sum())
    # THEN the canopy IoU clears the bar
    assert inter / union >= QUALITY_BAR
