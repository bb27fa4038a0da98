"""handler/lambda_function.py: SQS partial batches, direct events, the time guard, metrics and start-up."""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import subprocess
import sys
from urllib.parse import quote_plus

import pytest

from handler.errors import EventError, TransientError
from handler.local.lambda_context import make_context
from tests.fixtures.aws import count_calls, keys_in

MIN_REMAINING_MS = 60_000


@pytest.fixture
def lambda_fn(monkeypatch, tiny_model_card, make_runtime):
    """The Lambda module, imported with the tiny model card, answering with a one-S3-attempt runtime."""
    from handler.runtime import get_runtime
    from handler.settings import get_settings

    monkeypatch.setenv("MODEL_CARD", str(tiny_model_card))
    get_settings.cache_clear()
    get_runtime.cache_clear()
    module = importlib.import_module("handler.lambda_function")
    runtime = make_runtime(min_remaining_ms=MIN_REMAINING_MS)
    monkeypatch.setattr(module, "get_runtime", lambda: runtime)
    yield module
    get_settings.cache_clear()
    get_runtime.cache_clear()


@pytest.fixture
def runtime(lambda_fn):
    return lambda_fn.get_runtime()


@pytest.fixture
def s3_body(make_s3_event):
    """``s3_body(bucket, key, put)``: the S3 notification S3 would send for that upload (key URL-encoded)."""

    def make(bucket: str, key: str, put: dict | None = None) -> dict:
        fields = {"eTag": put["ETag"].strip('"')} if put else {}
        return make_s3_event(quote_plus(key, safe="/"), bucket=bucket, size=None, **fields)

    return make


class Clock:
    """A settable monotonic clock for the fake context's deadline."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- SQS batches


def test_sqs_batch_writes_outputs_and_reports_no_failures(
    lambda_fn, bucket, s3_client, upload_raster, make_sqs_event, s3_body
):
    put = upload_raster(bucket, "in/a.tif")
    event = make_sqs_event(s3_body(bucket, "in/a.tif", put))
    assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    assert keys_in(s3_client, bucket) == {"in/a.tif", "in/a.npy"}


@pytest.mark.parametrize("key", ["dir/my scene+v2 é.tif", "100% (final)/a&b=c.TIF"])
def test_keys_with_spaces_unicode_and_plus_work_end_to_end(
    lambda_fn, bucket, s3_client, upload_raster, make_sqs_event, s3_body, key
):
    put = upload_raster(bucket, key)
    event = make_sqs_event(s3_body(bucket, key, put))
    assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    assert keys_in(s3_client, bucket) == {key, key.rsplit(".", 1)[0] + ".npy"}


def test_second_delivery_is_a_duplicate(lambda_fn, runtime, bucket, s3_client, upload_raster, make_sqs_event, s3_body):
    put = upload_raster(bucket, "d.tif")
    event = make_sqs_event(s3_body(bucket, "d.tif", put))
    lambda_fn.lambda_handler(event, make_context())
    first = s3_client.head_object(Bucket=bucket, Key="d.npy")["LastModified"]
    puts = count_calls(runtime.storage.client, "PutObject")
    assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    assert puts == []
    assert s3_client.head_object(Bucket=bucket, Key="d.npy")["LastModified"] == first


def test_bad_raster_is_acknowledged_not_retried(lambda_fn, bucket, s3_client, upload_raster, make_sqs_event, s3_body):
    put = upload_raster(bucket, "bad.tif", body=b"\x89PNG\r\n\x1a\nnot a tiff")
    event = make_sqs_event(s3_body(bucket, "bad.tif", put))
    assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    assert keys_in(s3_client, bucket) == {"bad.tif", "bad.error.json"}
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key="bad.error.json")["Body"].read())
    assert doc["error"] == "RasterReadError"


def test_transient_failure_fails_only_its_record_and_a_redelivery_writes_it(
    lambda_fn, runtime, bucket, s3_client, upload_raster, make_sqs_event, s3_body, inject_s3_fault
):
    # GIVEN a batch of two uploads, and S3 throttling the first PutObject of one output
    flaky, good = upload_raster(bucket, "flaky.tif", seed=1), upload_raster(bucket, "good.tif", seed=2)
    event = make_sqs_event(s3_body(bucket, "flaky.tif", flaky), s3_body(bucket, "good.tif", good))
    fault = inject_s3_fault(runtime.storage.client, "PutObject", times=1, key_contains="flaky.npy")
    # WHEN the batch runs
    response = lambda_fn.lambda_handler(event, make_context())
    # THEN only the flaky record is handed back, and the good one is written
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert fault["failed"] == 1
    assert keys_in(s3_client, bucket) == {"flaky.tif", "good.tif", "good.npy"}
    # AND SQS redelivering the failed record writes its output
    retry = {"Records": [event["Records"][0]]}
    assert lambda_fn.lambda_handler(retry, make_context()) == {"batchItemFailures": []}
    assert keys_in(s3_client, bucket) == {"flaky.tif", "good.tif", "good.npy", "flaky.npy"}


def test_vanished_object_is_acknowledged(lambda_fn, bucket, s3_client, make_sqs_event, s3_body):
    event = make_sqs_event(s3_body(bucket, "gone.tif"))
    assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    assert keys_in(s3_client, bucket) == set()


def test_unreadable_body_is_failed_for_the_dead_letter_queue(lambda_fn, bucket, make_sqs_event, s3_body):
    event = make_sqs_event("this is not json", {"Service": "Amazon S3", "Event": "s3:TestEvent"})
    response = lambda_fn.lambda_handler(event, make_context())
    # The S3 test event is acknowledged; the garbage is handed back (and dead-lettered after maxReceiveCount)
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}


def test_time_guard_fails_records_unprocessed(
    lambda_fn, runtime, bucket, s3_client, upload_raster, make_sqs_event, s3_body
):
    # GIVEN an invocation with less time left than MIN_REMAINING_MS
    put = upload_raster(bucket, "late.tif")
    event = make_sqs_event(s3_body(bucket, "late.tif", put), s3_body(bucket, "late.tif", put))
    heads = count_calls(runtime.storage.client, "HeadObject")
    context = make_context(timeout_s=(MIN_REMAINING_MS - 1000) / 1000)
    # WHEN the batch arrives THEN every record is handed back untouched
    response = lambda_fn.lambda_handler(event, context)
    assert response == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}
    assert heads == []
    assert keys_in(s3_client, bucket) == {"late.tif"}


def test_time_guard_stops_taking_records_mid_batch(
    lambda_fn, runtime, bucket, s3_client, upload_raster, make_sqs_event, s3_body
):
    # GIVEN a batch of three where the first object uses up the invocation's time
    puts = [upload_raster(bucket, f"{name}.tif", seed=i) for i, name in enumerate("abc")]
    event = make_sqs_event(*(s3_body(bucket, f"{name}.tif", p) for name, p in zip("abc", puts, strict=True)))
    clock = Clock()
    context = make_context(timeout_s=MIN_REMAINING_MS / 1000 + 5, clock=clock)

    def spend_time(**_):
        clock.now += 10

    runtime.storage.client.meta.events.register("after-call.s3.PutObject", spend_time)
    # WHEN it runs THEN the first is written and the other two are handed back without processing
    response = lambda_fn.lambda_handler(event, context)
    assert response == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"][1:]]}
    assert keys_in(s3_client, bucket) == {"a.tif", "b.tif", "c.tif", "a.npy"}


# --- other envelopes


def test_direct_s3_notification_returns_a_summary(lambda_fn, bucket, s3_client, upload_raster, s3_body):
    put = upload_raster(bucket, "n.tif")
    upload_raster(bucket, "bad.tif", body=b"nope")
    event = {"Records": s3_body(bucket, "n.tif", put)["Records"] + s3_body(bucket, "bad.tif")["Records"]}
    summary = lambda_fn.lambda_handler(event, make_context())
    assert summary["counts"] == {"written": 1, "rejected": 1}
    assert [o["output_key"] for o in summary["outcomes"]] == ["n.npy", "bad.error.json"]
    json.dumps(summary)


def test_direct_invoke_and_eventbridge(lambda_fn, bucket, upload_raster, make_eventbridge_event):
    upload_raster(bucket, "x.tif")
    assert lambda_fn.lambda_handler({"bucket": bucket, "key": "x.tif"}, make_context())["counts"] == {"written": 1}
    summary = lambda_fn.lambda_handler(make_eventbridge_event("x.tif", bucket=bucket), make_context())
    assert summary["counts"] == {"duplicate": 1}


def test_direct_event_transient_failure_raises(lambda_fn, runtime, bucket, upload_raster, inject_s3_fault):
    upload_raster(bucket, "t.tif")
    inject_s3_fault(runtime.storage.client, "PutObject", times=1)
    with pytest.raises(TransientError):
        lambda_fn.lambda_handler({"bucket": bucket, "key": "t.tif"}, make_context())


def test_direct_event_time_guard_raises(lambda_fn, bucket):
    with pytest.raises(TransientError, match="MIN_REMAINING_MS"):
        lambda_fn.lambda_handler({"bucket": bucket, "key": "t.tif"}, make_context(timeout_s=1))


def test_http_style_event_with_binary_cloudevent(lambda_fn, bucket, upload_raster):
    # What `rasterfn replay` sends for a saved HTTP request: function-URL shape, CloudEvent attributes as headers
    upload_raster(bucket, "ce.tif")
    headers = {"ce-specversion": "1.0", "ce-type": "com.amazonaws.s3.ObjectCreated:Put", "ce-id": "1"}
    headers |= {"ce-source": "minio", "Content-Type": "application/json"}
    body = json.dumps({"bucket": bucket, "key": "ce.tif"})
    event = {"headers": headers, "body": base64.b64encode(body.encode()).decode(), "isBase64Encoded": True}
    assert lambda_fn.lambda_handler(event, make_context())["counts"] == {"written": 1}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"headers": {"a": "b"}, "body": "{}"}, ("{}", {"a": "b"})),
        ({"headers": {}, "body": "e30=", "isBase64Encoded": True}, (b"{}", {})),
        ({"headers": {}, "body": None}, ("", {})),
        ({"bucket": "b", "key": "k"}, ({"bucket": "b", "key": "k"}, None)),
    ],
)
def test_unwrap_http_event(lambda_fn, event, expected):
    assert lambda_fn.unwrap_http_event(event) == expected


def test_unknown_event_shape_raises_event_error(lambda_fn):
    with pytest.raises(EventError):
        lambda_fn.lambda_handler({"hello": "world"}, make_context())


# --- observability


def test_metrics_and_logs(lambda_fn, bucket, upload_raster, make_sqs_event, s3_body, capsys, monkeypatch):
    # The Logger keeps the stdout it saw at import; point its handler at a buffer for this test.
    log_buffer = io.StringIO()
    monkeypatch.setattr(lambda_fn.logger.registered_handler, "stream", log_buffer)
    put = upload_raster(bucket, "m.tif")
    upload_raster(bucket, "r.tif", body=b"junk")
    lambda_fn.lambda_handler(make_sqs_event(s3_body(bucket, "m.tif", put), s3_body(bucket, "r.tif")), make_context())
    out = capsys.readouterr().out
    blobs = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    values = {k: v[0] if isinstance(v, list) else v for blob in blobs for k, v in blob.items()}
    namespaces = {m["Namespace"] for blob in blobs for m in blob["_aws"]["CloudWatchMetrics"]}
    assert namespaces == {os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "rasterfn")}
    assert values["ObjectsProcessed"] == 1 and values["ObjectsRejected"] == 1
    assert values["Pixels"] == 64 * 64 and values["BytesIn"] > 0 and values["BytesOut"] > 0
    assert values["InferenceSeconds"] > 0
    logs = [json.loads(line) for line in log_buffer.getvalue().splitlines()]
    assert {log["service"] for log in logs} == {os.environ.get("POWERTOOLS_SERVICE_NAME", "rasterfn")}
    assert {log["status"] for log in logs if "status" in log} == {"written", "rejected"}


def test_tracer_is_off_outside_lambda(lambda_fn):
    # No LAMBDA_TASK_ROOT here: powertools disables the Tracer, so nothing looks for an X-Ray daemon
    assert "LAMBDA_TASK_ROOT" not in os.environ
    assert lambda_fn.tracer.disabled


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"Records": [{"responseElements": {"x-amz-request-id": "REQ1"}}]}, "REQ1"),
        ({"id": "eb-1", "detail": {}}, "eb-1"),
        ({"Records": [{"messageId": "m1", "eventSource": "aws:sqs"}]}, None),
        ({"bucket": "b", "key": "k"}, None),
        ("not a mapping", None),
    ],
)
def test_correlation_id_of(lambda_fn, event, expected):
    assert lambda_fn.correlation_id_of(event) == expected


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"Records": [{"eventSource": "aws:sqs"}, {"eventSource": "aws:sqs"}]}, True),
        ({"Records": [{"eventSource": "aws:s3"}]}, False),
        ({"Records": []}, False),
        ({"bucket": "b"}, False),
    ],
)
def test_is_sqs_batch(lambda_fn, event, expected):
    assert lambda_fn.is_sqs_batch(event) is expected


# --- start-up


def test_invalid_settings_fail_at_import_with_a_clear_message(tiny_model_card, tmp_path):
    # GIVEN a deployment with a bad PRECISION WHEN Lambda imports the handler (its INIT phase)
    env = {**os.environ, "MODEL_CARD": str(tiny_model_card), "PRECISION": "fp64"}
    proc = subprocess.run(
        [sys.executable, "-c", "import handler.lambda_function"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.getcwd(),
    )
    # THEN the import fails, naming the variable and the allowed values
    assert proc.returncode != 0
    assert "ConfigError" in proc.stderr and "PRECISION must be one of" in proc.stderr


# --- crash isolation on the last allowed receive, and the record cap (issue 9)


def on_receive(event: dict, count: int) -> dict:
    for record in event["Records"]:
        record["attributes"]["ApproximateReceiveCount"] = str(count)
    return event


@pytest.fixture
def crashing_isolation(lambda_fn, monkeypatch):
    """The Lambda's child process, with the test hook that aborts on the crash marker (a real SIGABRT)."""
    import functools

    from handler.isolation import run_isolated
    from tests.fixtures.crash import crash_on_marker

    calls: list[object] = []

    def isolated(settings, job):
        calls.append(job)
        return functools.partial(run_isolated, init=crash_on_marker)(settings, job)

    monkeypatch.setattr(lambda_fn, "run_isolated", isolated)
    return calls


def test_a_file_that_crashes_the_runtime_gets_a_marker_on_its_last_receive_not_a_dlq_entry(
    lambda_fn, crashing_isolation, bucket, s3_client, upload_raster, make_sqs_event, s3_body
):
    # GIVEN a file that aborts whatever process decodes it, delivered for the last time (MAX_RECEIVE_COUNT=3)
    from tests.fixtures.crash import CRASH_MARKER

    put = upload_raster(bucket, "in/bomb.tif", body=b"II*\x00" + CRASH_MARKER)
    event = on_receive(make_sqs_event(s3_body(bucket, "in/bomb.tif", put)), 3)
    # WHEN the handler runs it THEN this process survives, acknowledges the record and writes the marker
    assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    assert len(crashing_isolation) == 1
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key="in/bomb.error.json")["Body"].read())
    assert doc["error"] == "WorkerCrashedError" and "SIGABRT" in doc["message"]
    assert keys_in(s3_client, bucket) == {"in/bomb.tif", "in/bomb.error.json"}


@pytest.mark.parametrize(("receive", "isolated"), [(1, 0), (2, 0), (3, 1), (5, 1)])
def test_a_good_file_is_written_in_process_before_its_last_receive_and_by_a_child_on_it(
    lambda_fn, crashing_isolation, bucket, s3_client, upload_raster, make_sqs_event, s3_body, receive, isolated
):
    put = upload_raster(bucket, "in/a.tif")
    event = on_receive(make_sqs_event(s3_body(bucket, "in/a.tif", put)), receive)
    assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    assert len(crashing_isolation) == isolated
    assert keys_in(s3_client, bucket) == {"in/a.tif", "in/a.npy"}


def test_a_direct_event_over_the_record_cap_is_refused(lambda_fn, runtime, monkeypatch):
    from dataclasses import replace

    monkeypatch.setattr(
        lambda_fn, "get_runtime", lambda: replace(runtime, settings=replace(runtime.settings, max_event_records=2))
    )
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "a.tif"}}}
    with pytest.raises(EventError, match="3 records in one event, over MAX_EVENT_RECORDS=2"):
        lambda_fn.lambda_handler({"Records": [record] * 3}, make_context())
