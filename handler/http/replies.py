"""The binary-mode CloudEvent that answers a CloudEvent request on ``POST /``, typed by its outcomes."""

from __future__ import annotations

from typing import Any

from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent
from starlette.responses import Response

from handler.event_types import REPLY_TYPE_PREFIX
from handler.outcome import OutcomeStatus

CLOUDEVENT_SOURCE = "/rasterfn"
CLOUDEVENT_TYPE_PREFIX = REPLY_TYPE_PREFIX
# Outcome status -> the reply CloudEvent's type suffix.
CLOUDEVENT_TYPES = {
    OutcomeStatus.WRITTEN: "created",
    OutcomeStatus.DUPLICATE: "skipped",
    OutcomeStatus.SKIPPED: "skipped",
    OutcomeStatus.REJECTED: "rejected",
    OutcomeStatus.MISSING: "skipped",
    OutcomeStatus.FANNED_OUT: "accepted",
}


def cloudevent_reply(outcomes: list[dict[str, Any]], summary: dict[str, Any]) -> Response:
    """A binary-mode CloudEvent naming the (first) object's mask, typed by the most significant outcome."""
    statuses = [o["status"] for o in outcomes]
    suffix = next(
        (CLOUDEVENT_TYPES[s] for s in (OutcomeStatus.WRITTEN, OutcomeStatus.REJECTED) if s in statuses),
        "skipped",
    )
    first = outcomes[0] if outcomes else {}
    data = {
        "bucket": first.get("bucket"),
        "input_key": first.get("input_key"),
        "output_key": first.get("output_key"),
        "status": first.get("status"),
        **summary,
    }
    attributes: dict[str, Any] = {
        "type": CLOUDEVENT_TYPE_PREFIX + suffix,
        "source": CLOUDEVENT_SOURCE,
        "datacontenttype": "application/json",
    }
    if first.get("input_key"):
        attributes["subject"] = first["input_key"]
    message = to_binary_event(CloudEvent(attributes=attributes, data=data))
    return Response(message.body, status_code=200, headers=message.headers)
