"""The AWS Lambda entry point: ``handler.lambda_function.lambda_handler``.

The model loads at import, in Lambda's INIT phase, once per container (:func:`handler.runtime.get_runtime`);
a bad setting, card or checkpoint fails the init with one clear, logged error. Tests and ``rasterfn replay``
point ``MODEL_CARD`` etc. at what they need before importing this module.

- **SQS batches** (S3 -> SQS -> Lambda, the deployed path) go through powertools' ``BatchProcessor``: the
  return value is exactly ``{"batchItemFailures": [{"itemIdentifier": messageId}, ...]}``, so only the records
  that raised are delivered again (and dead-lettered after the queue's ``maxReceiveCount``). Rejected rasters
  and vanished objects are acknowledged, not failed: retrying them cannot help. When less than
  ``MIN_REMAINING_MS`` of the invocation is left, the remaining records are failed unprocessed, for retry.
- **Anything else** (an S3 notification, EventBridge, a direct ``{"bucket", "key"}`` invoke, a function-URL
  style ``{"headers", "body"}`` request such as a saved CloudEvent) is processed
  synchronously and answered with a JSON summary; a transient error raises, so Lambda's async retry applies.
  An event of unknown shape raises :class:`EventError` (it goes to the failure destination, where it can be
  inspected).
- **Crash isolation.** A record on its last allowed receive (``ApproximateReceiveCount >= MAX_RECEIVE_COUNT``,
  Terraform's ``max_receive_count``) is processed in a child process (:func:`handler.isolation.run_isolated`):
  if the file crashed the runtime on every earlier receive (a native abort, a segfault, the OOM killer), the
  child dies instead, and this process writes ``<stem>.error.json`` and acknowledges the record, so the
  user sees why and the DLQ keeps only what an operator must look at. A fan-out shard message on its last
  receive runs the same way; its crash ends the whole job (``failed.json``, the upload aborted, the marker).
- Events naming more than ``MAX_EVENT_RECORDS`` objects, or a bucket outside ``ALLOWED_BUCKETS``, are refused
  before any S3 call; ``INIT`` removes temp dirs a killed invocation left in ``/tmp``.

Example (what ``rasterfn replay`` does):
    >>> from handler.local.lambda_context import make_context
    >>> lambda_handler(json.load(open("events/sqs-s3.json")), make_context())     # doctest: +SKIP
    {'batchItemFailures': []}
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from handler.errors import EventError, TransientError, WorkerCrashedError
from handler.events import check_record_count, parse_event, parse_sqs_body
from handler.fanout import ShardMessage, fail_shard_job, is_shard_message, parse_shard_message, run_shard
from handler.isolation import ProcessJob, ShardJob, run_isolated
from handler.objects import ObjectRef
from handler.observability import logger, metrics, record_deferred, record_failure, record_outcome, tracer
from handler.outcome import Outcome, summarise
from handler.outputs import reject_object
from handler.process import process_object
from handler.runtime import Runtime, get_runtime
from handler.tempdirs import sweep_at_startup
from model.errors import RasterfnError

SQS_SOURCE = "aws:sqs"

try:
    # INIT phase: load the model once per container, before the first event.
    RUNTIME = get_runtime()
    sweep_at_startup(RUNTIME.settings)
except RasterfnError:
    logger.exception("start-up failed: fix the function's settings or model, then redeploy")
    raise


# No clear_state: it would also drop the default service name appended in handler.observability; the only
# per-invocation keys (correlation id, message_id) are set every time or removed in a finally.
@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """Process every object the event names; see the module docstring for what is returned or raised."""
    runtime = get_runtime()
    logger.set_correlation_id(correlation_id_of(event))  # None clears the previous invocation's
    if is_sqs_batch(event):
        return handle_sqs_batch(event, context, runtime)
    return handle_event(event, context, runtime)


def handle_sqs_batch(event: Mapping[str, Any], context: Any, runtime: Runtime) -> dict[str, Any]:
    """Partial-batch processing: only the records that raise are reported in ``batchItemFailures``."""
    # Not raising when every record failed: the answer is the same (all retried), without a Lambda error.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

    def handle_record(record: SQSRecord) -> list[dict[str, Any]]:
        logger.append_keys(message_id=record.message_id)
        try:
            what = f"SQS message {record.message_id}"
            ensure_time_left(context, runtime, what)
            if is_shard_message(record.body):  # a band of a sharded raster (handler/fanout)
                message = parse_shard_message(record.body)
                return [run_shard_message(message, runtime, isolate=is_last_receive(record, runtime))]
            try:
                refs = check_record_count(parse_sqs_body(record.body), runtime.settings.max_event_records)
            except RasterfnError as exc:
                # A body we cannot read will never parse: fail it, so it reaches the DLQ intact.
                record_failure(what, exc)
                raise
            isolate = is_last_receive(record, runtime)
            return [process_and_record(ref, context, runtime, isolate=isolate).as_dict() for ref in refs]
        finally:
            logger.remove_keys(["message_id"])

    return process_partial_response(event=dict(event), record_handler=handle_record, processor=processor)


def handle_event(event: Any, context: Any, runtime: Runtime) -> dict[str, Any]:
    """Any other envelope: process synchronously and summarise; transient errors raise (async retry)."""
    refs = check_record_count(parse_event(*unwrap_http_event(event)), runtime.settings.max_event_records)
    outcomes = [process_and_record(ref, context, runtime) for ref in refs]
    return summarise(outcomes)


def process_and_record(ref: ObjectRef, context: Any, runtime: Runtime, *, isolate: bool = False) -> Outcome:
    """Time check, :func:`process_object` (in a child process when ``isolate``), then one log line and the
    metrics; errors are logged and raised."""
    what = ref.uri
    ensure_time_left(context, runtime, what)
    try:
        outcome = process_isolated(ref, runtime) if isolate else process_object(ref, runtime)
    except Exception as exc:
        record_failure(what, exc)
        raise
    record_outcome(outcome)
    return outcome


def process_isolated(ref: ObjectRef, runtime: Runtime) -> Outcome:
    """:func:`process_object` in a child process; if the child dies, the object is rejected with a marker."""
    try:
        return run_isolated(runtime.settings, ProcessJob(ref))
    except WorkerCrashedError as exc:
        logger.error(f"{ref.uri} crashed the function on its last allowed receive: {exc}")
        return reject_object(ref, runtime, exc)


def run_shard_message(message: ShardMessage, runtime: Runtime, *, isolate: bool = False) -> dict[str, Any]:
    """One shard message; on its last allowed receive in a child process, and a crash there ends the job."""
    if not isolate:
        return run_shard(message, runtime).as_dict()
    try:
        return run_isolated(runtime.settings, ShardJob(message, last_attempt=True)).as_dict()
    except WorkerCrashedError as exc:
        logger.error(f"shard {message.event_id} crashed the function on its last allowed receive: {exc}")
        return fail_shard_job(message, runtime, exc).as_dict()


def is_last_receive(record: SQSRecord, runtime: Runtime) -> bool:
    """Whether SQS will not deliver this record again after this receive (``MAX_RECEIVE_COUNT``)."""
    try:
        count = int(record.attributes.approximate_receive_count)
    except (TypeError, ValueError, KeyError):
        return False
    return count >= runtime.settings.max_receive_count


def ensure_time_left(context: Any, runtime: Runtime, what: str) -> None:
    """Raise :class:`TransientError` (retry later) when less than ``MIN_REMAINING_MS`` is left."""
    remaining = remaining_ms(context)
    if remaining is not None and remaining < runtime.settings.min_remaining_ms:
        record_deferred(what, remaining)
        raise TransientError(
            f"{what} not started: {remaining} ms left in this invocation, "
            f"below MIN_REMAINING_MS={runtime.settings.min_remaining_ms}"
        )


def remaining_ms(context: Any) -> int | None:
    getter = getattr(context, "get_remaining_time_in_millis", None)
    return int(getter()) if callable(getter) else None


def unwrap_http_event(event: Any) -> tuple[Any, Mapping[str, str] | None]:
    """``(body, headers)`` of a function-URL / API Gateway event, ``(event, None)`` of any other (pure).

    CloudEvents in binary mode carry their attributes as HTTP headers, so the headers must travel along.
    """
    if not (isinstance(event, Mapping) and "body" in event and isinstance(event.get("headers"), Mapping)):
        return event, None
    body = event["body"] or ""
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, TypeError) as exc:
            raise EventError(f"isBase64Encoded but the body is not base64: {exc}") from exc
    return body, event["headers"]


def is_sqs_batch(event: Any) -> bool:
    """An SQS event-source-mapping batch (every record from ``aws:sqs``)."""
    records = event.get("Records") if isinstance(event, Mapping) else None
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, Mapping) and r.get("eventSource") == SQS_SOURCE for r in records)
    )


def correlation_id_of(event: Any) -> str | None:
    """The id that ties our logs to the event's origin: S3's request id, EventBridge's event id (pure).

    SQS records are tagged one by one with their ``message_id`` instead.
    """
    if not isinstance(event, Mapping):
        return None
    if isinstance(event.get("id"), str) and "detail" in event:
        return event["id"]
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], Mapping):
        response = records[0].get("responseElements")
        if isinstance(response, Mapping) and isinstance(response.get("x-amz-request-id"), str):
            return response["x-amz-request-id"]
    return None
