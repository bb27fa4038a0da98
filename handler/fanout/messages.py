"""Shard messages: what a coordinator sends to the function's queue for each band of a sharded raster.

A shard message names the job (its state lives in the output bucket under :data:`handler.objects.JOB_PREFIX`),
the phase and the band; everything else is read from the job's ``job.json``, so a message stays small and a
forged one can only ask for work on a job the function itself planned.

Example:
    >>> body = ShardMessage("bucket", "0123abcd", "stats", 3).to_json()
    >>> parse_shard_message(body)
    ShardMessage(bucket='bucket', job='0123abcd', phase='stats', index=3)
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from handler.errors import EventError

MESSAGE_KEY = "rasterfn-shard"
PHASES = ("stats", "predict")
_JOB_ID = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class ShardMessage:
    bucket: str  # where the job's state lives (the output bucket)
    job: str
    phase: str
    index: int

    def to_json(self) -> str:
        return json.dumps({MESSAGE_KEY: asdict(self)})


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
