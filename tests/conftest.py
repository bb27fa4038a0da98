"""Shared pytest fixtures. Append new fixtures; do not rewrite others'."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

# --- Event factories (events helper): the smallest realistic envelopes, for tests/test_events.py and others.

EVENT_BUCKET = "rasterfn-demo"


@pytest.fixture
def make_s3_record() -> Callable[..., dict[str, Any]]:
    """``make_s3_record("a+b.tif", event_name="ObjectRemoved:Delete", size=None)``: one S3 record."""

    def make(
        key: str,
        event_name: str = "ObjectCreated:Put",
        bucket: str = EVENT_BUCKET,
        event_source: str = "aws:s3",
        size: int | None = 1024,
        **object_fields: Any,
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {"key": key, "sequencer": "0065F2A1B3C4D5E6F7", **object_fields}
        if size is not None:
            obj |= {"size": size, "eTag": "5b7a7a3b2c0d0e3f1a9d8c6b4e2f1a07"}
        return {
            "eventVersion": "2.1",
            "eventSource": event_source,
            "awsRegion": "us-east-1",
            "eventTime": "2024-06-12T09:41:27.512Z",
            "eventName": event_name,
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "rasterfn",
                "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                "object": obj,
            },
        }

    return make


@pytest.fixture
def make_s3_event(make_s3_record) -> Callable[..., dict[str, Any]]:
    """``make_s3_event("a.tif", "b.tif")``: one S3 notification with a record per key."""

    def make(*keys: str, **record_fields: Any) -> dict[str, Any]:
        return {"Records": [make_s3_record(key, **record_fields) for key in keys]}

    return make


@pytest.fixture
def make_sqs_event() -> Callable[..., dict[str, Any]]:
    """``make_sqs_event(body1, body2)``: an SQS batch for Lambda; dict bodies are JSON-encoded."""

    def make(*bodies: str | dict[str, Any]) -> dict[str, Any]:
        records = []
        for index, body in enumerate(bodies):
            text = body if isinstance(body, str) else json.dumps(body)
            records.append(
                {
                    "messageId": f"00000000-0000-4000-8000-{index:012d}",
                    "receiptHandle": f"receipt-{index}",
                    "body": text,
                    "attributes": {"ApproximateReceiveCount": "1"},
                    "messageAttributes": {},
                    "md5OfBody": "",
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:rasterfn-uploads",
                    "awsRegion": "us-east-1",
                }
            )
        return {"Records": records}

    return make


@pytest.fixture
def make_eventbridge_event() -> Callable[..., dict[str, Any]]:
    """``make_eventbridge_event("a.tif", detail_type="Object Deleted", reason="DeleteObject")``."""

    def make(
        key: str,
        detail_type: str = "Object Created",
        reason: str | None = "PutObject",
        bucket: str = EVENT_BUCKET,
        source: str = "aws.s3",
        **object_fields: Any,
    ) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, **object_fields},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
        }
        if reason is not None:
            detail["reason"] = reason
        return {
            "version": "0",
            "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": detail_type,
            "source": source,
            "account": "123456789012",
            "time": "2024-06-12T09:41:27Z",
            "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": detail,
        }

    return make


# --- AWS sandbox (handler-runtime helper): fake credentials everywhere, S3/SQS from moto's real HTTP server.

# Nothing listens on the discard port: a test that forgets `moto_endpoint` fails fast instead of reaching AWS.
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch, tmp_path_factory) -> None:
    """Fake credentials, us-east-1 and an unreachable endpoint for every test: none can touch a real cloud."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": UNREACHABLE_ENDPOINT,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def moto_server() -> Any:
    """One moto server (S3, SQS, ...) on a free 127.0.0.1 port for the whole session; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_endpoint(moto_server, monkeypatch) -> str:
    """Points boto3 (``AWS_ENDPOINT_URL``) at the moto server for this test; returns the URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


@pytest.fixture
def s3_client(moto_endpoint) -> Any:
    """A plain boto3 S3 client on moto: the "user" side of a test (uploads, checks)."""
    import boto3

    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def make_bucket(s3_client) -> Callable[..., str]:
    """``make_bucket(versioned=False)``: a new, uniquely named bucket on moto; returns its name."""
    import uuid

    def make(versioned: bool = False) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        s3_client.create_bucket(Bucket=name)
        if versioned:
            s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    return make
