"""handler.http.app: every route and every error code, in process (Starlette TestClient, httpx ASGI).

The model is a tiny seeded random U-Net (tests/fixtures/models.py); expected arrays come from ``predict_file`` on the
same file with the same options, so the HTTP layer is checked to add and lose nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote

import httpx
import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate
from starlette.testclient import TestClient

import handler.http.app as http_app
import handler.isolation as isolation
from handler.errors import BusyError, EventError, MediaTypeError, TransientError, UploadError
from handler.http.app import create_app
from handler.http.errors import map_error
from handler.http.metrics import create_metrics
from handler.http.slots import InferenceSlots
from handler.knative import RuntimeLoader
from handler.runtime import Runtime
from handler.settings import Settings
from handler.storage import Storage
from model.card import load_card
from model.errors import ConfigError, InputError, RasterReadError, RasterTooLargeError
from model.io.cog import SCORE_STEPS, score_of
from model.network.checkpoint import build_model
from model.predictor.predict import predict_file
from tests.fixtures.hostile_tiffs import complex_file
from tests.fixtures.stac_schemas import validate_item

TOKEN = "s3cret-webhook-token"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small seeded random U-Net (depth 3, 4 filters, 64-pixel tiles): fast on 2 CPU cores."""
    from tests.fixtures.models import write_random_card

    card = write_random_card(
        tmp_path_factory.mktemp("tiny-model"), seed=3, depth=3, start_filts=4, tile_size=64, tile_overlap=8, name="tiny"
    )
    return build_model(load_card(card))


@pytest.fixture
def tmp_dir(tmp_path) -> Path:
    path = tmp_path / "fn-tmp"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def offline_storage() -> Storage:
    """For tests that never reach S3: one client (they are slow to make) on a port where nothing listens."""
    return Storage.from_defaults("http://127.0.0.1:9")


@pytest.fixture
def make_runtime(tiny_model, tmp_dir, offline_storage, request):
    """``make_runtime(**settings)``: a Runtime with the tiny model and TMPDIR=tmp_dir; S3 is moto's when the
    test uses ``moto_endpoint``, else nowhere."""

    def make(**settings: Any) -> Runtime:
        online = "moto_endpoint" in request.fixturenames
        if not settings.get("webhook_token"):
            settings.setdefault("allow_unauthenticated_events", True)  # the event route's own tests set a token
        return Runtime(
            settings=Settings(model_card=tiny_model.card.path, tmp_dir=tmp_dir, **settings),
            model=tiny_model,
            storage=Storage.from_defaults() if online else offline_storage,
        )

    return make


def build_app(runtime: Runtime, slots: InferenceSlots | None = None):
    loader = RuntimeLoader(lambda: runtime)
    loader.start()
    return create_app(runtime.settings, loader, metrics=create_metrics(), slots=slots)


@pytest.fixture
def client(make_runtime):
    """``client(**settings) -> TestClient`` on a fresh app."""

    def make(**settings: Any) -> TestClient:
        return TestClient(build_app(make_runtime(**settings)), raise_server_exceptions=False)

    return make


@pytest.fixture
def scene(make_raster) -> Path:
    return make_raster(64, 80, name="scene.tif", seed=5)


def expected(runtime_or_model, src: Path, tmp_path: Path, output: str = "mask") -> np.ndarray:
    model = runtime_or_model
    dst = tmp_path / f"expected-{output}.npy"
    from handler.runtime import options_from_settings

    options = replace(options_from_settings(Settings()), output=output)
    predict_file(model, src, dst, options)
    return np.load(dst)


def assert_error(response: httpx.Response, status: int, error: str, detail: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    if detail is not None:
        assert detail in body["detail"], body["detail"]
    return body


# --- POST /inference ----------------------------------------------------------------------------------------


def test_inference_multipart_returns_the_npy_of_predict_file(client, scene, tiny_model, tmp_path, tmp_dir):
    # GIVEN the old API's request: a multipart field "file"
    with client() as c, scene.open("rb") as fh:
        # WHEN it is posted
        response = c.post("/inference", files={"file": ("scene.tif", fh, "image/tiff")})
    # THEN the body is the .npy predict_file writes, as an attachment named after the upload
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="scene.npy"'
    array = np.load(io.BytesIO(response.content))
    np.testing.assert_array_equal(array, expected(tiny_model, scene, tmp_path))
    assert array.shape == (64, 80) and array.dtype == np.float32
    # AND no temp file is left behind
    assert list(tmp_dir.iterdir()) == []


@pytest.mark.parametrize("content_type", ["image/tiff", "application/octet-stream"])
def test_inference_raw_body(client, scene, tiny_model, tmp_path, content_type):
    with client() as c:
        response = c.post(
            "/inference",
            content=scene.read_bytes(),
            headers={"content-type": content_type, "content-disposition": 'attachment; filename="t.tif"'},
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="t.npy"'
    np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), expected(tiny_model, scene, tmp_path))


@pytest.mark.parametrize(("output", "dtype"), [("mask", "float32"), ("mask-uint8", "uint8"), ("score", "float32")])
def test_inference_output_modes(client, scene, tiny_model, tmp_path, output, dtype):
    with client() as c:
        response = c.post(f"/inference?output={output}", files={"file": ("scene.tif", scene.read_bytes())})
    assert response.status_code == 200, response.text
    array = np.load(io.BytesIO(response.content))
    assert array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(array, expected(tiny_model, scene, tmp_path, output))


def test_inference_default_output_follows_settings(client, scene):
    with client(output_mode="mask-uint8") as c:
        response = c.post("/inference", files={"file": ("scene.tif", scene.read_bytes())})
    assert np.load(io.BytesIO(response.content)).dtype == np.uint8


def test_inference_unknown_output_is_400(client, scene):
    with client() as c:
        response = c.post("/inference?output=probabilities", files={"file": ("s.tif", scene.read_bytes())})
    assert_error(response, 400, "bad request", "output must be one of")


def test_inference_without_file_field_is_400(client, tmp_dir):
    with client() as c:
        response = c.post("/inference", data={"note": "no file here"}, files={"other": ("x.txt", b"x")})
    assert_error(response, 400, "bad request", "no 'file' field")
    assert list(tmp_dir.iterdir()) == []


def test_inference_empty_body_is_400(client):
    with client() as c:
        response = c.post("/inference", content=b"", headers={"content-type": "image/tiff"})
    assert_error(response, 400, "bad request", "empty")


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/png"])
def test_inference_wrong_content_type_is_415(client, scene, content_type):
    with client() as c:
        response = c.post("/inference", content=scene.read_bytes(), headers={"content-type": content_type})
    assert_error(response, 415, "unsupported media type", content_type)


def test_inference_unreadable_raster_is_422_with_the_input_error_message(client, tiny_model, tmp_path, tmp_dir):
    # GIVEN a file that is not a raster, and the message predict_file gives for it under the same name
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff at all, just text")
    with pytest.raises(InputError) as info:
        predict_file(tiny_model, broken, tmp_path / "broken.npy")
    # WHEN it is uploaded
    with client() as c:
        response = c.post("/inference", files={"file": ("broken.tif", broken.read_bytes())})
    # THEN 422 with exactly that message (naming the upload, not a temp file), nothing left behind
    body = assert_error(response, 422, "unreadable raster")
    assert body["detail"] == str(info.value)
    assert "broken.tif" in body["detail"] and "upload-" not in body["detail"]
    assert list(tmp_dir.iterdir()) == []


def test_inference_raster_with_too_few_bands_is_422(client, make_raster):
    three_bands = make_raster(32, 32, bands=3, name="rgb.tif")
    with client() as c:
        response = c.post("/inference", files={"file": ("rgb.tif", three_bands.read_bytes())})
    assert_error(response, 422, "unreadable raster", "rgb.tif")


def test_inference_complex_raster_is_422_in_one_line(client, tmp_path):
    slc = complex_file(tmp_path / "slc.tif")
    with client() as c:
        response = c.post("/inference", files={"file": ("slc.tif", slc.read_bytes())})
    body = assert_error(response, 422, "unreadable raster", "slc.tif: its band 1 holds complex-valued samples")
    assert "\n" not in body["detail"]


def test_inference_too_many_pixels_is_413(client, scene):
    with client(max_pixels=1000) as c:
        response = c.post("/inference", files={"file": ("scene.tif", scene.read_bytes())})
    assert_error(response, 413, "too large")


def test_inference_declared_length_over_the_limit_is_413_before_reading(make_runtime):
    app = build_app(make_runtime(max_input_bytes=10_000))
    pulled = []

    async def body():
        for _ in range(1000):
            pulled.append(1)
            yield b"\0" * 1000

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fn") as c:
            return await c.post(
                "/inference",
                content=body(),
                headers={"content-type": "image/tiff", "content-length": str(1_000_000)},
            )

    response = asyncio.run(main())
    assert_error(response, 413, "too large", "1000000 bytes")
    assert pulled == []


@pytest.mark.parametrize("multipart", [False, True])
def test_inference_streamed_body_over_the_limit_is_413_and_stops_reading(make_runtime, tmp_dir, multipart):
    # GIVEN a limit of 16 kB and a 4 MB chunked body (no Content-Length), counted as it is consumed
    app = build_app(make_runtime(max_input_bytes=16_000))
    chunk, chunks = 1_000, 4_000
    consumed = 0
    boundary = "b0undary"

    async def body():
        nonlocal consumed
        if multipart:
            consumed += 1
            disposition = 'Content-Disposition: form-data; name="file"; filename="b.tif"'
            yield f"--{boundary}\r\n{disposition}\r\n\r\n".encode()
        for _ in range(chunks):
            consumed += 1
            yield b"\1" * chunk

    content_type = f"multipart/form-data; boundary={boundary}" if multipart else "image/tiff"

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fn") as c:
            return await c.post("/inference", content=body(), headers={"content-type": content_type})

    # WHEN it is posted
    response = asyncio.run(main())
    # THEN 413, after reading about the limit, not the whole body; no temp file remains
    assert_error(response, 413, "too large", "MAX_INPUT_BYTES")
    assert consumed <= 16_000 // chunk + 3
    assert consumed < chunks // 100
    assert list(tmp_dir.iterdir()) == []


def test_inference_busy_beyond_the_queue_is_503_with_retry_after(make_runtime, scene):
    # GIVEN one slot, no queue, and the slot held
    slots = InferenceSlots(max_concurrent=1, max_queued=0, retry_after_s=3)
    app = build_app(make_runtime(), slots=slots)

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fn") as c, slots.acquire():
            # WHEN a request arrives
            return await c.post("/inference", files={"file": ("scene.tif", scene.read_bytes())})

    response = asyncio.run(main())
    # THEN it is refused at once with a retry hint
    assert_error(response, 503, "busy", "MAX_QUEUED_REQUESTS=0")
    assert response.headers["retry-after"] == "3"


def test_five_concurrent_inferences_all_succeed_one_at_a_time(make_runtime, scene, tiny_model, tmp_path, monkeypatch):
    # GIVEN MAX_CONCURRENT_INFERENCES=1 and room for the other four in the queue; the predictor counts overlap
    runtime = make_runtime(max_concurrent_inferences=1, max_queued_requests=4)
    app = build_app(runtime)
    lock, running, peak = threading.Lock(), [0], [0]
    real_predict = isolation.predict_file

    def counting_predict(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return real_predict(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(isolation, "predict_file", counting_predict)
    data = scene.read_bytes()

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fn", timeout=120) as c:
            return await asyncio.gather(*(c.post("/inference", files={"file": (f"s{i}.tif", data)}) for i in range(5)))

    # WHEN five requests arrive at once
    responses = asyncio.run(main())
    # THEN all five succeed with the right array, and never two inferences ran at once
    want = expected(tiny_model, scene, tmp_path)
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert response.headers["content-disposition"] == f'attachment; filename="s{i}.npy"'
        np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), want)
    assert peak[0] == 1


def test_unexpected_error_is_500_without_internals(client, scene, monkeypatch, tmp_dir):
    def explode(*_args, **_kwargs):
        raise RuntimeError("secret internals at /opt/venv/site-packages/x.py")

    monkeypatch.setattr(isolation, "predict_file", explode)
    with client() as c:
        response = c.post("/inference", files={"file": ("scene.tif", scene.read_bytes())})
    assert_error(response, 500, "internal error", "see the function's logs")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert list(tmp_dir.iterdir()) == []


def test_a_request_before_the_model_is_loaded_waits_for_it(make_runtime, scene):
    # GIVEN a model still loading
    runtime = make_runtime()
    release = threading.Event()

    def slow_load() -> Runtime:
        release.wait(30)
        return runtime

    loader = RuntimeLoader(slow_load)
    loader.start()
    app = create_app(runtime.settings, loader)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 503
        # WHEN the load finishes while a request waits THEN the request is answered
        threading.Timer(0.2, release.set).start()
        response = c.post("/inference", files={"file": ("scene.tif", scene.read_bytes())})
        assert response.status_code == 200
        assert c.get("/healthz").json()["status"] == "ok"


def test_a_model_that_failed_to_load_gives_500_misconfigured(make_runtime, scene):
    def broken_load() -> Runtime:
        raise ConfigError("model card /x/card.json is invalid: bad tile_size")

    loader = RuntimeLoader(broken_load)
    loader.start()
    app = create_app(make_runtime().settings, loader)
    with TestClient(app) as c:
        response = c.post("/inference", files={"file": ("scene.tif", scene.read_bytes())})
        assert_error(response, 500, "misconfigured", "bad tile_size")
        health = c.get("/healthz")
        assert health.status_code == 503 and "bad tile_size" in health.json()["detail"]


# --- GET /healthz, GET /metrics, unknown routes -------------------------------------------------------------


def test_healthz_is_ok_once_loaded(client):
    with client() as c:
        response = c.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "detail": "ready: model tiny"}


def test_metrics_count_requests_bytes_rejections_and_inference_time(client, scene):
    data = scene.read_bytes()
    with client(max_input_bytes=len(data)) as c:
        assert c.post("/inference", files={"file": ("scene.tif", data)}).status_code == 200
        assert c.post("/inference", content=data + b"x", headers={"content-type": "image/tiff"}).status_code == 413
        assert c.post("/inference", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
        response = c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    for line in (
        'rasterfn_http_requests_total{method="POST",route="/inference",status="200"} 1.0',
        'rasterfn_http_requests_total{method="POST",route="/inference",status="413"} 1.0',
        'rasterfn_http_requests_total{method="POST",route="/inference",status="415"} 1.0',
        'rasterfn_rejected_inputs_total{reason="too_large"} 1.0',
        'rasterfn_rejected_inputs_total{reason="bad_media_type"} 1.0',
        "rasterfn_inference_duration_seconds_count 1.0",
        'rasterfn_http_request_duration_seconds_count{route="/inference"} 3.0',
        "rasterfn_inferences_in_flight 0.0",
        "rasterfn_inferences_queued 0.0",
    ):
        assert line in text, line
    # Bytes in: the full multipart body (file + framing), then only what was read of the refused one.
    bytes_in = _sample(text, 'rasterfn_http_request_bytes_total{route="/inference"}')
    assert len(data) < bytes_in < 3 * len(data) + 1000
    bytes_out = _sample(text, 'rasterfn_http_response_bytes_total{route="/inference"}')
    assert bytes_out >= 64 * 80 * 4


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [("GET", "/nope", 404, "not found"), ("GET", "/inference", 405, "method not allowed")],
)
def test_unknown_routes_and_methods_are_json_errors(client, method, path, status, error):
    with client() as c:
        assert_error(c.request(method, path), status, error)


# --- POST / (events) ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing Authorization"),
        ({"authorization": "Bearer wrong-token"}, "wrong bearer token"),
        ({"authorization": f"Basic {TOKEN}"}, "wrong bearer token"),
        ({"authorization": "Bearer"}, "wrong bearer token"),
    ],
)
def test_event_route_refuses_missing_or_wrong_tokens(client, headers, detail):
    with client(webhook_token=TOKEN) as c:
        response = c.post("/", json={"bucket": "b", "key": "k.tif"}, headers=headers)
        assert_error(response, 401, "unauthorized", detail)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert 'rasterfn_rejected_inputs_total{reason="unauthorized"} 1.0' in c.get("/metrics").text


def test_inference_route_needs_no_token(client, scene):
    with client(webhook_token=TOKEN) as c:
        assert c.post("/inference", files={"file": ("scene.tif", scene.read_bytes())}).status_code == 200


@pytest.mark.parametrize(
    ("body", "detail"),
    [(b"{not json", "JSON"), (b'{"hello": "world"}', ""), (b"[1, 2]", "")],
)
def test_bad_events_are_400(client, body, detail):
    with client(webhook_token=TOKEN) as c:
        response = c.post(
            "/",
            content=body,
            headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
        )
    assert_error(response, 400, "bad event", detail)


def test_event_body_over_the_limit_is_413(client, monkeypatch):
    monkeypatch.setattr(http_app, "MAX_EVENT_BYTES", 100)
    with client() as c:
        response = c.post("/", json={"bucket": "b", "key": "k" * 200 + ".tif"})
    assert_error(response, 413, "too large")


def test_transient_errors_on_the_event_route_are_503_so_the_sender_retries(client, monkeypatch):
    def throttled(ref, runtime, **_kwargs):
        raise TransientError("s3://b/k.tif: SlowDown (503)")

    monkeypatch.setattr(isolation, "process_object", throttled)
    with client() as c:
        response = c.post("/", json={"bucket": "b", "key": "k.tif"})
    assert_error(response, 503, "temporarily unavailable", "SlowDown")
    assert int(response.headers["retry-after"]) > 0


def minio_event(bucket: str, key: str, etag: str, size: int) -> dict[str, Any]:
    """A MinIO webhook body, keys form-encoded as MinIO does."""
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "eventName": "s3:ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(key), "size": size, "eTag": etag},
                },
            }
        ],
    }


def s3_record(bucket: str, key: str) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key)}},
    }


@pytest.fixture
def bucket_with_scene(moto_endpoint, s3_client, make_bucket, scene):
    bucket = make_bucket()
    key = "scenes/a b/scene.tif"
    s3_client.upload_file(str(scene), bucket, key)
    head = s3_client.head_object(Bucket=bucket, Key=key)
    return bucket, key, head["ETag"].strip('"'), head["ContentLength"]


def test_minio_webhook_writes_the_npy_beside_the_input_then_says_duplicate(
    client, bucket_with_scene, s3_client, scene, tiny_model, tmp_path
):
    # GIVEN a scene in the bucket and MinIO's webhook for it, with the token
    bucket, key, etag, size = bucket_with_scene
    event = minio_event(bucket, key, etag, size)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with client(webhook_token=TOKEN) as c:
        # WHEN MinIO posts it
        first = c.post("/", json=event, headers=auth)
        # THEN the .npy appears beside the input, equal to predict_file's
        assert first.status_code == 200, first.text
        [outcome] = first.json()["outcomes"]
        assert outcome["status"] == "written"
        assert (outcome["bucket"], outcome["input_key"], outcome["output_key"]) == (
            bucket,
            key,
            "scenes/a b/scene.npy",
        )
        assert first.json()["counts"] == {"written": 1}
        assert "ce-type" not in first.headers  # not a CloudEvent request: plain JSON
        body = s3_client.get_object(Bucket=bucket, Key="scenes/a b/scene.npy")["Body"].read()
        np.testing.assert_array_equal(np.load(io.BytesIO(body)), expected(tiny_model, scene, tmp_path))
        # AND a duplicate delivery does not reprocess it
        second = c.post("/", json=event, headers=auth)
        assert second.status_code == 200
        assert [o["status"] for o in second.json()["outcomes"]] == ["duplicate"]
        metrics = c.get("/metrics").text
    assert 'rasterfn_objects_processed_total{status="written"} 1.0' in metrics
    assert 'rasterfn_objects_processed_total{status="duplicate"} 1.0' in metrics


def test_structured_cloudevent_writes_the_npy_and_replies_with_a_cloudevent(client, bucket_with_scene, s3_client):
    bucket, key, _, _ = bucket_with_scene
    event = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": f"arn:aws:s3:::{bucket}",
        "type": "com.amazon.s3.objectcreated",
        "subject": key,
        "datacontenttype": "application/json",
        "data": s3_record(bucket, key),
    }
    with client() as c:
        response = c.post("/", content=json.dumps(event), headers={"content-type": "application/cloudevents+json"})
        again = c.post("/", content=json.dumps(event), headers={"content-type": "application/cloudevents+json"})
    assert response.status_code == 200, response.text
    # A binary-mode CloudEvent reply naming the mask
    assert response.headers["ce-specversion"] == "1.0"
    assert response.headers["ce-type"] == "dev.rasterfn.mask.created"
    assert response.headers["ce-source"] == "/rasterfn"
    assert unquote(response.headers["ce-subject"]) == key  # CloudEvents' HTTP binding percent-encodes
    assert len(response.headers["ce-id"]) == 36  # a uuid
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert (data["bucket"], data["input_key"], data["output_key"]) == (bucket, key, "scenes/a b/scene.npy")
    assert data["status"] == "written"
    s3_client.head_object(Bucket=bucket, Key="scenes/a b/scene.npy")
    assert again.headers["ce-type"] == "dev.rasterfn.mask.skipped"
    assert again.json()["status"] == "duplicate"


def test_binary_cloudevent_is_processed_and_answered_in_binary_mode(client, bucket_with_scene, s3_client):
    bucket, key, _, _ = bucket_with_scene
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "evt-2",
        "ce-source": "minio:rasterfn",
        "ce-type": "com.amazon.s3.objectcreated",
        "content-type": "application/json",
    }
    with client() as c:
        response = c.post("/", json={"Records": [s3_record(bucket, key)]}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["ce-type"] == "dev.rasterfn.mask.created"
    assert response.json()["output_key"] == "scenes/a b/scene.npy"


def test_unreadable_object_is_rejected_with_a_marker_and_a_rejected_cloudevent(
    client, moto_endpoint, s3_client, make_bucket
):
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="bad.tif", Body=b"definitely not a tiff")
    headers = {"ce-specversion": "1.0", "ce-id": "3", "ce-source": "s", "ce-type": "t"}
    with client() as c:
        response = c.post("/", json={"Records": [s3_record(bucket, "bad.tif")]}, headers=headers)
    assert response.status_code == 200, response.text  # handled: retrying would not help
    assert response.headers["ce-type"] == "dev.rasterfn.mask.rejected"
    assert response.json()["outcomes"][0]["status"] == "rejected"
    marker = json.loads(s3_client.get_object(Bucket=bucket, Key="bad.error.json")["Body"].read())
    assert "not a TIFF" in marker["message"]


@pytest.mark.parametrize("key", ["scene.npy", "notes.txt"])
def test_events_for_non_inputs_are_skipped(client, key):
    headers = {"ce-specversion": "1.0", "ce-id": "4", "ce-source": "s", "ce-type": "t"}
    with client() as c:
        response = c.post("/", json={"Records": [s3_record("b", key)]}, headers=headers)
    assert response.status_code == 200
    assert response.headers["ce-type"] == "dev.rasterfn.mask.skipped"
    assert response.json()["counts"] == {"skipped": 1}


def test_test_events_get_an_empty_summary(client):
    with client() as c:
        response = c.post("/", json={"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})
    assert response.status_code == 200
    assert response.json() == {"outcomes": [], "counts": {}}


# --- the error table ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (MediaTypeError("x"), 415),
        (UploadError("x"), 400),
        (EventError("x"), 400),
        (RasterTooLargeError("x"), 413),
        (RasterReadError("x"), 422),
        (InputError("x"), 422),
        (BusyError("x"), 503),
        (TransientError("x"), 503),
        (ConfigError("x"), 500),
        (RuntimeError("x"), 500),
    ],
)
def test_map_error(exc, status):
    assert map_error(exc).status == status


# --- the COG answer of POST /inference, and OUTPUTS on the event route ----------------------------------------

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


@pytest.fixture
def holey_scene(make_raster) -> Path:
    """A scene whose top-left corner is nodata in every band: those pixels are invalid."""
    path = make_raster(64, 80, name="holey.tif", seed=5, nodata=0)
    with rasterio.open(path, "r+") as ds:
        data = ds.read()
        data[:, :10, :12] = 0
        ds.write(data)
    return path


def _cog_of(response: httpx.Response, tmp_path: Path, name: str = "answer.tif") -> Path:
    path = tmp_path / name
    path.write_bytes(response.content)
    valid, errors, _ = cog_validate(str(path))
    assert valid and not errors, errors
    return path


@pytest.mark.parametrize("accept", [None, "*/*", "application/octet-stream"])
def test_inference_without_asking_for_a_cog_still_answers_the_npy(client, scene, tiny_model, tmp_path, accept):
    headers = {} if accept is None else {"accept": accept}
    with client() as c:
        response = c.post("/inference", files={"file": ("scene.tif", scene.read_bytes())}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="scene.npy"'
    np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), expected(tiny_model, scene, tmp_path))


@pytest.mark.parametrize(
    ("query", "accept"),
    [
        ("", "image/tiff"),
        ("", "image/tiff; application=geotiff, */*;q=0.1"),
        ("?format=cog", None),
        ("?format=TIF", None),
    ],
)
def test_inference_answers_a_cog_when_asked(client, holey_scene, tiny_model, tmp_path, tmp_dir, query, accept):
    # GIVEN a scene with invalid pixels, and a client asking for the COG (Accept or ?format)
    headers = {} if accept is None else {"accept": accept}
    with client() as c:
        # WHEN it is posted
        response = c.post(
            f"/inference{query}", files={"file": ("holey.tif", holey_scene.read_bytes())}, headers=headers
        )
    # THEN the answer is a valid COG named after the upload
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == COG_TYPE
    assert response.headers["content-disposition"] == 'attachment; filename="holey.mask.TIF"'
    cog = _cog_of(response, tmp_path)
    # AND it is on the input's grid, with the .npy's classes and nodata 255 where the input is invalid
    npy = expected(tiny_model, holey_scene, tmp_path)
    with rasterio.open(holey_scene) as source, rasterio.open(cog) as out:
        assert (out.crs, out.transform, out.shape) == (source.crs, source.transform, source.shape)
        assert out.nodata == 255 and out.dtypes[0] == "uint8"
        classes = out.read(1)
        invalid = (source.read_masks() == 0).any(axis=0)
    assert invalid.any() and np.array_equal(classes == 255, invalid)
    assert np.array_equal(classes[~invalid], npy[~invalid].astype(np.uint8))
    # AND no temp file is left behind
    assert list(tmp_dir.iterdir()) == []


def test_inference_format_npy_wins_over_accept(client, scene, tiny_model, tmp_path):
    with client() as c:
        response = c.post(
            "/inference?format=npy", files={"file": ("scene.tif", scene.read_bytes())}, headers={"accept": "image/tiff"}
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="scene.npy"'
    np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), expected(tiny_model, scene, tmp_path))


def test_inference_unknown_format_is_400(client, scene, tmp_dir):
    with client() as c:
        response = c.post("/inference?format=bogus", files={"file": ("s.tif", scene.read_bytes())})
    assert_error(response, 400, "bad request", "format must be npy or cog, got 'bogus'")
    assert list(tmp_dir.iterdir()) == []


def test_inference_score_cog_holds_the_scores(client, scene, tiny_model, tmp_path, tmp_dir):
    with client() as c:
        response = c.post("/inference?output=score&format=cog", files={"file": ("scene.tif", scene.read_bytes())})
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="scene.score.TIF"'
    with rasterio.open(_cog_of(response, tmp_path)) as out:
        scores = score_of(out.read(1))  # scaled to 254 steps of [0, 1]
    want = np.clip(expected(tiny_model, scene, tmp_path, "score"), 0, 1)
    assert np.abs(scores - want).max() <= 0.5 / SCORE_STEPS + 1e-6
    assert list(tmp_dir.iterdir()) == []


def test_inference_cog_of_an_unreadable_raster_is_422_and_leaves_nothing(client, tmp_dir):
    with client() as c:
        response = c.post("/inference?format=cog", files={"file": ("bad.tif", b"II*\x00garbage")})
    assert_error(response, 422, "unreadable raster", "bad.tif")
    assert list(tmp_dir.iterdir()) == []


def test_minio_webhook_with_outputs_writes_every_object(
    client, bucket_with_scene, s3_client, scene, tiny_model, tmp_path
):
    # GIVEN OUTPUTS=npy,cog,stac and a scene in the bucket
    bucket, key, etag, size = bucket_with_scene
    with client(outputs=("npy", "cog", "stac")) as c:
        # WHEN MinIO's webhook for it arrives
        response = c.post("/", json=minio_event(bucket, key, etag, size))
    assert response.status_code == 200, response.text
    assert [o["status"] for o in response.json()["outcomes"]] == ["written"]
    # THEN the four objects are beside the input
    listed = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="scenes/a b/")["Contents"]}
    stem = "scenes/a b/scene"
    assert listed == {key, f"{stem}.npy", f"{stem}.mask.TIF", f"{stem}.thumb.png", f"{stem}.stac.json"}
    body = s3_client.get_object(Bucket=bucket, Key=f"{stem}.npy")["Body"].read()
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), expected(tiny_model, scene, tmp_path))
    cog = tmp_path / "event.tif"
    s3_client.download_file(bucket, f"{stem}.mask.TIF", str(cog))
    assert cog_validate(str(cog))[0]
    thumb = s3_client.get_object(Bucket=bucket, Key=f"{stem}.thumb.png")["Body"].read()
    assert thumb[:8] == b"\x89PNG\r\n\x1a\n"
    item = json.loads(s3_client.get_object(Bucket=bucket, Key=f"{stem}.stac.json")["Body"].read())
    validate_item(item)
    assert {name: a["href"] for name, a in item["assets"].items() if name != "model"} == {
        "npy": "./scene.npy",
        "mask": "./scene.mask.TIF",
        "thumbnail": "./scene.thumb.png",
    }
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == ["./scene.tif"]
