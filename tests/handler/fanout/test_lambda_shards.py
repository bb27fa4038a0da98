"""Shard messages on Lambda: on a message's last allowed receive a shard runs in a child process, and a shard that
kills that process ends its job (``<stem>.error.json``, no ``.npy``) instead of waiting in the dead-letter queue.

The crash is a real SIGABRT in the child (tests/fixtures/crash.py); the queue is moto's SQS.
"""

from __future__ import annotations

import functools
import importlib
import json
import uuid

import boto3
import pytest

from handler.fanout.jobs import JobStore
from handler.isolation import run_isolated
from handler.local.lambda_context import make_context
from handler.objects import ObjectRef
from handler.outcome import OutcomeStatus
from handler.process import process_object
from handler.storage import Storage
from tests.fixtures.crash import crash_on_shard

KEY = "scenes/big.tif"


@pytest.fixture
def lambda_fn(tiny_model_card, monkeypatch):
    from handler.runtime import get_runtime
    from handler.settings import get_settings

    monkeypatch.setenv("MODEL_CARD", str(tiny_model_card))
    get_settings.cache_clear()
    get_runtime.cache_clear()
    yield importlib.import_module("handler.lambda_function")
    get_settings.cache_clear()
    get_runtime.cache_clear()


@pytest.fixture
def start_job(small_parts, lambda_fn, make_runtime, make_bucket, s3_client, moto_endpoint, monkeypatch):
    """``start_job(body)``: ``body`` fanned out on moto -> ``(bucket, its stats message bodies from real SQS)``."""
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName=f"shards-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    runtime = make_runtime(
        fanout_threshold_seconds=0, fanout_max_shards=3, fanout_queue_url=queue_url, min_remaining_ms=0
    )
    monkeypatch.setattr(lambda_fn, "get_runtime", lambda: runtime)
    # The child process aborts in any shard's pass over its rows; this process does not.
    monkeypatch.setattr(lambda_fn, "run_isolated", functools.partial(run_isolated, init=crash_on_shard))

    def start(body: bytes) -> tuple[str, list[str]]:
        bucket = make_bucket()
        s3_client.put_object(Bucket=bucket, Key=KEY, Body=body)
        assert process_object(ObjectRef(bucket, KEY), runtime).status is OutcomeStatus.FANNED_OUT
        received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
        assert len(received) == 3
        return bucket, [m["Body"] for m in received]

    return start


@pytest.fixture
def job(start_job, make_raster):
    """A fanned-out good upload: ``(bucket, its stats message bodies)``."""
    return start_job(make_raster(300, 70).read_bytes())


def on_receive(event: dict, count: int) -> dict:
    for record in event["Records"]:
        record["attributes"]["ApproximateReceiveCount"] = str(count)
    return event


def test_a_shard_that_crashes_the_runtime_on_its_last_receive_ends_the_job(lambda_fn, job, s3_client, make_sqs_event):
    bucket, bodies = job
    # GIVEN one stats shard done in process (an earlier receive: no child, no crash)
    assert lambda_fn.lambda_handler(on_receive(make_sqs_event(bodies[0]), 1), make_context()) == {
        "batchItemFailures": []
    }
    # WHEN another arrives for the last time (MAX_RECEIVE_COUNT=3) and kills the child that runs it
    assert lambda_fn.lambda_handler(on_receive(make_sqs_event(bodies[1]), 3), make_context()) == {
        "batchItemFailures": []
    }
    # THEN the record is acknowledged and the job is over: the marker beside the input, no .npy, no open upload
    marker = json.loads(s3_client.get_object(Bucket=bucket, Key="scenes/big.error.json")["Body"].read())
    assert marker["error"] == "WorkerCrashedError" and "SIGABRT" in marker["message"]
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket, Prefix="scenes/big.npy")
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    job_id = json.loads(bodies[1])["rasterfn-shard"]["job"]
    assert JobStore(Storage(s3_client), bucket, job_id).failure().error == "WorkerCrashedError"
    # and the remaining shard, delivered later, does nothing
    event = on_receive(make_sqs_event(bodies[2]), 1)
    assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket, Prefix="scenes/big.npy")


@pytest.mark.parametrize("receive", [1, 3])
def test_a_good_shard_runs_in_process_or_in_a_child_with_the_same_result(
    lambda_fn, job, s3_client, make_sqs_event, monkeypatch, receive
):
    bucket, bodies = job
    monkeypatch.setattr(lambda_fn, "run_isolated", run_isolated)  # a child without the crash hook
    event = on_receive(make_sqs_event(bodies[0]), receive)
    assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    shard = json.loads(bodies[0])["rasterfn-shard"]
    assert JobStore(Storage(s3_client), bucket, shard["job"]).has_histograms(shard["index"])


def test_unreadable_rows_are_retried_once_then_judged(
    lambda_fn, start_job, corrupt_raster_body, s3_client, make_sqs_event, monkeypatch
):
    monkeypatch.setattr(lambda_fn, "run_isolated", run_isolated)  # a child without the crash hook
    bucket, bodies = start_job(corrupt_raster_body)
    event = make_sqs_event(bodies[-1])  # the band over the overwritten blocks
    # an early receive: the rows may have failed to fetch, so the record is failed for one retry, no marker yet
    assert len(lambda_fn.lambda_handler(on_receive(event, 1), make_context())["batchItemFailures"]) == 1
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket, Prefix="scenes/big.error.json")
    # the retry fails the same way: now it is the file's, and the job ends with the marker
    assert lambda_fn.lambda_handler(on_receive(event, 2), make_context()) == {"batchItemFailures": []}
    marker = json.loads(s3_client.get_object(Bucket=bucket, Key="scenes/big.error.json")["Body"].read())
    assert marker["error"] == "RasterReadError"


def test_unreadable_rows_on_the_last_receive_are_judged_at_once(
    lambda_fn, start_job, corrupt_raster_body, s3_client, make_sqs_event, monkeypatch
):
    # no retry can come after the last allowed receive: failing the record would only park the job in the DLQ
    monkeypatch.setattr(lambda_fn, "run_isolated", run_isolated)
    bucket, bodies = start_job(corrupt_raster_body)
    event = on_receive(make_sqs_event(bodies[-1]), 3)
    assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    marker = json.loads(s3_client.get_object(Bucket=bucket, Key="scenes/big.error.json")["Body"].read())
    assert marker["error"] == "RasterReadError"
