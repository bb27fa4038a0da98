"""A local stand-in for Lambda's SQS event-source mapping (ESM): poll, batch, invoke, delete, retry.

What it does, as AWS's ESM does (https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html):

- long-polls ``ReceiveMessage`` for up to ``batch_size`` messages (``wait_time_s`` is short, 1 s, so that
  :meth:`LocalEventSourceMapping.stop` is quick; AWS uses 20 s), optionally gathering for a batching window;
- turns them into the event Lambda delivers (``Records[]`` with ``messageId``, ``receiptHandle``, ``body``,
  ``attributes`` incl. ``ApproximateReceiveCount``, ``messageAttributes``, ``md5OfBody``,
  ``eventSource: aws:sqs``, ``eventSourceARN``, ``awsRegion``) and calls the handler with a fake context whose
  deadline is the function timeout;
- deletes the messages that succeeded; with ``ReportBatchItemFailures`` the ones listed in
  ``batchItemFailures`` stay, and come back after the queue's visibility timeout. A response AWS calls invalid
  (unknown or empty ``itemIdentifier``), a raised exception or an overrun deadline fails the whole batch;
- leaves dead-lettering to the queue's redrive policy (``maxReceiveCount``), which moto implements.

Invocations run one at a time, as in one Lambda execution environment: the handler's module-level
BatchProcessor and model are not shared between concurrent calls.

Example:
    >>> esm = LocalEventSourceMapping(sqs, EsmConfig(queue_url, queue_arn), lambda_handler)
    >>> with esm:          # polls in a background thread until the block ends
    ...     upload_things()
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handler.local.lambda_context import DEFAULT_FUNCTION_NAME, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, make_context

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]

SQS_MAX_MESSAGES = 10  # ReceiveMessage's own limit per call
DEFAULT_BATCH_SIZE = 1  # Terraform's batch_size: one scene per invocation, each gets the whole timeout
DEFAULT_WAIT_TIME_S = 1
# After a failed ReceiveMessage (the endpoint going away, a network blip): wait before polling again.
ERROR_BACKOFF_S = 0.5
MAX_KEPT_INVOCATIONS = 1_000


@dataclass(frozen=True)
class EsmConfig:
    """The event-source mapping's settings (Terraform's ``aws_lambda_event_source_mapping``)."""

    queue_url: str
    queue_arn: str
    region: str = "us-east-1"
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batching_window_s: float = 0.0
    wait_time_s: int = DEFAULT_WAIT_TIME_S
    report_batch_item_failures: bool = True
    function_name: str = DEFAULT_FUNCTION_NAME
    function_timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_size > SQS_MAX_MESSAGES and self.max_batching_window_s <= 0:
            # AWS's rule too: more than 10 messages per batch needs a batching window.
            raise ValueError("batch_size > 10 needs max_batching_window_s > 0")
        if not 0 <= self.wait_time_s <= 20:
            raise ValueError(f"wait_time_s must be in [0, 20], got {self.wait_time_s}")


@dataclass(frozen=True)
class Invocation:
    """One call of the handler and what became of its messages."""

    request_id: str
    event: dict[str, Any]
    message_ids: tuple[str, ...]
    deleted_ids: tuple[str, ...]
    # Not deleted: visible again after the visibility timeout, dead-lettered after maxReceiveCount receives.
    failed_ids: tuple[str, ...]
    response: Any
    error: str | None
    started_at: float
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed_ids


def to_lambda_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS ``ReceiveMessage`` message as Lambda shows it in ``event["Records"]`` (pure)."""
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": {
            name: _lambda_message_attribute(value) for name, value in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if message.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def build_sqs_event(messages: Sequence[Mapping[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The event Lambda's ESM passes for a batch of messages (pure)."""
    return {"Records": [to_lambda_record(m, queue_arn, region) for m in messages]}


def failed_message_ids(response: Any, message_ids: Sequence[str]) -> tuple[frozenset[str], str | None]:
    """Which messages a handler response reports as failed, by AWS's ``ReportBatchItemFailures`` rules (pure).

    Returns ``(failed, problem)``: ``problem`` says why the whole batch counts as failed (invalid response).
    ``None``, ``{}`` and an empty or null ``batchItemFailures`` mean every message succeeded.

    >>> failed_message_ids({"batchItemFailures": [{"itemIdentifier": "b"}]}, ["a", "b"])
    (frozenset({'b'}), None)
    >>> failed_message_ids({"batchItemFailures": [{"itemIdentifier": "zz"}]}, ["a"])[1]
    "invalid batchItemFailures: unknown itemIdentifier 'zz'"
    """
    everything = frozenset(message_ids)
    if not isinstance(response, Mapping) or response.get("batchItemFailures") is None:
        return frozenset(), None
    items = response["batchItemFailures"]
    if not isinstance(items, list):
        return everything, f"invalid batchItemFailures: a {type(items).__name__}, not a list"
    failed = set()
    for item in items:
        identifier = item.get("itemIdentifier") if isinstance(item, Mapping) else None
        if not isinstance(identifier, str) or not identifier:
            return everything, f"invalid batchItemFailures: item {item!r} has no itemIdentifier"
        if identifier not in everything:
            return everything, f"invalid batchItemFailures: unknown itemIdentifier {identifier!r}"
        failed.add(identifier)
    return frozenset(failed), None


class LocalEventSourceMapping:
    """Polls an SQS queue and invokes ``handler`` with Lambda's SQS events, in a background thread.

    ``on_receive(event)`` is called with each event before the handler sees it and ``on_result(invocation)``
    after its messages were deleted (or not); both run in the polling thread.
    """

    def __init__(
        self,
        sqs: Any,
        config: EsmConfig,
        handler: Handler,
        *,
        on_receive: Callable[[dict[str, Any]], None] | None = None,
        on_result: Callable[[Invocation], None] | None = None,
    ) -> None:
        self.sqs = sqs
        self.config = config
        self.handler = handler
        self.on_receive = on_receive
        self.on_result = on_result
        self.invocations: deque[Invocation] = deque(maxlen=MAX_KEPT_INVOCATIONS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- one poll -------------------------------------------------------------------------------------------

    def poll_once(self) -> Invocation | None:
        """Receive one batch and invoke the handler on it; ``None`` when the queue had nothing."""
        messages = self._receive_batch()
        if not messages:
            return None
        return self.invoke(messages)

    def invoke(self, messages: Sequence[Mapping[str, Any]]) -> Invocation:
        """Invoke the handler on received ``messages`` and delete those that succeeded."""
        cfg = self.config
        event = build_sqs_event(messages, cfg.queue_arn, cfg.region)
        ids = tuple(m["MessageId"] for m in messages)
        if self.on_receive is not None:
            self.on_receive(event)
        context = make_context(
            timeout_s=cfg.function_timeout_s,
            function_name=cfg.function_name,
            memory_mb=cfg.memory_mb,
            region=cfg.region,
        )
        started_at, t0 = time.time(), time.perf_counter()
        response: Any = None
        error: str | None = None
        try:
            response = self.handler(event, context)
        except Exception as exc:  # Lambda's "function error": the whole batch is retried
            error = f"{type(exc).__name__}: {exc}"
            logger.warning("handler raised; %d message(s) will be retried\n%s", len(ids), traceback.format_exc())
        seconds = time.perf_counter() - t0
        if error is None and context.timed_out:
            error = f"Task timed out after {cfg.function_timeout_s:.2f} seconds"
        if error is not None:
            failed: frozenset[str] = frozenset(ids)
        elif cfg.report_batch_item_failures:
            failed, error = failed_message_ids(response, ids)
        else:
            failed = frozenset()
        to_delete = [m for m in messages if m["MessageId"] not in failed]
        deleted = self._delete(to_delete)
        invocation = Invocation(
            request_id=context.aws_request_id,
            event=event,
            message_ids=ids,
            deleted_ids=deleted,
            failed_ids=tuple(i for i in ids if i in failed),
            response=response,
            error=error,
            started_at=started_at,
            seconds=seconds,
        )
        self.invocations.append(invocation)
        if self.on_result is not None:
            self.on_result(invocation)
        return invocation

    # --- the polling thread ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Poll until :meth:`stop`; errors talking to SQS are logged and retried, never fatal."""
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                if self._stop.is_set():
                    break
                logger.warning("polling %s failed; retrying\n%s", self.config.queue_url, traceback.format_exc())
                self._stop.wait(ERROR_BACKOFF_S)

    def start(self) -> LocalEventSourceMapping:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the event-source mapping is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="local-esm", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling; waits for the invocation in progress (a handler cannot be interrupted)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> LocalEventSourceMapping:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- SQS ------------------------------------------------------------------------------------------------

    def _receive_batch(self) -> list[dict[str, Any]]:
        cfg = self.config
        messages = self._receive(min(cfg.batch_size, SQS_MAX_MESSAGES), cfg.wait_time_s)
        if not messages or cfg.max_batching_window_s <= 0:
            return messages
        # Batching window: keep gathering until the batch is full or the window has passed.
        deadline = time.monotonic() + cfg.max_batching_window_s
        while len(messages) < cfg.batch_size and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wanted = min(cfg.batch_size - len(messages), SQS_MAX_MESSAGES)
            messages += self._receive(wanted, min(cfg.wait_time_s, max(0, int(left))))
        return messages

    def _receive(self, count: int, wait_s: int) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(response.get("Messages", []))

    def _delete(self, messages: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        deleted: list[str] = []
        for start in range(0, len(messages), SQS_MAX_MESSAGES):
            chunk = messages[start : start + SQS_MAX_MESSAGES]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
            response = self.sqs.delete_message_batch(QueueUrl=self.config.queue_url, Entries=entries)
            for ok in response.get("Successful", []):
                deleted.append(chunk[int(ok["Id"])]["MessageId"])
            for failure in response.get("Failed", []):
                logger.warning("could not delete message %s: %s", chunk[int(failure["Id"])]["MessageId"], failure)
        return tuple(deleted)


def _lambda_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    # SQS's StringValue/BinaryValue/DataType -> Lambda's camelCase, binary as base64 text.
    out: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [base64.b64encode(v).decode() for v in value.get("BinaryListValues", [])],
        "dataType": value.get("DataType", "String"),
    }
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        raw = value["BinaryValue"]
        out["binaryValue"] = base64.b64encode(raw).decode() if isinstance(raw, bytes | bytearray) else raw
    return out
