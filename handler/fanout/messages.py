"""Shard messages: what a coordinator sends for each band of a sharded raster.

A shard message names the job (its state lives in the output bucket under :data:`handler.objects.JOB_PREFIX`),
the phase and the band; everything else is read from the job's ``job.json``, so a message stays small and a
forged one can only ask for work on a job the function itself planned.

On AWS the message is an SQS body; on Knative it is the data of a CloudEvent of type :data:`SHARD_EVENT_TYPE`
(binary or structured mode), which the Broker's Trigger sends back to the function.

Example:
    >>> body = ShardMessage("bucket", "0123abcd", "stats", 3).to_json()
    >>> parse_shard_message(body)
    ShardMessage(bucket='bucket', job='0123abcd', phase='stats', index=3)
    >>> shard_from_cloudevent(body, {"ce-specversion": "1.0", "ce-type": SHARD_EVENT_TYPE}).index
    3
    >>> shard_from_cloudevent(b"{}", {"ce-specversion": "1.0", "ce-type": "dev.rasterfn.object.notification"})
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from handler.errors import EventError
from handler.event_types import SHARD_EVENT_TYPE
from handler.events import CLOUDEVENTS_JSON

MESSAGE_KEY = "rasterfn-shard"
PHASES = ("stats", "predict")
SHARD_EVENT_SOURCE = "/rasterfn/fanout"
_JOB_ID = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class ShardMessage:
    bucket: str  # where the job's state lives (the output bucket)
    job: str
    phase: str
    index: int

    def to_json(self) -> str:
        return json.dumps({MESSAGE_KEY: asdict(self)})

    @property
    def event_id(self) -> str:
        """The CloudEvent id: the same shard's duplicates share it (a receiver may drop repeats by id)."""
        return f"{self.job}-{self.phase}-{self.index}"


def is_shard_message(body: Any) -> bool:
    """Whether an SQS body / CloudEvent data (text or parsed) is a shard message (pure)."""
    if isinstance(body, str | bytes):
        if MESSAGE_KEY not in (body.decode(errors="replace") if isinstance(body, bytes) else body):
            return False
        try:
            body = json.loads(body)
        except ValueError:
            return False
    return isinstance(body, dict) and isinstance(body.get(MESSAGE_KEY), dict)


def parse_shard_message(body: Any) -> ShardMessage:
    """A validated :class:`ShardMessage`; anything malformed is an :class:`EventError` (pure)."""
    try:
        doc = json.loads(body) if isinstance(body, str | bytes) else body
        fields = doc[MESSAGE_KEY]
        message = ShardMessage(str(fields["bucket"]), str(fields["job"]), str(fields["phase"]), int(fields["index"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise EventError(f"malformed shard message: {exc}") from exc
    if message.phase not in PHASES or message.index < 0 or not _JOB_ID.fullmatch(message.job):
        raise EventError(f"malformed shard message: {message}")
    return message


def shard_from_cloudevent(body: bytes | str, headers: Mapping[str, str]) -> ShardMessage | None:
    """The shard message a CloudEvent of type :data:`SHARD_EVENT_TYPE` carries; ``None`` for any other request.

    ``headers`` have lower-case names. Binary mode: the type is ``ce-type`` and the body is the message.
    Structured mode: the body is the whole event, the message its ``data``. A shard event whose data is not a
    valid message raises :class:`EventError` (pure).
    """
    if headers.get("ce-type") is not None:
        return parse_shard_message(body) if headers["ce-type"] == SHARD_EVENT_TYPE else None
    if not headers.get("content-type", "").lower().startswith(CLOUDEVENTS_JSON):
        return None
    try:
        event = json.loads(body)
    except ValueError:
        return None  # not ours to judge: the event parser answers it
    if not isinstance(event, dict) or event.get("type") != SHARD_EVENT_TYPE:
        return None
    return parse_shard_message(event.get("data"))
