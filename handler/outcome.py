"""What happened to one object (:class:`Outcome`), the summary an event is answered with, and its log line.

Lambda (powertools, CloudWatch EMF) and Knative (Prometheus) count outcomes in their own metrics, but both
describe one with :func:`describe` and pick its level with :func:`log_level`, so the two logs read alike.

Example:
    >>> o = Outcome(OutcomeStatus.WRITTEN, "scenes", "a/b.tif", "a/b.npy", detail="4 tiles")
    >>> describe(o)
    'written: s3://scenes/a/b.tif -> a/b.npy (0.00 s) 4 tiles'
    >>> summarise([o])["counts"]
    {'written': 1}
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class OutcomeStatus(StrEnum):
    """The ways processing one object ends (their values appear in logs, metrics and JSON answers)."""

    WRITTEN = "written"  # the .npy is beside the input
    DUPLICATE = "duplicate"  # this upload's result (or error marker) was already there
    SKIPPED = "skipped"  # not ours to process: wrong suffix, our own output, a removal, a folder
    REJECTED = "rejected"  # an InputError: <stem>.error.json written, not retried
    MISSING = "missing"  # the object is gone or was replaced by a newer upload
    FANNED_OUT = "fanned_out"  # too much for one invocation: shard messages sent (handler/fanout)


@dataclass(frozen=True)
class Outcome:
    """What happened to one object. ``output_key`` is the ``.npy`` (or, when rejected, the error marker)."""

    status: OutcomeStatus
    bucket: str
    input_key: str
    output_key: str | None = None
    detail: str = ""
    seconds: float = 0.0  # the whole object: HEADs, download, inference, upload
    pixels: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    output_bucket: str | None = None
    inference_seconds: float = 0.0
    error_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"status": str(self.status)}


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    """The JSON answer to an event (Lambda's synchronous invokes, Knative's event route): counts and outcomes."""
    return {"counts": dict(Counter(str(o.status) for o in outcomes)), "outcomes": [o.as_dict() for o in outcomes]}


def describe(outcome: Outcome) -> str:
    """The one log line of an outcome (pure)."""
    target = f" -> {outcome.output_key}" if outcome.output_key else ""
    detail = f" {outcome.detail}" if outcome.detail else ""
    return f"{outcome.status}: s3://{outcome.bucket}/{outcome.input_key}{target} ({outcome.seconds:.2f} s){detail}"


def log_level(outcome: Outcome) -> int:
    """A rejected input is a warning (someone uploaded something unusable); the rest is routine."""
    return logging.WARNING if outcome.status is OutcomeStatus.REJECTED else logging.INFO


def seconds_since(started: float) -> float:
    """Seconds since ``started``, a :func:`time.perf_counter` reading (an outcome's ``seconds``)."""
    return time.perf_counter() - started
