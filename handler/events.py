"""Turn any supported event envelope into the object references it points at. Pure: no I/O but reading a file
in :func:`load_event_file`.

Supported envelopes (a sample of each lives in ``events/``):

- S3 notification (``Records[].eventSource == "aws:s3"``), also S3-compatible stores (``minio:s3``,
  ``ceph:s3``);
- SQS batch whose bodies are an S3 notification, an SNS envelope (``Type: Notification``), an EventBridge
  event, or S3's ``s3:TestEvent`` (acknowledged, no references); SNS records delivered to Lambda directly;
- EventBridge ``source: aws.s3`` (``Object Created``, ``Object Deleted``, ...);
- MinIO webhook (``EventName``, ``Key``, ``Records[]``);
- CloudEvents in binary mode (``ce-*`` headers, the body is ``data``) or structured mode (``specversion`` with
  ``data`` or ``data_base64``) whose data is any of the above or one S3 record (TriggerMesh's S3 source);
- a direct invoke ``{"bucket": ..., "key": ...}`` (key taken literally) or a list of them.

Every event name is normalised to S3's notification names without the ``s3:`` prefix
(``ObjectCreated:Put``, ``ObjectRemoved:Delete``), so :mod:`handler.filters` can skip what is not an upload
with a reason instead of this module raising. Keys are kept as they are once decoded (``../x.tif`` included):
nothing ever builds a local path from a key, so there is no path traversal to guard against here.

Example:
    >>> [ref] = parse_event({"bucket": "rasterfn-demo", "key": "scenes/a b.tif"})
    >>> (ref.bucket, ref.key, ref.source)
    ('rasterfn-demo', 'scenes/a b.tif', 'direct')
    >>> [ref] = parse_event({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
    ...     "s3": {"bucket": {"name": "b"}, "object": {"key": "red+flower%C3%A9.tif", "size": 3}}}]})
    >>> (ref.key, ref.event_name, ref.size)
    ('red floweré.tif', 'ObjectCreated:Put', 3)
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent, SNSEvent, SQSEvent
from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord

from handler.errors import EventError
from handler.objects import ObjectRef, normalize_etag

# Lambda's synchronous payload limit: anything larger is not an event, and is not worth parsing.
MAX_EVENT_BYTES = 6 * 1024 * 1024
# SQS > SNS > S3 is three deep; a CloudEvent around it four. Deeper is a loop or an attack.
MAX_NESTING = 5
MAX_KEY_BYTES = 1024  # S3's own limit on a key's UTF-8 length
MAX_BUCKET_CHARS = 255

CREATED_PREFIX = "ObjectCreated:"
CLOUDEVENTS_JSON = "application/cloudevents"  # +json, -batch+json
S3_TEST_EVENT = "s3:TestEvent"

# Stores whose notification keys are form-encoded exactly like S3's (MinIO runs Go's url.QueryEscape):
# decoding them is not ambiguous. Any other ``*:s3`` source keeps its raw key as a fallback.
UNAMBIGUOUS_S3_SOURCES = ("aws:s3", "minio:s3")

# EventBridge's detail-type (and detail.reason) -> the S3 notification name of the same event.
EVENTBRIDGE_CREATED_REASONS = {
    "PutObject": "Put",
    "POST Object": "Post",
    "CopyObject": "Copy",
    "CompleteMultipartUpload": "CompleteMultipartUpload",
}
EVENTBRIDGE_EVENT_NAMES = {
    "Object Restore Initiated": "ObjectRestore:Post",
    "Object Restore Completed": "ObjectRestore:Completed",
    "Object Restore Expired": "ObjectRestore:Delete",
    "Object Tags Added": "ObjectTagging:Put",
    "Object Tags Deleted": "ObjectTagging:Delete",
    "Object ACL Updated": "ObjectAcl:Put",
    "Object Storage Class Changed": "LifecycleTransition",
    "Object Access Tier Changed": "IntelligentTiering",
}


def parse_event(event: Mapping | list | str | bytes, headers: Mapping[str, str] | None = None) -> list[ObjectRef]:
    """The objects an event points at, in event order; ``[]`` for S3's test event.

    ``headers`` are the HTTP headers the event came with (any case), needed only for binary-mode CloudEvents.
    Raises :class:`EventError` for a shape this module does not know, invalid JSON, an empty key or bucket.
    """
    lowered = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    mode = cloudevent_mode(lowered)
    if mode == "binary":
        # Binary mode: the attributes are headers and the body is the data itself.
        return _prefixed("cloudevents", _parse(event, depth=1))
    if mode == "structured":
        payload = _load_json(event, "CloudEvent") if isinstance(event, str | bytes | bytearray) else event
        if not (_is_cloudevent(payload) or isinstance(payload, list)):
            raise EventError(f"content-type {lowered['content-type']!r} but the body is {_describe(payload)}")
        return _parse(payload, depth=0)
    return _parse(event, depth=0)


def cloudevent_mode(headers: Mapping[str, str]) -> str | None:
    """``"binary"`` (``ce-*`` headers), ``"structured"`` (``application/cloudevents*``) or ``None`` (pure).

    ``headers`` must have lower-case names.

    >>> cloudevent_mode({"ce-specversion": "1.0"}), cloudevent_mode({"content-type": "application/json"})
    ('binary', None)
    """
    if "ce-specversion" in headers:
        return "binary"
    if headers.get("content-type", "").lower().startswith(CLOUDEVENTS_JSON):
        return "structured"
    return None


def parse_sqs_body(body: str | bytes) -> list[ObjectRef]:
    """The objects one SQS message body points at (the Lambda batch processor calls this per record).

    The body may be an S3 notification, an SNS envelope, an EventBridge event, S3's test event (``[]``), or a
    direct ``{"bucket", "key"}`` request queued by hand.
    """
    return _parse_sqs_body(body, depth=0)


def is_created_event(event_name: str | None) -> bool:
    """Whether a normalised event name is an upload. ``None`` is an explicit request (direct invoke, CLI)."""
    return event_name is None or event_name.startswith(CREATED_PREFIX)


def normalise_event_name(name: str) -> str:
    """``s3:ObjectCreated:Put`` (MinIO) and ``ObjectCreated:Put`` (S3) -> ``ObjectCreated:Put``."""
    return name.removeprefix("s3:")


def load_event_file(path: str | Path) -> tuple[Any, dict[str, str] | None]:
    """Read a saved event: ``(event, headers)`` for :func:`parse_event`.

    A file holding exactly ``{"headers": {...}, "body": ...}`` is a saved HTTP request (binary-mode
    CloudEvents need their headers); anything else is the event itself, with no headers.
    """
    data = _load_json(Path(path).read_bytes(), f"event file {path}")
    if isinstance(data, dict) and set(data) == {"headers", "body"}:
        headers = data["headers"]
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise EventError(f"event file {path}: 'headers' must map header names to strings")
        return data["body"], dict(headers)
    return data, None


def _parse(payload: Any, depth: int) -> list[ObjectRef]:
    if depth > MAX_NESTING:
        raise EventError(f"event envelopes nested more than {MAX_NESTING} deep")
    if isinstance(payload, str | bytes | bytearray):
        payload = _load_json(payload, "event")
    if isinstance(payload, list):
        if not payload:
            raise EventError("empty list: expected one or more events or {'bucket', 'key'} objects")
        return [ref for item in payload for ref in _parse(item, depth + 1)]
    if not isinstance(payload, Mapping):
        raise EventError(f"unsupported event: {_describe(payload)}")
    try:
        return _parse_mapping(payload, depth)
    except (KeyError, TypeError, AttributeError) as exc:
        # The wrappers index fields directly: a missing or mistyped one lands here.
        raise EventError(f"malformed event ({_describe(payload)}): bad or missing field {exc}") from exc


def _parse_mapping(payload: Mapping, depth: int) -> list[ObjectRef]:
    if payload.get("Event") == S3_TEST_EVENT:
        return []  # sent once by S3 when a notification is configured: acknowledge it, process nothing
    if "Records" in payload:
        return _parse_records(payload["Records"], depth)
    if payload.get("Type") == "Notification" and "Message" in payload:
        return _prefixed("sns", _parse(payload["Message"], depth + 1))
    if "detail-type" in payload and "source" in payload:
        return [_parse_eventbridge(payload)]
    if _is_cloudevent(payload):
        return _prefixed("cloudevents", _parse(_cloudevent_data(payload), depth + 1))
    if "s3" in payload and "eventName" in payload:
        return [_parse_s3_record(payload)]  # one bare record: TriggerMesh's S3 source sends these
    if "bucket" in payload and "key" in payload:
        return [_parse_direct(payload)]
    if "EventName" in payload and "Key" in payload:
        return [_parse_minio_summary(payload)]
    raise EventError(f"unsupported event: {_describe(payload)}")


def _parse_records(records: Any, depth: int) -> list[ObjectRef]:
    if not isinstance(records, list) or not records:
        raise EventError(f"'Records' must be a non-empty list, got {_describe(records)}")
    refs: list[ObjectRef] = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise EventError(f"Records[{index}] is {_describe(record)}, expected an object")
        source = record.get("eventSource") or record.get("EventSource")
        if source == "aws:sqs":
            [sqs_record] = SQSEvent({"Records": [record]}).records
            refs += _parse_sqs_body(sqs_record.body, depth)
        elif source == "aws:sns":
            [sns_record] = SNSEvent({"Records": [record]}).records
            refs += _prefixed("sns", _parse(sns_record.sns.message, depth + 1))
        elif "s3" in record:
            refs.append(_parse_s3_record(record))
        else:
            raise EventError(f"unsupported record Records[{index}] from {source!r}: {_describe(record)}")
    return refs


def _parse_sqs_body(body: str | bytes, depth: int) -> list[ObjectRef]:
    return _prefixed("sqs", _parse(_load_json(body, "SQS message body"), depth + 1))


def _parse_s3_record(record: Mapping) -> ObjectRef:
    wrapped = S3EventRecord(dict(record))
    event_source = str(record.get("eventSource") or "aws:s3")
    s3 = wrapped.s3
    obj = s3.get_object
    raw = obj["key"]
    if event_source in UNAMBIGUOUS_S3_SOURCES:
        key, raw_key = _decode_key(raw), None
    else:
        key, raw_key = _decode_ambiguous_key(raw)
    return _make_ref(
        bucket=s3.bucket.name,
        key=key,
        raw_key=raw_key,
        size=obj.get("size"),
        etag=obj.get("eTag"),
        version_id=obj.get("versionId"),
        event_name=normalise_event_name(str(wrapped.event_name)),
        source="s3" if event_source == "aws:s3" else event_source.split(":", 1)[0],
    )


def _parse_minio_summary(payload: Mapping) -> ObjectRef:
    # MinIO's summary fields alone (Records stripped by a relay): Key is "bucket/object", already unescaped.
    bucket, sep, key = str(payload["Key"]).partition("/")
    if not sep:
        raise EventError(f"MinIO 'Key' must be 'bucket/object', got {payload['Key']!r}")
    event_name = normalise_event_name(str(payload["EventName"]))
    return _make_ref(bucket=bucket, key=key, event_name=event_name, source="minio")


def _parse_eventbridge(payload: Mapping) -> ObjectRef:
    event = S3EventBridgeNotificationEvent(dict(payload))
    if event.source != "aws.s3":
        raise EventError(
            f"unsupported EventBridge event: source {event.source!r}, detail-type {event.detail_type!r}"
            " (only source aws.s3 object events are supported)"
        )
    detail = event.detail
    obj = detail["object"]
    key, raw_key = _decode_ambiguous_key(obj["key"])
    return _make_ref(
        bucket=detail.bucket.name,
        key=key,
        raw_key=raw_key,
        size=obj.get("size"),
        etag=obj.get("etag"),
        version_id=obj.get("version-id"),
        event_name=_eventbridge_event_name(event.detail_type, detail.reason, detail.deletion_type),
        source="eventbridge",
    )


def _eventbridge_event_name(detail_type: str, reason: str | None, deletion_type: str | None) -> str:
    if detail_type == "Object Created":
        return CREATED_PREFIX + EVENTBRIDGE_CREATED_REASONS.get(reason or "", reason or "Unknown")
    if detail_type == "Object Deleted":
        if reason == "Lifecycle Expiration":
            return "LifecycleExpiration:Delete"
        marker = deletion_type == "Delete Marker Created"
        return "ObjectRemoved:" + ("DeleteMarkerCreated" if marker else "Delete")
    return EVENTBRIDGE_EVENT_NAMES.get(detail_type, f"EventBridge:{detail_type}")


def _parse_direct(payload: Mapping) -> ObjectRef:
    # A person or script asked for this object by name: the key is literal, never decoded.
    return _make_ref(
        bucket=payload["bucket"],
        key=payload["key"],
        size=payload.get("size"),
        etag=payload.get("etag"),
        version_id=payload.get("version_id", payload.get("versionId")),
        event_name=None,
        source="direct",
    )


def _is_cloudevent(payload: Any) -> bool:
    return isinstance(payload, Mapping) and "specversion" in payload


def _cloudevent_data(event: Mapping) -> Any:
    if event.get("data_base64") is not None:
        try:
            return base64.b64decode(str(event["data_base64"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EventError(f"CloudEvent {event.get('id')!r}: data_base64 is not valid base64") from exc
    if event.get("data") is None:
        raise EventError(f"CloudEvent {event.get('id')!r} of type {event.get('type')!r} carries no data")
    return event["data"]


def _decode_key(raw: Any) -> str:
    """S3 notification keys are form-encoded: ``+`` is a space, ``%2B`` a plus."""
    if not isinstance(raw, str):
        raise EventError(f"object key must be a string, got {_describe(raw)}")
    try:
        return unquote_plus(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise EventError(f"object key {raw!r} is not valid percent-encoded UTF-8") from exc


def _decode_ambiguous_key(raw: Any) -> tuple[str, str | None]:
    """Decode a key that may or may not be encoded: ``(decoded, raw or None if decoding changed nothing)``.

    The storage layer reads ``key`` first and falls back to ``raw_key`` on a 404.
    """
    try:
        key = _decode_key(raw)
    except EventError:
        if not isinstance(raw, str):
            raise
        return raw, None  # not valid encoding, so it was never encoded
    return key, (raw if key != raw else None)


def _make_ref(
    *,
    bucket: Any,
    key: Any,
    event_name: str | None,
    source: str,
    raw_key: str | None = None,
    size: Any = None,
    etag: Any = None,
    version_id: Any = None,
) -> ObjectRef:
    if not isinstance(bucket, str) or not bucket or len(bucket) > MAX_BUCKET_CHARS or "/" in bucket:
        raise EventError(f"invalid bucket name {bucket!r} in a {source} event")
    if not isinstance(key, str) or not key:
        raise EventError(f"empty or missing object key in a {source} event for bucket {bucket!r}")
    if "\x00" in key:
        raise EventError(f"object key {key!r} contains a NUL character")
    if len(key.encode("utf-8", errors="surrogatepass")) > MAX_KEY_BYTES:
        raise EventError(f"object key is longer than {MAX_KEY_BYTES} bytes: {key[:64]!r}...")
    return ObjectRef(
        bucket=bucket,
        key=key,
        size=_parse_size(size),
        etag=normalize_etag(None if etag is None else str(etag)),
        version_id=str(version_id) if version_id not in (None, "") else None,
        event_name=event_name,
        raw_key=raw_key,
        source=source,
    )


def _parse_size(size: Any) -> int | None:
    if size is None:
        return None
    try:
        value = int(size)
    except (TypeError, ValueError) as exc:
        raise EventError(f"object size must be an integer, got {size!r}") from exc
    if isinstance(size, bool) or value < 0:
        raise EventError(f"object size must be a non-negative integer, got {size!r}")
    return value


def _load_json(text: Any, what: str) -> Any:
    if not isinstance(text, str | bytes | bytearray):
        raise EventError(f"{what} must be a JSON string, got {_describe(text)}")
    if len(text) > MAX_EVENT_BYTES:
        raise EventError(f"{what} is larger than {MAX_EVENT_BYTES} bytes")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise EventError(f"{what} is not valid JSON: {exc}") from exc


def _describe(value: Any) -> str:
    """A short description of a shape for error messages: never the whole (possibly huge) value."""
    if isinstance(value, Mapping):
        keys = sorted(str(k) for k in value)
        shown = ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "")
        return f"an object with keys [{shown}]"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, str | bytes | bytearray):
        return f"a {type(value).__name__} of {len(value)} characters"
    return f"a {type(value).__name__}"


def _prefixed(prefix: str, refs: list[ObjectRef]) -> list[ObjectRef]:
    """Record the envelope path in ``source``: ``sqs/sns/s3``."""
    return [replace(ref, source=f"{prefix}/{ref.source}") for ref in refs]


def check_record_count(refs: list[ObjectRef], limit: int) -> list[ObjectRef]:
    """``refs``, or :class:`EventError` when an event names more than ``limit`` objects (``MAX_EVENT_RECORDS``).

    One event holds an inference slot for all its objects: a 6 MB event of 160k records would hold it for hours.
    """
    if len(refs) > limit:
        raise EventError(f"{len(refs)} records in one event, over MAX_EVENT_RECORDS={limit}")
    return refs
