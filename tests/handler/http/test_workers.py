"""handler/http/workers.py: the Knative app over a real pool of worker processes. A file that aborts its
worker (a real SIGABRT, tests/fixtures/crash.py) is answered 422 or refused with a marker; the server stays
healthy and the next request is served by a replacement worker."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate
from starlette.testclient import TestClient

from handler.http.app import create_app
from handler.http.metrics import create_metrics
from handler.http.workers import WorkerPool
from handler.settings import Settings
from model.card import load_card
from model.network.checkpoint import build_model
from model.options import PredictOptions
from model.predictor.predict import predict_file
from tests.fixtures.crash import CRASH_MARKER, crash_on_marker

TOKEN = "pool-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def pool_app(moto_endpoint, tiny_model_card, tmp_path):
    """``(TestClient, pool)``: the app over one worker process that aborts on the crash marker."""
    work = tmp_path / "work"
    work.mkdir()
    settings = Settings(model_card=tiny_model_card, tmp_dir=work, webhook_token=TOKEN, max_queued_requests=2)
    pool = WorkerPool(settings, init=crash_on_marker)
    pool.start()
    app = create_app(settings, pool, metrics=create_metrics())
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, pool
    pool.stop()


def wait_for_replacement(pool: WorkerPool, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while pool._idle.qsize() < pool.size and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_crashing_upload_is_422_and_the_server_serves_the_next_one(pool_app, make_raster, tiny_model_card, tmp_path):
    client, pool = pool_app
    pool.wait()
    assert client.get("/healthz").status_code == 200
    # WHEN an upload aborts the process decoding it
    bomb = b"II*\x00" + CRASH_MARKER
    response = client.post("/inference", files={"file": ("bomb.tif", bomb)})
    # THEN it alone is refused, cleanly
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "unreadable raster" and "SIGABRT" in response.json()["detail"]
    assert pool.replaced == 1
    # AND the server is healthy and answers the next upload correctly, from a new worker
    assert client.get("/healthz").status_code == 200
    scene = make_raster(64, 64, seed=8)
    good = client.post("/inference", files={"file": ("s.tif", scene.read_bytes())})
    assert good.status_code == 200, good.text
    expected = tmp_path / "expected.npy"
    predict_file(build_model(load_card(tiny_model_card)), scene, expected, PredictOptions())
    np.testing.assert_array_equal(np.load(io.BytesIO(good.content)), np.load(expected))
    metrics = client.get("/metrics").text
    assert 'rasterfn_rejected_inputs_total{reason="crashed"} 1.0' in metrics


def test_an_object_that_crashes_its_worker_gets_an_error_marker(pool_app, make_bucket, s3_client, upload_raster):
    client, pool = pool_app
    bucket = make_bucket()
    upload_raster(bucket, "in/bomb.tif", body=b"II*\x00" + CRASH_MARKER)
    upload_raster(bucket, "in/good.tif")
    # WHEN one event names the bomb and a good scene
    event = {
        "Records": [
            {"s3": {"bucket": {"name": bucket}, "object": {"key": k}}, "eventName": "ObjectCreated:Put"}
            for k in ("in/bomb.tif", "in/good.tif")
        ]
    }
    response = client.post("/", json=event, headers=AUTH)
    # THEN the bomb is rejected with a marker (no retry storm), the good one written, the server alive
    assert response.status_code == 200, response.text
    assert response.json()["counts"] == {"rejected": 1, "written": 1}
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key="in/bomb.error.json")["Body"].read())
    assert doc["error"] == "WorkerCrashedError" and "SIGABRT" in doc["message"]
    assert s3_client.head_object(Bucket=bucket, Key="in/good.npy")["ContentLength"] > 0
    wait_for_replacement(pool)
    assert client.get("/healthz").status_code == 200
    # AND MinIO's retry of the same event is a duplicate for both
    again = client.post("/", json=event, headers=AUTH)
    assert again.json()["counts"] == {"duplicate": 2}


def test_a_worker_answers_the_cog_of_an_upload(pool_app, make_raster, tiny_model_card, tmp_path):
    # GIVEN the app over a worker process, and a client asking for the COG
    client, pool = pool_app
    pool.wait()
    scene = make_raster(64, 64, seed=8)
    # WHEN the upload is predicted in the worker
    response = client.post(
        "/inference", files={"file": ("s.tif", scene.read_bytes())}, headers={"accept": "image/tiff"}
    )
    # THEN the answer is the COG the worker wrote: valid, with the .npy's classes
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="s.mask.TIF"'
    cog = tmp_path / "answer.tif"
    cog.write_bytes(response.content)
    assert cog_validate(str(cog))[0]
    expected = tmp_path / "expected.npy"
    predict_file(build_model(load_card(tiny_model_card)), scene, expected, PredictOptions())
    with rasterio.open(cog) as out:
        np.testing.assert_array_equal(out.read(1), np.load(expected).astype(np.uint8))
    assert list((tmp_path / "work").iterdir()) == []
