"""handler/http/guard.py: what a browser can forge is refused before the app; everything else passes unchanged."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from handler.http.guard import BrowserGuard, GuardPolicy, host_names_loopback, refusal

LOCAL = {"host": "127.0.0.1:8080"}
JSON = {**LOCAL, "content-type": "application/json"}
APP = "https://app.example"


@pytest.mark.parametrize(
    ("headers", "method", "path", "policy", "status"),
    [
        # the event route takes JSON (plain, CloudEvents structured or binary mode) and nothing a form can send
        (JSON, "POST", "/", GuardPolicy(), None),
        ({**LOCAL, "content-type": "application/json; charset=utf-8"}, "POST", "/", GuardPolicy(), None),
        ({**LOCAL, "content-type": "application/cloudevents+json"}, "POST", "/", GuardPolicy(), None),
        ({**JSON, "ce-specversion": "1.0", "ce-type": "t"}, "POST", "/", GuardPolicy(), None),
        ({**LOCAL, "content-type": "text/plain"}, "POST", "/", GuardPolicy(), 415),
        ({**LOCAL, "content-type": "application/x-www-form-urlencoded"}, "POST", "/", GuardPolicy(), 415),
        ({**LOCAL, "content-type": "multipart/form-data; boundary=x"}, "POST", "/", GuardPolicy(), 415),
        (LOCAL, "POST", "/", GuardPolicy(), 415),
        # uploads keep their own media types (the old API's multipart)
        ({**LOCAL, "content-type": "multipart/form-data; boundary=x"}, "POST", "/inference", GuardPolicy(), None),
        # a foreign Origin on any route, unless listed
        ({**JSON, "origin": "http://evil.example"}, "POST", "/", GuardPolicy(), 403),
        ({**LOCAL, "origin": "http://evil.example"}, "POST", "/inference", GuardPolicy(), 403),
        ({**LOCAL, "origin": "null"}, "GET", "/healthz", GuardPolicy(), 403),
        (
            {**LOCAL, "origin": "https://app.example/"},
            "POST",
            "/inference",
            GuardPolicy(("https://app.example",)),
            None,
        ),
        ({**LOCAL, "sec-fetch-site": "cross-site"}, "POST", "/inference", GuardPolicy(), 403),
        ({**LOCAL, "sec-fetch-site": "none"}, "GET", "/healthz", GuardPolicy(), None),
        # DNS rebinding: on loopback, only loopback names
        ({**JSON, "host": "evil.example:8080"}, "POST", "/", GuardPolicy(loopback_only=True), 421),
        ({**JSON, "host": "localhost:8080"}, "POST", "/", GuardPolicy(loopback_only=True), None),
        ({**JSON, "host": "[::1]:8080"}, "POST", "/", GuardPolicy(loopback_only=True), None),
        ({"content-type": "application/json"}, "POST", "/", GuardPolicy(loopback_only=True), 421),
        # ... and any Host behind a gateway (Knative: rasterfn.default.svc.cluster.local)
        ({**JSON, "host": "rasterfn.default.svc.cluster.local"}, "POST", "/", GuardPolicy(), None),
    ],
)
def test_refusal(headers, method, path, policy, status):
    denied = refusal(headers, method, path, policy)
    assert (denied[0] if denied else None) == status


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3:80", True),
        ("localhost", True),
        ("LOCALHOST.:8080", True),
        ("[::1]:8080", True),
        ("::1", True),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example:8080", False),
        ("10.0.0.1:8080", False),
        ("[::ffff:8.8.8.8]:80", False),
        ("", False),
    ],
)
def test_host_names_loopback(host, loopback):
    assert host_names_loopback(host) is loopback


def cors_app() -> Starlette:
    async def hello(request):
        return PlainTextResponse("hi", headers={"Access-Control-Allow-Origin": "*", "X-Kept": "1"})

    return Starlette(routes=[Route("/healthz", hello)])


def test_no_cors_header_ever_leaves_and_refusals_are_counted():
    counted = []
    app = BrowserGuard(cors_app(), GuardPolicy(loopback_only=True), counted.append)
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        ok = client.get("/healthz")
        refused = client.get("/healthz", headers={"host": "evil.example"})
    assert ok.status_code == 200 and ok.headers["x-kept"] == "1"
    assert not [h for h in ok.headers if h.lower().startswith("access-control-")]
    assert refused.status_code == 421 and "evil.example" in refused.json()["detail"]
    assert counted == [421]
