"""The local SQS event-source mapping behaves like Lambda's: event shape, deletes, partial batch failures,
whole-batch retries, timeouts and dead-lettering through the queue's redrive policy."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from handler.local.local_esm import (
    EsmConfig,
    LocalEventSourceMapping,
    build_sqs_event,
    failed_message_ids,
    to_lambda_record,
)
from handler.local.moto_stack import queue_depth

VISIBILITY_S = 1
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:q"


@pytest.fixture
def sqs(moto_endpoint):
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def make_queue(sqs) -> Callable[..., tuple[str, str, str]]:
    """``make_queue(max_receive_count=2)``: a queue (visibility 1 s) with a DLQ; (url, arn, dlq_url)."""

    def make(max_receive_count: int = 2) -> tuple[str, str, str]:
        name = f"esm-{uuid.uuid4().hex[:10]}"
        dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count})
        url = sqs.create_queue(
            QueueName=name, Attributes={"VisibilityTimeout": str(VISIBILITY_S), "RedrivePolicy": redrive}
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, arn, dlq

    return make


class RecordingHandler:
    """A fake ``lambda_handler``: records what it got and answers with ``respond(event, context)``."""

    def __init__(self, respond: Callable[[dict, Any], Any] = lambda event, context: None) -> None:
        self.respond = respond
        self.bodies: list[str] = []
        self.receive_counts: Counter[str] = Counter()
        self.contexts: list[Any] = []

    def __call__(self, event: dict, context: Any) -> Any:
        self.contexts.append(context)
        for record in event["Records"]:
            self.bodies.append(record["body"])
            self.receive_counts[record["body"]] = int(record["attributes"]["ApproximateReceiveCount"])
        return self.respond(event, context)


def fail_bodies(*bad: str) -> Callable[[dict, Any], dict]:
    def respond(event: dict, context: Any) -> dict:
        failures = [{"itemIdentifier": r["messageId"]} for r in event["Records"] if r["body"] in bad]
        return {"batchItemFailures": failures}

    return respond


def poll_until_quiet(esm: LocalEventSourceMapping, polls: int = 3) -> None:
    """Poll until ``polls`` polls in a row got nothing (wait_time_s=0 makes each immediate)."""
    quiet = 0
    while quiet < polls:
        quiet = quiet + 1 if esm.poll_once() is None else 0


def send(sqs, url: str, *bodies: str) -> None:
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)


def make_esm(sqs, url: str, arn: str, handler, **config: Any) -> LocalEventSourceMapping:
    config = {"batch_size": 10, **config}  # real multi-message batches (Terraform's default is 1)
    return LocalEventSourceMapping(sqs, EsmConfig(url, arn, wait_time_s=0, **config), handler)


# --- pure parts -----------------------------------------------------------------------------------


def test_lambda_record_has_the_fields_lambda_delivers():
    # GIVEN a message as ReceiveMessage returns it, with a string and a binary attribute
    message = {
        "MessageId": "m-1",
        "ReceiptHandle": "rh-1",
        "MD5OfBody": "abc",
        "Body": '{"x": 1}',
        "Attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": "1718185287601"},
        "MD5OfMessageAttributes": "def",
        "MessageAttributes": {
            "trace": {"StringValue": "t-1", "DataType": "String"},
            "blob": {"BinaryValue": b"\x00\x01", "DataType": "Binary"},
        },
    }
    # WHEN it becomes a Lambda record
    record = to_lambda_record(message, QUEUE_ARN, "eu-west-1")
    # THEN it has Lambda's names and shapes
    assert record["messageId"] == "m-1" and record["receiptHandle"] == "rh-1" and record["body"] == '{"x": 1}'
    assert record["attributes"]["ApproximateReceiveCount"] == "2"
    assert record["md5OfBody"] == "abc" and record["md5OfMessageAttributes"] == "def"
    assert (record["eventSource"], record["eventSourceARN"], record["awsRegion"]) == (
        "aws:sqs",
        QUEUE_ARN,
        "eu-west-1",
    )
    assert record["messageAttributes"]["trace"] == {
        "stringValue": "t-1",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }
    assert base64.b64decode(record["messageAttributes"]["blob"]["binaryValue"]) == b"\x00\x01"


def test_built_event_parses_with_powertools():
    from aws_lambda_powertools.utilities.data_classes import SQSEvent

    message = {"MessageId": "m", "ReceiptHandle": "r", "Body": "b", "MD5OfBody": "x", "Attributes": {}}
    event = SQSEvent(build_sqs_event([message], QUEUE_ARN, "us-east-1"))
    [record] = list(event.records)
    assert (record.message_id, record.body, record.event_source_arn) == ("m", "b", QUEUE_ARN)


@pytest.mark.parametrize(
    ("response", "failed", "whole_batch"),
    [
        (None, set(), False),
        ({}, set(), False),
        ("ok", set(), False),
        ({"batchItemFailures": []}, set(), False),
        ({"batchItemFailures": None}, set(), False),
        ({"batchItemFailures": [{"itemIdentifier": "b"}]}, {"b"}, False),
        ({"batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "b"}]}, {"a", "b"}, False),
        ({"batchItemFailures": [{"itemIdentifier": "zz"}]}, {"a", "b"}, True),
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, {"a", "b"}, True),
        ({"batchItemFailures": [{"id": "a"}]}, {"a", "b"}, True),
        ({"batchItemFailures": "a"}, {"a", "b"}, True),
    ],
)
def test_failed_message_ids_follow_aws_rules(response, failed, whole_batch):
    got, problem = failed_message_ids(response, ["a", "b"])
    assert got == failed
    assert (problem is not None) is whole_batch


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 11}, {"wait_time_s": 21}, {"wait_time_s": -1}])
def test_invalid_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        EsmConfig("url", "arn", **kwargs)


# --- against moto's SQS ---------------------------------------------------------------------------


def test_successful_batch_is_deleted_and_context_is_realistic(sqs, make_queue):
    # GIVEN three messages and a handler that succeeds
    url, arn, _ = make_queue()
    send(sqs, url, "a", "b", "c")
    handler = RecordingHandler()
    esm = make_esm(sqs, url, arn, handler, function_timeout_s=30, function_name="fn")
    # WHEN the ESM polls until the queue is quiet
    poll_until_quiet(esm)
    # THEN each message was delivered once and deleted
    assert sorted(handler.bodies) == ["a", "b", "c"]
    assert queue_depth(sqs, url) == 0
    assert all(inv.ok for inv in esm.invocations)
    # AND the context looks like Lambda's, with a deadline at the function timeout
    ctx = handler.contexts[0]
    assert ctx.function_name == "fn" and ctx.invoked_function_arn.endswith(":function:fn")
    assert 0 < ctx.get_remaining_time_in_millis() <= 30_000
    assert len({c.aws_request_id for c in handler.contexts}) == len(handler.contexts)


def test_batch_item_failures_are_redelivered_after_the_visibility_timeout(sqs, make_queue):
    # GIVEN a handler that reports "b" as failed on its first delivery only
    url, arn, _ = make_queue(max_receive_count=5)
    send(sqs, url, "a", "b", "c")

    def respond(event, context):
        return fail_bodies("b")(event, context) if handler.receive_counts["b"] == 1 else {}

    handler = RecordingHandler(respond)
    esm = make_esm(sqs, url, arn, handler)
    # WHEN the ESM polls
    poll_until_quiet(esm)
    # THEN "a" and "c" were deleted, "b" is in flight (invisible), not lost
    assert sorted(handler.bodies) == ["a", "b", "c"]
    assert max(len(inv.message_ids) for inv in esm.invocations) > 1  # a partial batch failure, not 3 calls
    failed = [i for inv in esm.invocations for i in inv.failed_ids]
    assert len(failed) == 1
    assert queue_depth(sqs, url) == 1
    # WHEN the visibility timeout has passed
    time.sleep(VISIBILITY_S + 0.2)
    poll_until_quiet(esm)
    # THEN only "b" came back, as its second receive, and now it is deleted too
    assert sorted(handler.bodies) == ["a", "b", "b", "c"]
    assert handler.receive_counts["b"] == 2
    assert queue_depth(sqs, url) == 0


def test_messages_are_dead_lettered_after_max_receive_count(sqs, make_queue):
    # GIVEN a handler that always raises, and a queue redriving after 2 receives
    url, arn, dlq = make_queue(max_receive_count=2)
    send(sqs, url, "poison-1", "poison-2")

    def explode(event, context):
        raise RuntimeError("always fails")

    handler = RecordingHandler(explode)
    esm = make_esm(sqs, url, arn, handler)
    # WHEN the ESM keeps polling across visibility timeouts
    deadline = time.monotonic() + 10
    while queue_depth(sqs, dlq) < 2 and time.monotonic() < deadline:
        poll_until_quiet(esm, polls=1)
        time.sleep(VISIBILITY_S + 0.1)
    # THEN each message was tried exactly maxReceiveCount times, then landed in the DLQ
    assert Counter(handler.bodies) == {"poison-1": 2, "poison-2": 2}
    assert queue_depth(sqs, url) == 0
    assert queue_depth(sqs, dlq) == 2
    assert all(inv.error and "always fails" in inv.error and not inv.deleted_ids for inv in esm.invocations)


def test_invalid_response_fails_the_whole_batch(sqs, make_queue):
    # GIVEN a handler naming a message id that is not in the batch
    url, arn, _ = make_queue()
    send(sqs, url, "a", "b")
    esm = make_esm(sqs, url, arn, RecordingHandler(lambda e, c: {"batchItemFailures": [{"itemIdentifier": "x"}]}))
    # WHEN it is invoked
    poll_until_quiet(esm)
    # THEN nothing was deleted and the invocation says why
    assert queue_depth(sqs, url) == 2
    assert all("unknown itemIdentifier" in inv.error for inv in esm.invocations)


def test_overrunning_the_timeout_fails_the_whole_batch(sqs, make_queue):
    # GIVEN a handler slower than the function timeout
    url, arn, _ = make_queue()
    send(sqs, url, "slow")
    esm = make_esm(sqs, url, arn, RecordingHandler(lambda e, c: time.sleep(0.2)), function_timeout_s=0.05)
    # WHEN it is invoked
    [inv] = [esm.poll_once()]
    # THEN it counts as "Task timed out" and the message stays for a retry
    assert inv.error.startswith("Task timed out") and inv.deleted_ids == ()
    assert queue_depth(sqs, url) == 1


def test_without_report_batch_item_failures_the_response_is_ignored(sqs, make_queue):
    url, arn, _ = make_queue()
    send(sqs, url, "a")
    esm = make_esm(sqs, url, arn, RecordingHandler(fail_bodies("a")), report_batch_item_failures=False)
    poll_until_quiet(esm)
    assert queue_depth(sqs, url) == 0


def test_background_thread_processes_messages_and_stops_promptly(sqs, make_queue):
    # GIVEN a running ESM in its thread (long-poll 1 s) with callbacks
    url, arn, _ = make_queue()
    handler = RecordingHandler()
    received, results = [], []
    esm = LocalEventSourceMapping(
        sqs,
        EsmConfig(url, arn, wait_time_s=1, batch_size=10),
        handler,
        on_receive=received.append,
        on_result=results.append,
    )
    with esm:
        # WHEN messages arrive
        send(sqs, url, *[f"m{i}" for i in range(12)])
        deadline = time.monotonic() + 10
        while len(handler.bodies) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
    # THEN all are processed in batches of at most 10, callbacks saw each, and stop() returned quickly
    assert sorted(handler.bodies) == sorted(f"m{i}" for i in range(12))
    assert all(len(event["Records"]) <= 10 for event in received)
    assert sum(len(r.deleted_ids) for r in results) == 12
    assert time.monotonic() - t0 < 3
