"""handler/http/relay.py: MinIO's webhook -> a CloudEvent for the Broker; the Broker's delivery -> the function.

The Broker is a stand-in that records what it is sent (httpx.MockTransport); the function is the real app of
handler/http/app.py over moto, reached in-process through httpx's ASGI transport. The chain test walks one
upload the whole way: MinIO's body in, the Broker's binary-mode delivery (with the headers its filter adds),
the .npy in the bucket and the function's reply CloudEvent back out.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote

import httpx
import jwt
import numpy as np
import pytest
from starlette.testclient import TestClient

from handler.errors import EventError
from handler.event_types import SHARD_EVENT_TYPE
from handler.http import oidc
from handler.http.app import create_app
from handler.http.metrics import create_metrics
from handler.http.oidc import FileJwks, HttpJwks
from handler.http.relay import EVENT_TYPE, create_relay_app, publishable_event
from handler.knative import RuntimeLoader
from handler.settings import RelaySettings
from model.errors import ConfigError
from tests.fixtures.oidc import AUDIENCE, SHARDS_SUBJECT, UPLOADS_SUBJECT, Issuer, StaticJwks, relay_settings
from tests.fixtures.oidc import ISSUER as ISSUER_URL
from tests.fixtures.spy import Spy

REPO = Path(__file__).resolve().parents[3]
MINIO_SAMPLE = REPO / "events" / "minio-webhook.json"
SINK = "http://broker-ingress.knative-eventing.svc.cluster.local/default/default"
FUNCTION = "http://rasterfn.default.svc.cluster.local/"
TOKEN = "relay-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
# What the MT broker's filter adds to a delivery besides the event's own ce-* headers.
BROKER_FILTER_HEADERS = {
    "ce-knativearrivaltime": "2026-12-01T00:00:00.000000Z",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "prefer": "reply",
}

SETTINGS = relay_settings(sink_url=SINK, target_url=FUNCTION, webhook_token=TOKEN)
ISSUER = Issuer()  # the cluster's service-account issuer; its tokens are the Trigger's sender identity


class Broker:
    """A Broker ingress stand-in: records each request and answers ``status`` (or raises ``error``)."""

    def __init__(self, status: int = 202, error: Exception | None = None) -> None:
        self.status = status
        self.error = error
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status)


def relay_client(handler: Callable[[httpx.Request], httpx.Response], jwks: Any = None) -> TestClient:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return TestClient(create_relay_app(SETTINGS, client, jwks or StaticJwks(ISSUER)))


def minio_body(bucket: str = "rasterfn-demo", key: str = "scenes/minio/test 1.tif", **head: Any) -> bytes:
    """events/minio-webhook.json for ``bucket``/``key``; ``head``: the object's real ``eTag`` and ``size``."""
    event = json.loads(MINIO_SAMPLE.read_text())
    event["Key"] = f"{bucket}/{key}"
    record = event["Records"][0]["s3"]
    record["bucket"]["name"] = bucket
    record["object"] |= {"key": quote_plus(key), **head}
    return json.dumps(event).encode()


# --- POST /minio ------------------------------------------------------------------------------------------------


def test_minio_webhook_is_published_to_the_sink_as_a_binary_cloudevent_and_answered_202():
    # GIVEN MinIO's webhook for one upload
    broker = Broker()
    body = minio_body()
    with relay_client(broker) as relay:
        # WHEN MinIO posts it with its token
        response = relay.post("/minio", content=body, headers=AUTH)
    # THEN the Broker got one binary-mode CloudEvent whose data is MinIO's body, unchanged
    assert response.status_code == 202, response.text
    [sent] = broker.requests
    assert str(sent.url) == SINK
    assert sent.headers["ce-specversion"] == "1.0"
    assert sent.headers["ce-type"] == EVENT_TYPE
    assert sent.headers["ce-source"] == "/minio/rasterfn-demo"
    assert unquote(sent.headers["ce-subject"]) == "scenes/minio/test 1.tif"
    assert sent.headers["content-type"] == "application/json"
    assert sent.content == body
    assert "authorization" not in sent.headers  # MinIO's token stays with the relay
    assert response.json() == {"accepted": sent.headers["ce-id"]}


def test_the_same_webhook_twice_is_the_same_event_id():
    broker = Broker()
    with relay_client(broker) as relay:
        relay.post("/minio", content=minio_body(), headers=AUTH)
        relay.post("/minio", content=minio_body(), headers=AUTH)
        relay.post("/minio", content=minio_body(key="other.tif"), headers=AUTH)
    ids = [r.headers["ce-id"] for r in broker.requests]
    assert ids[0] == ids[1] != ids[2]


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}], ids=str
)
def test_minio_route_refuses_a_missing_or_wrong_token_before_publishing(headers):
    broker = Broker()
    with relay_client(broker) as relay:
        response = relay.post("/minio", content=minio_body(), headers=headers)
    assert response.status_code == 401
    assert broker.requests == []


@pytest.mark.parametrize(
    ("broker", "detail"),
    [(Broker(status=500), "answered 500"), (Broker(error=httpx.ConnectError("refused")), "refused")],
    ids=["broker-500", "broker-down"],
)
def test_a_broker_failure_is_502_with_retry_after_so_minio_keeps_the_event(broker, detail):
    with relay_client(broker) as relay:
        response = relay.post("/minio", content=minio_body(), headers=AUTH)
    assert response.status_code == 502
    assert response.headers["retry-after"] == "10"
    assert detail in response.json()["detail"]


def test_a_body_that_is_no_event_is_400_and_not_published():
    broker = Broker()
    with relay_client(broker) as relay:
        response = relay.post("/minio", content=b'{"hello": "world"}', headers=AUTH)
    assert response.status_code == 400
    assert "unsupported event" in response.json()["detail"]
    assert broker.requests == []


def test_a_test_event_naming_no_object_is_acknowledged_without_publishing():
    broker = Broker()
    with relay_client(broker) as relay:
        response = relay.post("/minio", content=b'{"Event": "s3:TestEvent"}', headers=AUTH)
    assert response.status_code == 200
    assert broker.requests == []


def test_an_oversized_body_is_413(monkeypatch):
    from handler.http import relay as relay_module

    monkeypatch.setattr(relay_module, "MAX_EVENT_BYTES", 100)
    with relay_client(Broker()) as relay:
        response = relay.post("/minio", content=b"x" * 101, headers=AUTH)
    assert response.status_code == 413


def test_publishable_event_refuses_garbage():
    with pytest.raises(EventError):
        publishable_event(b"not json")


# --- POST /deliver and /dead-letter -----------------------------------------------------------------------------


def delivery_headers(ce_id: str = "abc") -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": ce_id,
        "ce-type": EVENT_TYPE,
        "ce-source": "/minio/rasterfn-demo",
        "content-type": "application/json",
        **BROKER_FILTER_HEADERS,
        **ISSUER.bearer(),
    }


def test_deliver_forwards_the_cloudevent_with_the_token_and_returns_the_function_s_answer():
    # GIVEN a function that answers with a reply CloudEvent
    seen: list[httpx.Request] = []

    def function(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        reply = {"ce-specversion": "1.0", "ce-type": "dev.rasterfn.mask.created", "ce-id": "r", "ce-source": "/x"}
        return httpx.Response(200, json={"status": "written"}, headers={**reply, "x-internal": "no"})

    with relay_client(function) as relay:
        # WHEN the Broker delivers an event
        response = relay.post("/deliver", content=b'{"Records": []}', headers=delivery_headers())
    # THEN the function got the event with the bearer token, and the Broker gets the reply CloudEvent
    [request] = seen
    assert str(request.url) == FUNCTION
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["ce-type"] == EVENT_TYPE and request.headers["ce-id"] == "abc"
    assert request.headers["traceparent"] == BROKER_FILTER_HEADERS["traceparent"]
    assert request.content == b'{"Records": []}'
    assert response.status_code == 200
    assert response.headers["ce-type"] == "dev.rasterfn.mask.created"
    assert "x-internal" not in response.headers
    assert response.json() == {"status": "written"}


@pytest.mark.parametrize("status", [503, 500, 401])
def test_deliver_passes_the_function_s_failure_status_to_the_broker(status):
    # 5xx makes the Broker retry with back-off, then dead-letter; the function's Retry-After goes with it.
    answer = httpx.Response(status, json={"error": "busy"}, headers={"retry-after": "7"})
    with relay_client(lambda request: answer) as relay:
        response = relay.post("/deliver", content=b"{}", headers=delivery_headers())
    assert response.status_code == status
    assert response.headers["retry-after"] == "7"


def test_deliver_of_an_unreachable_function_is_502():
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route")

    with relay_client(down) as relay:
        response = relay.post("/deliver", content=b"{}", headers=delivery_headers())
    assert response.status_code == 502


def test_deliver_forwards_fanout_shard_events_too():
    # The Trigger "rasterfn-shards" (infra/knative/fanout.yaml) subscribes the relay as well.
    seen: list[httpx.Request] = []
    with relay_client(lambda request: seen.append(request) or httpx.Response(200, json={})) as relay:
        response = relay.post("/deliver", content=b"{}", headers={**delivery_headers(), "ce-type": SHARD_EVENT_TYPE})
    assert response.status_code == 200
    [request] = seen
    assert request.headers["ce-type"] == SHARD_EVENT_TYPE and request.headers["authorization"] == f"Bearer {TOKEN}"


# --- POST /deliver: only the Triggers' deliveries borrow the token (Knative Eventing's OIDC sender identity)


def forged_tokens() -> dict[str, dict[str, str]]:
    """Authorization headers of deliveries that did not come through our Triggers, each with one flaw."""
    stranger = Issuer()  # a key of its own, even with the issuer's kid
    hs256 = jwt.encode({"iss": ISSUER_URL, "aud": AUDIENCE, "sub": UPLOADS_SUBJECT, "exp": 2**40}, "x" * 32)
    unsigned = jwt.encode({"iss": ISSUER_URL, "aud": AUDIENCE, "sub": UPLOADS_SUBJECT}, None, algorithm="none")
    return {
        "none": {},
        "not bearer": {"authorization": "Basic dXNlcjpwYXNz"},
        "not a JWT": {"authorization": "Bearer not-a-jwt"},
        "the webhook token": AUTH,
        "another audience": ISSUER.bearer(aud="rasterfn"),
        "another issuer": ISSUER.bearer(iss="https://evil.example"),
        "expired": ISSUER.bearer(exp=int(time.time()) - 3600),
        "no expiry": ISSUER.bearer(exp=None),
        "another pod's service account": ISSUER.bearer(sub="system:serviceaccount:default:default"),
        "signed by another key": {"authorization": f"Bearer {stranger.token()}"},
        "signed by another key, the issuer's kid": {"authorization": f"Bearer {Issuer(kid=ISSUER.kid).token()}"},
        "HS256": {"authorization": f"Bearer {hs256}"},
        "alg none": {"authorization": f"Bearer {unsigned}"},
    }


@pytest.mark.parametrize("flaw", list(forged_tokens()))
def test_a_delivery_without_a_valid_eventing_token_is_401_and_the_function_sees_nothing(flaw):
    seen: list[httpx.Request] = []
    headers = {k: v for k, v in delivery_headers().items() if k != "authorization"} | forged_tokens()[flaw]
    with relay_client(lambda request: seen.append(request) or httpx.Response(200)) as relay:
        response = relay.post("/deliver", content=b"{}", headers=headers)
    assert response.status_code == 401, response.text
    assert seen == []


def test_a_delivery_of_the_shards_trigger_is_forwarded_too():
    seen: list[httpx.Request] = []
    headers = {**delivery_headers(), **ISSUER.bearer(sub=SHARDS_SUBJECT), "ce-type": SHARD_EVENT_TYPE}
    with relay_client(lambda request: seen.append(request) or httpx.Response(200, json={})) as relay:
        assert relay.post("/deliver", content=b"{}", headers=headers).status_code == 200
    [request] = seen
    assert request.headers["authorization"] == f"Bearer {TOKEN}", "the Eventing token is replaced, not forwarded"


def test_the_issuer_s_keys_are_fetched_again_when_it_rotates_them(monkeypatch):
    jwks = StaticJwks(ISSUER)
    rotated = Issuer(kid="key-2")
    with relay_client(lambda request: httpx.Response(200, json={}), jwks) as relay:
        assert relay.post("/deliver", content=b"{}", headers=delivery_headers()).status_code == 200
        assert relay.post("/deliver", content=b"{}", headers=delivery_headers()).status_code == 200
        assert jwks.loads == 1, "fetched once, then cached"
        # the issuer rotates: a token naming a new key makes the relay look again (not more than once a minute)
        jwks.keys += rotated.jwks()["keys"]
        with_new_key = {**delivery_headers(), **rotated.bearer()}
        assert relay.post("/deliver", content=b"{}", headers=with_new_key).status_code == 401
    monkeypatch.setattr(oidc, "REFETCH_AFTER_S", 0)  # a minute later
    with relay_client(lambda request: httpx.Response(200, json={}), jwks) as relay:
        assert relay.post("/deliver", content=b"{}", headers=with_new_key).status_code == 200


def test_unreadable_issuer_keys_are_503_so_the_broker_retries(tmp_path):
    missing = FileJwks(tmp_path / "none.json")
    seen: list[httpx.Request] = []
    with relay_client(lambda request: seen.append(request) or httpx.Response(200), missing) as relay:
        response = relay.post("/deliver", content=b"{}", headers=delivery_headers())
    assert response.status_code == 503 and response.headers["retry-after"] == "10"
    assert seen == []


def test_a_mounted_jwks_file_is_read(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(ISSUER.jwks()))
    with relay_client(lambda request: httpx.Response(200, json={}), FileJwks(path)) as relay:
        assert relay.post("/deliver", content=b"{}", headers=delivery_headers()).status_code == 200


def test_the_api_server_s_jwks_is_fetched_with_the_projected_token(tmp_path):
    # The relay's pod reads https://kubernetes.default.svc/openid/v1/jwks with its own projected token.
    token_file = tmp_path / "token"
    token_file.write_text("projected-token\n")
    asked: list[httpx.Request] = []

    def api_server(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json=ISSUER.jwks())

    client = httpx.AsyncClient(transport=httpx.MockTransport(api_server))
    jwks = HttpJwks("https://kubernetes.default.svc/openid/v1/jwks", client, token_file)
    with relay_client(lambda request: httpx.Response(200, json={}), jwks) as relay:
        assert relay.post("/deliver", content=b"{}", headers=delivery_headers()).status_code == 200
    [request] = asked
    assert request.headers["authorization"] == "Bearer projected-token"


def test_deliver_refuses_events_that_did_not_come_through_the_trigger():
    seen: list[httpx.Request] = []
    with relay_client(lambda request: seen.append(request) or httpx.Response(200)) as relay:
        plain = relay.post("/deliver", content=b"{}", headers={"content-type": "application/json", **ISSUER.bearer()})
        other_type = relay.post("/deliver", content=b"{}", headers={**delivery_headers(), "ce-type": "x.y"})
    assert (plain.status_code, other_type.status_code) == (400, 400)
    assert seen == []


def test_dead_letters_are_logged_visibly_and_acknowledged(caplog):
    headers = {**delivery_headers("dead-1"), "ce-knativeerrorcode": "503", "ce-knativeerrordest": FUNCTION}
    with caplog.at_level(logging.WARNING, logger="handler.http.relay"), relay_client(Broker()) as relay:
        response = relay.post("/dead-letter", content=minio_body(), headers=headers)
    assert response.status_code == 202
    [record] = [r for r in caplog.records if r.getMessage().startswith("dead letter: ")]
    logged = json.loads(record.getMessage().removeprefix("dead letter: "))
    assert logged["attributes"]["id"] == "dead-1"
    assert logged["attributes"]["knativeerrorcode"] == "503"
    assert "scenes" in logged["data"]


def test_healthz():
    with relay_client(Broker()) as relay:
        assert relay.get("/healthz").json() == {"status": "ok"}


# --- settings ---------------------------------------------------------------------------------------------------


RELAY_ENV = {
    "K_SINK": SINK,
    "RELAY_TARGET_URL": FUNCTION,
    "WEBHOOK_TOKEN": TOKEN,
    "RELAY_OIDC_ISSUER": ISSUER_URL,
    "RELAY_OIDC_AUDIENCE": AUDIENCE,
    "RELAY_OIDC_SUBJECTS": f"{UPLOADS_SUBJECT}, {SHARDS_SUBJECT}",
    "RELAY_OIDC_JWKS": "https://kubernetes.default.svc/openid/v1/jwks",
}


def test_the_relay_reads_its_settings():
    settings = RelaySettings.from_env({**RELAY_ENV, "RELAY_OIDC_JWKS_BEARER_FILE": "/var/run/t"})
    assert settings.oidc_subjects == (UPLOADS_SUBJECT, SHARDS_SUBJECT)
    assert (settings.oidc_jwks_bearer_file, settings.oidc_jwks_ca_file) == ("/var/run/t", None)


@pytest.mark.parametrize(
    ("unset", "value", "message"),
    [
        ("K_SINK", "", "K_SINK must be an http"),
        ("RELAY_TARGET_URL", "", "RELAY_TARGET_URL must be an http"),
        ("WEBHOOK_TOKEN", "  ", "WEBHOOK_TOKEN must be set"),
        ("K_SINK", "ftp://x", "got 'ftp://x'"),
        ("RELAY_OIDC_ISSUER", "", "RELAY_OIDC_ISSUER must be an http"),
        ("RELAY_OIDC_AUDIENCE", "", "RELAY_OIDC_AUDIENCE must be set"),
        ("RELAY_OIDC_SUBJECTS", " , ", "RELAY_OIDC_SUBJECTS must list"),
        ("RELAY_OIDC_JWKS", "jwks.json", "RELAY_OIDC_JWKS must be an http"),
    ],
)
def test_the_relay_refuses_to_start_without_its_settings(unset, value, message):
    with pytest.raises(ConfigError, match=message):
        RelaySettings.from_env({**RELAY_ENV, unset: value})


def test_rasterfn_relay_without_its_settings_exits_2_with_the_message(monkeypatch, capsys):
    from handler.cli import main

    for name in ("K_SINK", "RELAY_TARGET_URL", "WEBHOOK_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["relay", "--port", "18099"]) == 2
    assert "K_SINK must be an http:// or https:// URL" in capsys.readouterr().err


def test_the_relay_does_not_import_torch_or_boto3():
    # It runs as its own small pod: the model and the S3 client belong to the function.
    code = "import sys, handler.http.relay; print('torch' in sys.modules, 'boto3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"]


# --- the whole chain, in-process ----------------------------------------------------------------------------------


@pytest.fixture
def function_app(make_runtime) -> Callable[..., Any]:
    """The function's Starlette app on moto with the tiny model and the relay's token."""

    def make() -> Any:
        runtime = make_runtime(webhook_token=TOKEN)
        loader = RuntimeLoader(lambda: runtime)
        loader.start()
        return create_app(runtime.settings, loader, metrics=create_metrics())

    return make


def test_an_upload_goes_minio_relay_broker_relay_function_and_the_npy_appears(
    function_app, make_bucket, s3_client, make_raster
):
    # GIVEN a scene in a bucket, a Broker stand-in and the function behind the relay
    bucket = make_bucket()
    key = "scenes/a b/scene.tif"
    s3_client.upload_file(str(make_raster(64, 80, name="scene.tif", seed=5)), bucket, key)
    head = s3_client.head_object(Bucket=bucket, Key=key)
    minio = minio_body(bucket, key, eTag=head["ETag"].strip('"'), size=head["ContentLength"])
    broker = Broker()
    function = httpx.ASGITransport(app=function_app())
    async_client = httpx.AsyncClient(transport=_Switch({SINK: httpx.MockTransport(broker), FUNCTION: function}))
    with TestClient(create_relay_app(SETTINGS, async_client, StaticJwks(ISSUER))) as relay:
        # WHEN MinIO posts its webhook: answered at once, the scene is not processed yet
        accepted = relay.post("/minio", content=minio, headers=AUTH)
        assert accepted.status_code == 202
        assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket, Prefix="scenes/a b/scene.npy")
        # AND the Broker's filter delivers the event it got, as it does: binary mode, its own headers added
        [published] = broker.requests
        delivery = {k: v for k, v in published.headers.items() if k.startswith("ce-") or k == "content-type"}
        delivery |= {**BROKER_FILTER_HEADERS, **ISSUER.bearer()}  # the Trigger's sender identity
        delivered = relay.post("/deliver", content=published.content, headers=delivery)
        # AND the Broker redelivers it (a retry after a timeout)
        again = relay.post("/deliver", content=published.content, headers=delivery)

    # THEN the function wrote the mask and replied with a CloudEvent the Broker can route
    assert delivered.status_code == 200, delivered.text
    assert delivered.headers["ce-type"] == "dev.rasterfn.mask.created"
    assert delivered.json()["output_key"] == "scenes/a b/scene.npy"
    body = s3_client.get_object(Bucket=bucket, Key="scenes/a b/scene.npy")["Body"].read()
    assert np.load(io.BytesIO(body)).shape == (64, 80)
    # AND the redelivery is a cheap duplicate
    assert again.status_code == 200
    assert again.headers["ce-type"] == "dev.rasterfn.mask.skipped"
    assert again.json()["status"] == "duplicate"


class _Switch(httpx.AsyncBaseTransport):
    """Routes each request to the transport registered for its URL's origin."""

    def __init__(self, transports: dict[str, httpx.AsyncBaseTransport]) -> None:
        self.transports = {httpx.URL(url).host: t for url, t in transports.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.transports[request.url.host].handle_async_request(request)


@contextlib.contextmanager
def running_relay(**env: str) -> Iterator[tuple[str, list[str]]]:
    """`rasterfn relay` on a free loopback port with ``RELAY_ENV`` and ``env``; yields its URL and, once it has
    stopped on SIGTERM, its output and exit status (appended to the list)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "handler.cli", "relay", "--port", str(port)]
    server = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **RELAY_ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    stopped: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, "the relay did not come up"
                time.sleep(0.1)
        yield base, stopped
    finally:
        server.send_signal(signal.SIGTERM)
        stopped.append(server.communicate(timeout=15)[0].decode())
        stopped.append(str(server.returncode))


def test_rasterfn_relay_serves_and_stops_on_sigterm():
    # GIVEN the real server on a free port, with a Broker address where nothing listens
    with running_relay(K_SINK="http://127.0.0.1:9/") as (base, stopped):
        health = httpx.get(f"{base}/healthz", timeout=1)
        # WHEN MinIO posts an event
        published = httpx.post(f"{base}/minio", content=minio_body(), headers=AUTH, timeout=15)
    output, returncode = stopped
    # THEN it answered health, said 502 (the Broker is unreachable, MinIO keeps the event) and stopped cleanly
    assert health.json() == {"status": "ok"}
    assert published.status_code == 502 and published.headers["retry-after"] == "10"
    assert returncode == "0", output
    assert f"listening on {base}" in output
    assert "WARNING handler.http.relay: publish" in output


def test_rasterfn_relay_forwards_only_deliveries_with_the_trigger_s_token(tmp_path):
    # GIVEN the real relay over HTTP, the issuer's keys in a mounted file, and a spy where the function would be
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(ISSUER.jwks()))
    with (
        Spy() as function,
        running_relay(RELAY_TARGET_URL=function.url + "/", RELAY_OIDC_JWKS=str(jwks)) as (
            base,
            _,
        ),
    ):
        # WHEN deliveries come without a valid Eventing token: refused, the function hears nothing
        for flaw, auth in forged_tokens().items():
            headers = {k: v for k, v in delivery_headers().items() if k != "authorization"} | auth
            refused = httpx.post(f"{base}/deliver", content=b"{}", headers=headers, timeout=15)
            assert refused.status_code == 401, (flaw, refused.text)
        assert function.requests == []
        # WHEN the Trigger's delivery comes, with its token: forwarded, with the function's token instead
        forwarded = httpx.post(f"{base}/deliver", content=b"{}", headers=delivery_headers(), timeout=15)
    assert forwarded.status_code == 200, forwarded.text
    [(method, _, headers)] = function.requests
    assert method == "POST" and headers["authorization"] == f"Bearer {TOKEN}"
