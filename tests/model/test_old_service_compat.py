"""``predict_file`` on data/test-1.tif gives exactly the array the old Flask service returned.

The old service's inference is re-implemented here from its description, independently of ``model.predict``:
read every band with rasterio, per band ``np.clip(band, 0, p90) / p90`` with ``p90 = np.percentile(band, 90)``
in float64, cast to float32, one forward pass of the whole image (autograd on, as it was), ``(out > 0.5)
.float()`` and squeeze to (512, 512).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch

from model.card import DEFAULT_CARD_PATH, load_card
from model.checkpoint import build_model
from model.predict import predict_file
from model.unet import UNet
from tests.fixtures.paths import REPO_ROOT

TEST_SCENE = REPO_ROOT / "data" / "test-1.tif"


def old_service_inference(tif: Path, weights: Path) -> np.ndarray:
    net = UNet(num_classes=1, in_channels=10, depth=5, start_filts=16, up_mode="transpose", merge_mode="concat")
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in checkpoint["model_state_dict"].items()})
    net.eval()
    with rasterio.open(tif) as src:
        image = src.read()
    bands = []
    for band in image:
        p90 = np.percentile(band, 90)
        bands.append(np.clip(band, 0, p90) / p90)
    x = torch.from_numpy(np.stack(bands).astype(np.float32)).unsqueeze(0)
    out = net(x)
    return (out > 0.5).float().squeeze().numpy()


def test_predict_file_matches_the_old_service_bit_for_bit(tmp_path):
    # GIVEN the demo weights and the README's test scene
    card = load_card(DEFAULT_CARD_PATH)
    expected = old_service_inference(TEST_SCENE, card.weights_path)
    # WHEN the product segments it
    result = predict_file(build_model(card), TEST_SCENE, tmp_path / "test-1.npy")
    mask = np.load(result.out_path)
    # THEN the .npy is the old service's array: same shape, dtype and every value
    assert expected.shape == (512, 512)
    assert mask.shape == expected.shape
    assert mask.dtype == expected.dtype == np.float32
    assert np.array_equal(mask, expected)
    # AND the scene is not trivial: both classes are present
    assert 0.05 < expected.mean() < 0.95
