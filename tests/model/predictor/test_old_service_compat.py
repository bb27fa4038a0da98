"""``predict_file`` on data/test-1.tif gives exactly the array the old Flask service returned.

The old service's inference is re-implemented in tests/fixtures/old_service.py from its description.
"""

from __future__ import annotations

import numpy as np

from model.card import DEFAULT_CARD_PATH, load_card
from model.network.checkpoint import build_model
from model.predictor.predict import predict_file
from tests.fixtures.old_service import TEST_SCENE, old_service_inference


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
