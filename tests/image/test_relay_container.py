"""The Eventing relay's entry point (`rasterfn relay`, infra/knative/eventing.yaml's args) from the same image:
it starts with no model, publishes MinIO's webhooks to K_SINK and forwards to the function only the deliveries
that carry a Trigger's OIDC token (a stand-in issuer's keys, served on loopback)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from handler.event_types import UPLOAD_EVENT_TYPE
from tests.fixtures.oidc import AUDIENCE, ISSUER, SHARDS_SUBJECT, UPLOADS_SUBJECT, Issuer
from tests.fixtures.paths import REPO_ROOT
from tests.fixtures.runtime_api import serve
from tests.fixtures.servers import free_port
from tests.fixtures.spy import Spy
from tests.image.conftest import run_container, wait_until_ready

TOKEN = secrets.token_hex(16)


def jwks_handler(issuer: Issuer) -> type[BaseHTTPRequestHandler]:
    """The API server's /openid/v1/jwks, for the stand-in issuer."""
    body = json.dumps(issuer.jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def relay(image, issuer, tmp_path_factory) -> Iterator[tuple[str, Spy, Spy]]:
    with Spy(status=202) as broker, Spy(status=200) as function, serve(jwks_handler(issuer)) as jwks_address:
        port = free_port()
        env = {
            "K_SINK": f"{broker.url}/default/default",
            "RELAY_TARGET_URL": f"{function.url}/",
            "WEBHOOK_TOKEN": TOKEN,
            "RELAY_OIDC_ISSUER": ISSUER,
            "RELAY_OIDC_AUDIENCE": AUDIENCE,
            "RELAY_OIDC_SUBJECTS": f"{UPLOADS_SUBJECT},{SHARDS_SUBJECT}",
            "RELAY_OIDC_JWKS": f"http://127.0.0.1:{jwks_address[1]}/openid/v1/jwks",
        }
        args = ("relay", "--host", "127.0.0.1", "--port", str(port))
        tmp = tmp_path_factory.mktemp("relay-container")
        # eventing.yaml's limits: 192 MiB of memory, a 16 MiB /tmp; the image's own user.
        with run_container(image, tmp, env, user="10001:10001", tmpfs_mb=16, memory="192m", args=args) as container:
            url = f"http://127.0.0.1:{port}"
            wait_until_ready(f"{url}/healthz", container)
            yield url, broker, function


def test_a_minio_webhook_is_published_to_the_broker(relay):
    url, broker, _ = relay
    body = (REPO_ROOT / "events" / "minio-webhook.json").read_bytes()
    response = httpx.post(f"{url}/minio", content=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 202, response.text
    _, _, headers = broker.requests[-1]  # the relay answers once the Broker has answered
    assert headers["ce-type"] == UPLOAD_EVENT_TYPE
    assert json.loads(broker.bodies[-1]) == json.loads(body)


def test_a_webhook_without_the_token_is_refused(relay):
    url, _, _ = relay
    body = (REPO_ROOT / "events" / "minio-webhook.json").read_bytes()
    assert httpx.post(f"{url}/minio", content=body, timeout=30).status_code == 401


DELIVERY_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "image-test-1",
    "ce-source": "/minio/rasterfn-demo",
    "ce-type": UPLOAD_EVENT_TYPE,
    "content-type": "application/json",
}


def test_a_delivery_without_the_trigger_s_token_reaches_nothing(relay):
    url, _, function = relay
    body = (REPO_ROOT / "events" / "minio-webhook.json").read_bytes()
    seen = len(function.requests)
    for auth in ({}, {"authorization": f"Bearer {TOKEN}"}, Issuer().bearer()):  # none, the webhook's, a stranger's
        response = httpx.post(f"{url}/deliver", content=body, headers=DELIVERY_HEADERS | auth, timeout=30)
        assert response.status_code == 401, response.text
    assert len(function.requests) == seen


def test_a_delivery_with_the_trigger_s_token_reaches_the_function_with_its_token(relay, issuer):
    url, _, function = relay
    body = (REPO_ROOT / "events" / "minio-webhook.json").read_bytes()
    response = httpx.post(f"{url}/deliver", content=body, headers=DELIVERY_HEADERS | issuer.bearer(), timeout=30)
    assert response.status_code == 200, response.text
    _, _, forwarded = function.requests[-1]
    assert forwarded["authorization"] == f"Bearer {TOKEN}" and forwarded["ce-id"] == "image-test-1"
    assert function.bodies[-1] == body
