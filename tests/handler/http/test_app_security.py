"""handler/http/app.py under attack (issue 9): closed routes, caps, bounded uploads, deadlines.

Each test builds the attack and checks for a clean, short refusal (or a bounded correct answer), and that
the app still answers afterwards."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

import handler.isolation as isolation
from handler.http.app import create_app
from handler.http.metrics import create_metrics
from handler.knative import RuntimeLoader
from handler.runtime import Runtime
from handler.settings import Settings
from handler.storage import Storage
from model.card import load_card
from model.errors import ConfigError
from model.network.checkpoint import build_model

TOKEN = "webhook-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model(tiny_model_card):
    return build_model(load_card(tiny_model_card))


@pytest.fixture
def make_app(model, tiny_model_card, tmp_path, request):
    """``make_app(**settings) -> (app, runtime)``; the webhook token is set unless a test says otherwise."""

    def make(**fields: Any):
        fields.setdefault("webhook_token", TOKEN)
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        online = "moto_endpoint" in request.fixturenames
        settings = Settings(model_card=tiny_model_card, tmp_dir=work, **fields)
        storage = Storage.from_defaults() if online else Storage.from_defaults("http://127.0.0.1:9")
        runtime = Runtime(settings=settings, model=model, storage=storage)
        loader = RuntimeLoader(lambda: runtime)
        loader.start()
        return create_app(settings, loader, metrics=create_metrics()), runtime

    return make


def client_of(app) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def assert_short_error(response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"], response.json()
    assert len(response.content) < 600, "error bodies stay short"


# --- closed routes


def test_the_event_route_refuses_to_start_without_a_token(make_app):
    with pytest.raises(ConfigError, match="WEBHOOK_TOKEN is not set"):
        make_app(webhook_token=None)


def test_unauthenticated_events_only_when_explicitly_allowed(make_app):
    app, _ = make_app(webhook_token=None, allow_unauthenticated_events=True)
    with client_of(app) as c:
        response = c.post("/", json={"bucket": "b", "key": "a.npy"})
    assert response.status_code == 200 and response.json()["counts"] == {"skipped": 1}


def test_an_event_without_the_token_is_401(make_app):
    app, _ = make_app()
    with client_of(app) as c:
        response = c.post("/", json={"bucket": "b", "key": "a.tif"})
    assert_short_error(response, 401, "WEBHOOK_TOKEN")


def test_inference_token_guards_inference_when_set(make_app, make_raster):
    app, _ = make_app(inference_token="infer-token")
    scene = make_raster(32, 32)
    with client_of(app) as c:
        refused = c.post("/inference", files={"file": ("s.tif", scene.read_bytes())})
        wrong = c.post("/inference", files={"file": ("s.tif", b"x")}, headers={"authorization": "Bearer nope"})
        ok = c.post(
            "/inference",
            files={"file": ("s.tif", scene.read_bytes())},
            headers={"authorization": "Bearer infer-token"},
        )
    assert_short_error(refused, 401, "INFERENCE_TOKEN")
    assert_short_error(wrong, 401, "wrong bearer token")
    assert ok.status_code == 200


def test_a_foreign_bucket_is_refused_before_any_s3_request(moto_endpoint, make_app, make_bucket, upload_raster):
    # GIVEN an app allowed one bucket, and another bucket its credentials reach
    allowed, victim = make_bucket(), make_bucket()
    upload_raster(victim, "a.tif")
    app, runtime = make_app(allowed_buckets=(allowed,))
    sent: list[str] = []
    runtime.storage.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    # WHEN an authenticated event names the other bucket (next to an allowed object)
    event = {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": b}, "object": {"key": "a.tif"}}}
            for b in (allowed, victim)
        ]
    }
    with client_of(app) as c:
        response = c.post("/", json=event, headers=AUTH)
    # THEN the whole event is refused and S3 saw no request
    assert_short_error(response, 403, "outside ALLOWED_BUCKETS")
    assert sent == []


# --- caps


def test_records_over_the_cap_are_refused_before_processing(make_app):
    app, _ = make_app(max_event_records=3)
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "a.tif"}}}
    event = {"Records": [record] * 2000}
    with client_of(app) as c:
        response = c.post("/", json=event, headers=AUTH)
        assert c.get("/healthz").status_code == 200
    assert_short_error(response, 400, "2000 records in one event, over MAX_EVENT_RECORDS=3")


def test_a_multipart_body_of_many_parts_is_refused_with_a_short_answer(make_app):
    app, _ = make_app()
    boundary = "b0undary"
    parts = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n\r\n' for i in range(250_000))
    body = (parts + f"--{boundary}--\r\n").encode()
    with client_of(app) as c:
        started = time.monotonic()
        response = c.post(
            "/inference", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
        assert c.get("/healthz").status_code == 200
    assert_short_error(response, 400, "more than 16 parts")
    assert time.monotonic() - started < 60


def test_inference_has_its_own_lower_pixel_limit(make_app, make_raster):
    app, _ = make_app(max_inference_pixels=32 * 32)
    with client_of(app) as c:
        too_big = c.post("/inference", files={"file": ("s.tif", make_raster(40, 40).read_bytes())})
        fits = c.post("/inference", files={"file": ("s.tif", make_raster(32, 32).read_bytes())})
    assert too_big.status_code == 413, too_big.text
    assert fits.status_code == 200


def test_unknown_methods_share_one_metric_label(make_app):
    app, _ = make_app()
    with client_of(app) as c:
        for method in ("BREW", "X-ONE", "X-TWO"):
            c.request(method, "/healthz")
        metrics = c.get("/metrics").text
    assert 'method="other"' in metrics
    assert "BREW" not in metrics and "X-ONE" not in metrics


# --- bounded work


def test_inference_past_its_deadline_is_504_and_frees_the_slot(make_app, make_raster, monkeypatch):
    # GIVEN a 1 s deadline and a predictor that takes 1.5 s before its next between-tiles check
    app, _ = make_app(inference_timeout_s=1)
    real = isolation.predict_file

    def slow(model, src, dst, options, *, interrupt, sinks=()):
        def late():
            time.sleep(1.5)
            interrupt()

        return real(model, src, dst, options, interrupt=late, sinks=sinks)

    monkeypatch.setattr(isolation, "predict_file", slow)
    scene = make_raster(32, 32)
    with client_of(app) as c:
        response = c.post("/inference", files={"file": ("s.tif", scene.read_bytes())})
        monkeypatch.setattr(isolation, "predict_file", real)
        after = c.post("/inference", files={"file": ("s.tif", scene.read_bytes())})
    assert_short_error(response, 504, "INFERENCE_TIMEOUT_S")
    assert after.status_code == 200, "the slot was freed"
    assert app.state.slots.in_flight == 0 and app.state.slots.waiting == 0


def test_an_object_past_its_deadline_is_rejected_not_retried(
    moto_endpoint, make_app, make_bucket, upload_raster, s3_client, monkeypatch
):
    app, _ = make_app(inference_timeout_s=1)
    bucket = make_bucket()
    upload_raster(bucket, "slow.tif")
    real = isolation.process_object

    def slow(ref, runtime, *, interrupt):
        time.sleep(1.2)
        return real(ref, runtime, interrupt=interrupt)

    monkeypatch.setattr(isolation, "process_object", slow)
    with client_of(app) as c:
        response = c.post("/", json={"bucket": bucket, "key": "slow.tif"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["counts"] == {"rejected": 1}
    body = s3_client.get_object(Bucket=bucket, Key="slow.error.json")["Body"].read().decode()
    assert "DeadlineError" in body and "INFERENCE_TIMEOUT_S" in body


def test_a_client_that_goes_away_stops_its_inference_and_frees_the_slot(make_app, make_raster, monkeypatch):
    # GIVEN an inference whose between-tiles check we can watch
    app, _ = make_app()
    real = isolation.predict_file
    stopped: list[str] = []

    def watched(model, src, dst, options, *, interrupt, sinks=()):
        def check():
            try:
                interrupt()
            except Exception as exc:
                stopped.append(type(exc).__name__)
                raise
            time.sleep(0.05)

        for _ in range(200):  # ~10 s of "tiles" unless stopped
            check()
        return real(model, src, dst, options, interrupt=interrupt, sinks=sinks)

    monkeypatch.setattr(isolation, "predict_file", watched)
    scene = make_raster(32, 32).read_bytes()

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fn") as c:
            request = asyncio.create_task(c.post("/inference", files={"file": ("s.tif", scene)}))
            await asyncio.sleep(1.0)
            request.cancel()  # the client hangs up
            with pytest.raises(asyncio.CancelledError):
                await request

    asyncio.run(main())
    # THEN the predictor was stopped at a tile boundary
    assert stopped == ["CancelledError"]
    assert app.state.slots.in_flight == 0 and app.state.slots.waiting == 0


# --- uploads: bounded in time and counted by admission control


def test_an_upload_that_stalls_is_408_and_leaves_no_temp_file(make_app, tmp_path):
    app, runtime = make_app(upload_read_timeout_s=1)

    async def stalling_body():
        yield b"II*\x00" + b"\x00" * 1000
        await asyncio.sleep(3)
        yield b"never read"

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fn") as c:
            return await c.post("/inference", content=stalling_body(), headers={"content-type": "image/tiff"})

    response = asyncio.run(main())
    assert_short_error(response, 408, "UPLOAD_READ_TIMEOUT_S")
    assert list(runtime.settings.tmp_dir.iterdir()) == []


def test_uploads_in_progress_count_toward_admission(make_app, make_raster):
    # GIVEN one slot, no queue, and one upload still arriving
    app, _ = make_app(max_concurrent_inferences=1, max_queued_requests=0)
    scene = make_raster(32, 32).read_bytes()

    async def main() -> tuple[httpx.Response, httpx.Response]:
        release = asyncio.Event()

        async def slow_body():
            yield scene[:100]
            await release.wait()
            yield scene[100:]

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fn") as c:
            slow = asyncio.create_task(
                c.post("/inference", content=slow_body(), headers={"content-type": "image/tiff"})
            )
            await asyncio.sleep(0.5)
            # WHEN a second upload arrives THEN it is refused at once, before its body is read
            second = await c.post("/inference", content=scene, headers={"content-type": "image/tiff"})
            release.set()
            return await slow, second

    first, second = asyncio.run(main())
    assert_short_error(second, 503, "MAX_QUEUED_REQUESTS=0")
    assert first.status_code == 200, first.text
