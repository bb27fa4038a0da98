"""The Lambda and Knative paths, the CLI and MODEL_URI on the serving engine, without torch: INIT and readiness
import no torch. Runs in the torch-free test venv too (``make test-serving``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

from handler.runtime import build_runtime
from handler.settings import Settings
from handler.storage import Storage
from model.card import DEFAULT_CARD_PATH, load_card
from model.network.engines.artefacts import graph_for
from model.network.engines.loading import clear_engine_cache
from tests.fixtures.engines import AGREEMENT, TEST_TIF, copy_demo_card, old_service_mask
from tests.fixtures.paths import REPO_ROOT


@pytest.fixture(autouse=True)
def fresh_engine_cache():
    clear_engine_cache()
    yield
    clear_engine_cache()


# -- MODEL_URI -----------------------------------------------------------------------------------------------


def test_model_uri_fetches_the_graph_files_beside_the_checkpoint(tmp_path, moto_endpoint, s3_client, make_bucket):
    # GIVEN the export's folder uploaded under models/, and an image card whose graph files are not beside it
    from handler.model_source import load_runtime_model

    bucket = make_bucket()
    card = load_card(DEFAULT_CARD_PATH)
    for name in [card.weights_file] + [f.file for f in graph_for(card, "int8").files.values()]:
        s3_client.put_object(Bucket=bucket, Key=f"models/{name}", Body=(DEFAULT_CARD_PATH.parent / name).read_bytes())
    image = tmp_path / "image"
    image.mkdir()
    card_path = copy_demo_card(image, with_graphs=False)
    settings = Settings(
        model_card=card_path,
        model_uri=f"s3://{bucket}/models/{card.weights_file}",
        model_cache_dir=tmp_path / "cache",
        precision="int8",
        engine="openvino",
    )
    # WHEN the runtime model loads
    model = load_runtime_model(settings, Storage.from_defaults(max_attempts=1))
    # THEN the int8 graph came from S3 into the cache, named by checksum, and verified
    assert model.engine == "openvino" and model.sha256 == graph_for(card, "int8").files["bin"].sha256
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        f"{f.sha256}{Path(f.file).suffix}" for f in graph_for(card, "int8").files.values()
    )


# -- the Lambda and Knative paths on the serving engine ------------------------------------------------------


def _child(code: str, **env: str) -> dict:
    environ = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "ENGINE": "auto", **env}
    environ.pop("MODEL_CARD", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lambda_init_loads_the_serving_engine_without_importing_torch():
    # WHEN Lambda's INIT imports the handler with the image's defaults (ENGINE=auto, the demo card)
    state = _child(
        "import json, sys; import handler.lambda_function as fn; "
        "print(json.dumps({'engine': fn.RUNTIME.model.engine, 'torch': 'torch' in sys.modules}))"
    )
    # THEN the model is ready on the serving engine and torch was never imported
    assert state == {"engine": "openvino", "torch": False}


def test_knative_readiness_loads_the_serving_engine_without_importing_torch():
    # GIVEN the Knative function started as in the image (WEBHOOK_TOKEN: it refuses an open event route)
    # WHEN it is ready THEN its model worker runs the openvino graph and the process never imported torch
    environ = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "ENGINE": "auto", "WEBHOOK_TOKEN": "s3cr3t"}
    environ.pop("MODEL_CARD", None)
    code = (
        "import json, sys\n"
        "from handler.knative import new\n"
        "f = new(); f.start({}); f.loader.wait()\n"
        "print(json.dumps({'ready': f.ready()[0], 'torch': 'torch' in sys.modules}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"ready": True, "torch": False}
    graph_sha = graph_for(load_card(DEFAULT_CARD_PATH), "fp32").files["bin"].sha256
    assert f"(sha256 {graph_sha[:12]}) on openvino" in proc.stderr


@pytest.fixture
def serving_runtime(moto_endpoint, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    settings = Settings(tmp_dir=work, engine="openvino", precision="int8", webhook_token="s3cr3t")
    return build_runtime(settings, Storage.from_defaults(max_attempts=1))


def test_lambda_sqs_batch_on_the_serving_engine(
    serving_runtime, monkeypatch, make_bucket, upload_raster, s3_client, make_sqs_event, make_s3_event
):
    # GIVEN the Lambda handler answering with an int8 serving runtime, and an upload
    import handler.lambda_function as lambda_function
    from handler.local.lambda_context import make_context

    monkeypatch.setattr(lambda_function, "get_runtime", lambda: serving_runtime)
    bucket = make_bucket()
    put = upload_raster(bucket, "in/scene.tif", height=96, width=80)
    # WHEN its S3 notification arrives through SQS
    notification = make_s3_event("in/scene.tif", bucket=bucket, size=None, eTag=put["ETag"].strip('"'))
    reply = lambda_function.lambda_handler(make_sqs_event(notification), make_context())
    # THEN no record failed and the mask is beside the input
    assert reply == {"batchItemFailures": []}
    body = s3_client.get_object(Bucket=bucket, Key="in/scene.npy")["Body"].read()
    mask = np.load(io.BytesIO(body))
    assert mask.shape == (96, 80) and set(np.unique(mask)) <= {0.0, 1.0}


def test_knative_inference_on_the_serving_engine(serving_runtime):
    # GIVEN the Knative function with the serving runtime WHEN the old README's upload arrives
    from func_python.http import ASGIApplication

    from handler.knative import Function

    function = Function(load=lambda: serving_runtime, settings=serving_runtime.settings)

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=ASGIApplication(function))
        async with httpx.AsyncClient(transport=transport, base_url="http://fn") as client:
            function.start({})
            return await client.post("/inference", files={"file": ("test-1.tif", TEST_TIF.read_bytes())})

    response = anyio.run(main)
    # THEN the answer is the 512 x 512 mask, within the int8 bar of the old service's
    assert response.status_code == 200, response.text
    mask = np.load(io.BytesIO(response.content))
    assert (mask == old_service_mask()).mean() >= AGREEMENT["int8"]


def test_rasterfn_predict_takes_engine_and_precision_flags(tmp_path, capsys):
    from handler.cli import main
    from handler.settings import get_settings

    get_settings.cache_clear()
    code = main(["predict", str(TEST_TIF), "-o", str(tmp_path / "o.npy"), "--engine", "openvino",
                 "--precision", "int8", "--no-progress"])  # fmt: skip
    assert code == 0
    assert "on openvino int8" in capsys.readouterr().out
    assert (np.load(tmp_path / "o.npy") == old_service_mask()).mean() >= AGREEMENT["int8"]
