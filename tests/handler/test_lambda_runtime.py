"""The image's Lambda mode for real: docker/entrypoint.sh -> awslambdaric -> handler.lambda_function.

A local Lambda Runtime API (the 2018-06-01 HTTP interface Lambda serves to every custom runtime) hands the
runtime SQS-wrapped S3 events and records what it posts back; S3 is moto's server, behind a small proxy that
can fail chosen keys the way S3 does. So the whole chain runs as it would in Lambda: the runtime interface
client, the INIT-time model load, the handler, boto3 against an S3 endpoint, and the batch response.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.fixtures.aws import FAKE_CREDENTIALS
from tests.fixtures.paths import REPO_ROOT
from tests.fixtures.runtime_api import STOP, Container, RuntimeApiState, runtime_api_handler, serve, stop

ROOT = REPO_ROOT
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
VENV_BIN = ROOT / ".venv" / "bin"
RESULT_TIMEOUT_S = 90  # a cold start imports torch and loads the model first

pytestmark = pytest.mark.slow


# --- S3 through a proxy that can fail chosen keys

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass(frozen=True)
class Fault:
    """Answer ``method`` requests for keys containing ``key_contains`` with this S3 error instead."""

    method: str
    key_contains: str
    status: int
    code: str


def s3_proxy_handler(upstream: tuple[str, int], faults: list[Fault]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self._read_body()
            key = unquote(urlsplit(self.path).path)
            for fault in faults:
                if self.command == fault.method and fault.key_contains in key:
                    self._send_error(fault)
                    return
            connection = http.client.HTTPConnection(*upstream, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            finally:
                connection.close()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            # HEAD: the object's length, with no body.
            length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _read_body(self) -> bytes | None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = io.BytesIO()
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.write(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                    pass
                return chunks.getvalue()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else None

        def _send_error(self, fault: Fault) -> None:
            xml = f"<Error><Code>{fault.code}</Code><Message>injected by the test</Message></Error>"
            data = b"" if self.command == "HEAD" else xml.encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


# --- Fixtures: the "container"


@pytest.fixture(scope="module")
def model_card(tmp_path_factory) -> Path:
    """A tiny U-Net (2 levels, 4 filters) and its card: the INIT phase takes milliseconds, not seconds."""
    from tests.fixtures.models import TINY_MODEL, write_random_card

    return write_random_card(tmp_path_factory.mktemp("model"), **TINY_MODEL)


# Keys the proxy fails, the way S3 does: a GetObject with expired credentials (a TransientError: the
# next container has fresh ones) and a HeadObject the role may not make (a ConfigError: an operator must fix
# the policy). Either way the record goes back to the queue, and only that record.
EXPIRED_KEY_PART = "expired-credentials"
DENIED_KEY_PART = "access-denied"
FAULTS = [
    Fault("GET", EXPIRED_KEY_PART, 400, "ExpiredToken"),
    Fault("HEAD", DENIED_KEY_PART, 403, "AccessDenied"),
]


@pytest.fixture(scope="module")
def s3_endpoint(moto_server) -> Iterator[str]:
    """The function's S3 endpoint: moto behind the faulting proxy."""
    upstream = urlsplit(moto_server)
    with serve(s3_proxy_handler((upstream.hostname, upstream.port), FAULTS)) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
def s3(moto_server) -> Any:
    """The user's side: a plain client straight to moto."""
    import boto3

    keys = {k: FAKE_CREDENTIALS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    return boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        **{name.lower(): value for name, value in keys.items()},
    )


@pytest.fixture(scope="module")
def bucket(s3) -> str:
    name = f"lambda-runtime-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def runtime_environment(api: tuple[str, int], s3_endpoint: str, model_card: Path, tmp: Path) -> dict[str, str]:
    """Roughly what Lambda gives a container, plus what Terraform sets; nothing from the test's own env."""
    work = tmp / "tmp"
    work.mkdir(exist_ok=True)
    empty = tmp / "no-aws-config"
    return {
        "PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
        "AWS_LAMBDA_RUNTIME_API": f"{api[0]}:{api[1]}",
        "AWS_LAMBDA_FUNCTION_NAME": "rasterfn",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/rasterfn",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2024/06/12/[$LATEST]0123456789abcdef",
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        # The image's environment (Dockerfile), with /tmp made private to this test.
        "HOME": str(tmp),
        "TMPDIR": str(work),
        "MODEL_CACHE_DIR": str(tmp / "model-cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # Terraform's settings for the function.
        "MODEL_CARD": str(model_card),
        "INPUT_SUFFIXES": ".tif,.tiff",
        "POWERTOOLS_SERVICE_NAME": "rasterfn",
        "POWERTOOLS_METRICS_NAMESPACE": "rasterfn",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": "1",  # two shared CPU cores on the test machine
    }


@contextlib.contextmanager
def start_container(env_overrides: dict[str, str], s3_endpoint: str, model_card: Path, tmp: Path):
    """Start docker/entrypoint.sh as Lambda would; always stopped (SIGTERM, then SIGKILL) afterwards."""
    state = RuntimeApiState()
    with serve(runtime_api_handler(state)) as api_address:
        env = runtime_environment(api_address, s3_endpoint, model_card, tmp) | env_overrides
        log_path = tmp / "runtime.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["/bin/sh", str(ENTRYPOINT)],
                env=env,
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        container = Container(process, state, log_path)
        try:
            yield container
        finally:
            stop(process)
            # With the process gone, unblock the Runtime API's pending long poll so the server can stop.
            state.events.put((STOP, b""))


@pytest.fixture(scope="module")
def container(s3_endpoint, model_card, tmp_path_factory) -> Iterator[Container]:
    """One warm "Lambda container" for the module's invocations, as Lambda reuses one between events."""
    with start_container({}, s3_endpoint, model_card, tmp_path_factory.mktemp("lambda")) as running:
        yield running
    assert running.process.returncode is not None, "the runtime process outlived the test"


# --- Events


@pytest.fixture
def upload(s3, bucket, make_raster) -> Callable[[str], dict[str, Any]]:
    """``upload("a/b/scene.tif")``: put a 64 x 64, 10-band GeoTIFF; returns the event's S3 object fields."""

    def put(key: str) -> dict[str, Any]:
        body = make_raster(64, 64, name=f"{uuid.uuid4().hex}.tif").read_bytes()
        reply = s3.put_object(Bucket=bucket, Key=key, Body=body)
        return {"key": key, "size": len(body), "eTag": reply["ETag"].strip('"')}

    return put


@pytest.fixture
def sqs_batch(make_upload_batch, bucket) -> Callable[..., dict[str, Any]]:
    """``sqs_batch(obj1, obj2)``: Lambda's SQS event for uploads to this module's bucket."""
    return lambda *objects: make_upload_batch(bucket, *objects)


def mask_of(s3, bucket: str, key: str) -> Any:
    import numpy as np

    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return np.load(io.BytesIO(body), allow_pickle=False)


def exists(s3, bucket: str, key: str) -> bool:
    return s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) > 0


# --- Tests


def test_sqs_batch_writes_the_mask_and_reports_no_failures(container, s3, bucket, upload, sqs_batch):
    # GIVEN an uploaded raster and the SQS message its upload notification became
    obj = upload("scenes/2024/tile-a.tif")
    # WHEN Lambda hands the batch to the runtime
    kind, body = container.invoke(sqs_batch(obj), RESULT_TIMEOUT_S)
    # THEN the invocation succeeds with an empty partial-batch response, and the mask is beside the raster
    assert (kind, body) == ("response", {"batchItemFailures": []}), container.log_tail()
    mask = mask_of(s3, bucket, "scenes/2024/tile-a.npy")
    assert mask.shape == (64, 64)
    # AND the runtime is back to waiting for the next event: the container stays warm
    container.api.wait_for(lambda: container.api.polls >= 2, 10, "the next poll")
    assert container.process.poll() is None


def test_only_the_failing_records_go_back_to_the_queue(container, s3, bucket, upload, sqs_batch):
    # GIVEN a batch of three uploads where S3 refuses two: expired credentials and a forbidden HEAD
    good = upload("scenes/2024/tile-b.tif")
    expired = upload(f"scenes/2024/{EXPIRED_KEY_PART}.tif")
    denied = upload(f"scenes/2024/{DENIED_KEY_PART}.tiff")
    # WHEN the runtime handles the batch
    kind, body = container.invoke(sqs_batch(good, expired, denied), RESULT_TIMEOUT_S)
    # THEN the response names exactly the two failed messages, so SQS redelivers only those
    assert kind == "response", body
    failed = sorted(item["itemIdentifier"] for item in body["batchItemFailures"])
    assert failed == ["message-1", "message-2"], container.log_tail()
    # ...for the injected reasons: a transient S3 error and a deployment (permission) fault
    log = container.log_path.read_text()
    failures = [line for line in log.splitlines() if '"level":"ERROR"' in line]
    assert any(EXPIRED_KEY_PART in line and "ExpiredToken" in line for line in failures), log
    assert any(DENIED_KEY_PART in line and "HeadObject" in line and "403" in line for line in failures), log
    # AND the good record's mask is written, and nothing is written for the failed ones
    assert mask_of(s3, bucket, "scenes/2024/tile-b.npy").shape == (64, 64)
    assert not exists(s3, bucket, f"scenes/2024/{EXPIRED_KEY_PART}.npy")
    assert not exists(s3, bucket, f"scenes/2024/{DENIED_KEY_PART}.npy")
    assert not exists(s3, bucket, f"scenes/2024/{EXPIRED_KEY_PART}.error.json")  # not the user's fault


def test_unsupported_files_are_acknowledged_not_retried(container, s3, bucket, sqs_batch):
    # GIVEN an event for an object that is not a raster suffix the function handles (and S3's test event)
    s3.put_object(Bucket=bucket, Key="scenes/notes.txt", Body=b"hello")
    notes = {"key": "scenes/notes.txt", "size": 5}
    # WHEN handled THEN it is skipped without failing the batch (retrying it could never succeed)
    kind, body = container.invoke(sqs_batch(notes), RESULT_TIMEOUT_S)
    assert (kind, body) == ("response", {"batchItemFailures": []}), container.log_tail()
    assert not exists(s3, bucket, "scenes/notes.npy")


def test_a_bad_model_card_fails_init_and_the_runtime_exits(s3_endpoint, tmp_path):
    # GIVEN a deployment whose MODEL_CARD does not exist
    missing = tmp_path / "missing.json"
    # WHEN the container starts
    with start_container({"MODEL_CARD": str(missing)}, s3_endpoint, missing, tmp_path) as running:
        # THEN the runtime reports an init error to Lambda, naming the card, and exits non-zero
        running.api.wait_for(lambda: running.api.init_errors, RESULT_TIMEOUT_S, "an init error")
        assert running.process.wait(timeout=30) != 0
    (error_type, document) = running.api.init_errors[0]
    assert error_type
    assert "missing.json" in json.dumps(document)
    assert running.api.polls == 0  # it never asked for an event
