"""Issue 19's attack, end to end: `rasterfn serve` on loopback, its S3 endpoint a spy that records every request.

What any web page can make the user's browser send (``text/plain`` and form bodies, a foreign ``Origin``, a
rebound ``Host``), and what a caller without the token or naming someone else's bucket sends, is refused with a
4xx before the function sends S3 a single request. The same event with the token, a JSON media type and an
allowed bucket is processed (and only then does the spy see requests).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.servers import free_port, wait_ready
from tests.fixtures.spy import Spy

VENV_BIN = Path(sys.executable).parent
BUCKET, VICTIM = "scenes", "victim-bucket"
TOKEN_LINE = re.compile(r"WEBHOOK_TOKEN=(\S+)")

pytestmark = pytest.mark.slow


class Served:
    """A running `rasterfn serve`: its base URL, the token it printed, its output so far."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    @property
    def output(self) -> str:
        return self.log.read_text()

    @property
    def token(self) -> str:
        match = TOKEN_LINE.search(self.output)
        assert match, self.output
        return match.group(1)


@pytest.fixture
def serve(tmp_path, tiny_model_card) -> Iterator:
    """``serve(*flags, env=...) -> Served``: `rasterfn serve` on a free loopback port, stopped afterwards."""
    started: list[Served] = []

    def start(*flags: str, **env: str) -> Served:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        variables = {
            k: v
            for k, v in os.environ.items()
            if k not in ("WEBHOOK_TOKEN", "ALLOWED_BUCKETS", "ALLOW_UNAUTHENTICATED_EVENTS")
        }
        variables |= {"MODEL_CARD": str(tiny_model_card), "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1", **env}
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(VENV_BIN / "rasterfn"), "serve", "--port", str(port), *flags],
                env=variables,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        served = Served(process, port, log)
        started.append(served)
        wait_ready(port, process, log)
        return served

    yield start
    for served in started:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait()


@pytest.fixture
def spy_s3(moto_server) -> Iterator[Spy]:
    with Spy(forward_to=moto_server) as spy:
        yield spy


@pytest.fixture
def buckets(s3_client, make_raster) -> str:
    """The allowed bucket and a victim's, each holding ``a/b.tif`` (uploaded past the spy)."""
    scene = make_raster(32, 32, name="b.tif").read_bytes()
    for name in (BUCKET, VICTIM):
        s3_client.create_bucket(Bucket=name)
        s3_client.put_object(Bucket=name, Key="a/b.tif", Body=scene)
    return BUCKET


def notification(bucket: str, key: str = "a/b.tif") -> bytes:
    record = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}
    record |= {"s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
    return json.dumps({"Records": [record]}).encode()


def forged_requests(served: Served) -> dict[str, tuple[dict[str, str], bytes]]:
    """Each attack: headers and body; all but the named flaw are right (token, JSON, allowed bucket)."""
    json_ = {"content-type": "application/json"}
    auth = {"authorization": f"Bearer {served.token}"}
    good = notification(BUCKET)
    return {
        # the request, as a page the user opens sends it
        "issue-text-plain-evil-origin-evil-host": (
            {"content-type": "text/plain", "origin": "http://evil.example", "host": f"evil.example:{served.port}"},
            notification(VICTIM),
        ),
        "text/plain": ({**auth, "content-type": "text/plain"}, good),
        "form-encoded": ({**auth, "content-type": "application/x-www-form-urlencoded"}, b"Records=x"),
        "foreign Host": ({**auth, **json_, "host": f"evil.example:{served.port}"}, good),
        "foreign Origin": ({**auth, **json_, "origin": "http://evil.example"}, good),
        "no token": (json_, good),
        "foreign bucket": ({**auth, **json_}, notification(VICTIM)),
    }


def test_forged_requests_are_refused_before_any_s3_request_and_the_real_one_works(serve, spy_s3, buckets, s3_client):
    # GIVEN `rasterfn serve` for the bucket "scenes", its S3 endpoint a recording spy
    served = serve("--allowed-buckets", BUCKET, AWS_ENDPOINT_URL=spy_s3.url)
    # WHEN each forged request is sent over real HTTP
    for name, (headers, body) in forged_requests(served).items():
        response = httpx.post(served.url + "/", headers=headers, content=body, timeout=30)
        # THEN it is refused with a 4xx, and S3 heard nothing
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert "access-control-allow-origin" not in response.headers
        assert spy_s3.requests == [], (name, spy_s3.requests)
    # WHEN the same event comes with the token, as JSON, for the allowed bucket
    response = httpx.post(
        served.url + "/",
        headers={"authorization": f"Bearer {served.token}", "content-type": "application/json"},
        content=notification(BUCKET),
        timeout=120,
    )
    # THEN it is processed: the mask is beside the upload
    assert response.status_code == 200, response.text
    assert response.json()["counts"] == {"written": 1}, response.text
    assert spy_s3.requests and all(path.startswith(f"/{BUCKET}/") for _, path, _ in spy_s3.requests)
    s3_client.head_object(Bucket=BUCKET, Key="a/b.npy")


def test_serve_with_no_configuration_prints_a_token_and_allows_no_bucket(serve, spy_s3, buckets):
    # GIVEN `rasterfn serve` with nothing configured
    served = serve(AWS_ENDPOINT_URL=spy_s3.url)
    # THEN it printed a token and a ready curl line
    assert "curl -X POST http://127.0.0.1:" in served.output and len(served.token) >= 32
    assert "ALLOWED_BUCKETS is not set" in served.output
    json_ = {"content-type": "application/json"}
    # WHEN an event comes without the token: 401
    without = httpx.post(served.url + "/", headers=json_, content=notification(BUCKET), timeout=30)
    assert without.status_code == 401, without.text
    # WHEN with the token: still no bucket is allowed (403), and S3 heard nothing either way
    auth = {"authorization": f"Bearer {served.token}"}
    with_token = httpx.post(served.url + "/", headers={**auth, **json_}, content=notification(BUCKET), timeout=30)
    assert with_token.status_code == 403 and "ALLOWED_BUCKETS" in with_token.text
    assert spy_s3.requests == []
