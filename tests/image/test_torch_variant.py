"""The torch variant (RUNTIME_VENV=torch, ENGINE=torch: the exact and GPU mode) answers the old README's request
with the old service's mask, bit for bit."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from model.card import DEFAULT_CARD_PATH, load_card
from tests.fixtures.old_service import TEST_SCENE, old_service_inference
from tests.fixtures.servers import free_port
from tests.image.conftest import record_figure, run_container, wait_until_ready


@pytest.fixture(scope="module")
def torch_knative(torch_image, tmp_path_factory):
    port = free_port()
    tmp = tmp_path_factory.mktemp("torch-container")
    env = {"PORT": str(port), "WEBHOOK_TOKEN": "torch-variant-token"}
    with run_container(torch_image, tmp, env, user="10001:10001", tmpfs_mb=1024, memory="4g") as c:
        url = f"http://127.0.0.1:{port}"
        record_figure("torch variant ready", f"{wait_until_ready(f'{url}/health/readiness', c, timeout=180):.2f} s")
        yield c, url


def test_inference_is_the_old_service_mask_bit_for_bit(torch_knative, tmp_path):
    container, url = torch_knative
    expected = old_service_inference(TEST_SCENE, load_card(DEFAULT_CARD_PATH).weights_path)
    response = httpx.post(f"{url}/inference", files={"file": ("test-1.tif", TEST_SCENE.read_bytes())}, timeout=180)
    assert response.status_code == 200, (response.text, container.log_tail())
    (tmp_path / "output.npy").write_bytes(response.content)
    mask = np.load(tmp_path / "output.npy", allow_pickle=False)
    assert mask.dtype == expected.dtype and np.array_equal(mask, expected)
