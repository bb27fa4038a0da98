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
