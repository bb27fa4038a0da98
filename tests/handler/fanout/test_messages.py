"""Shard messages: round trip, recognised among upload notifications, malformed ones refused."""

from __future__ import annotations

import json

import pytest

from handler.errors import EventError
from handler.event_types import SHARD_EVENT_TYPE
from handler.fanout import ShardMessage, is_shard_message, parse_shard_message, shard_from_cloudevent


def test_round_trip():
    message = ShardMessage("out", "0123456789abcdef", "predict", 7)
    assert is_shard_message(message.to_json())
    assert parse_shard_message(message.to_json()) == message
    assert parse_shard_message(json.loads(message.to_json())) == message


@pytest.mark.parametrize("body", ['{"Records": []}', "not json", "", b'{"rasterfn-shard": 3}', {"Records": []}])
def test_other_bodies_are_not_shard_messages(body):
    assert not is_shard_message(body)


@pytest.mark.parametrize(
    "fields",
    [
        {"bucket": "b", "job": "../../etc", "phase": "stats", "index": 0},
        {"bucket": "b", "job": "0123456789abcdef", "phase": "train", "index": 0},
        {"bucket": "b", "job": "0123456789abcdef", "phase": "stats", "index": -1},
        {"bucket": "b", "job": "0123456789abcdef", "phase": "stats"},
        {"bucket": "b", "job": "0123456789abcdef", "phase": "stats", "index": "x"},
    ],
)
def test_malformed_shard_messages_are_event_errors(fields):
    with pytest.raises(EventError, match="malformed shard message"):
        parse_shard_message({"rasterfn-shard": fields})


# --- on Knative: the data of a CloudEvent -------------------------------------------------------------------


def test_a_binary_mode_shard_event_carries_the_message():
    body = ShardMessage("b", "0123abcd", "stats", 1).to_json()
    headers = {"ce-specversion": "1.0", "ce-type": SHARD_EVENT_TYPE}
    assert shard_from_cloudevent(body, headers) == ShardMessage("b", "0123abcd", "stats", 1)


def test_a_structured_mode_shard_event_carries_the_message_as_data():
    data = json.loads(ShardMessage("b", "0123abcd", "predict", 2).to_json())
    event = {"specversion": "1.0", "type": SHARD_EVENT_TYPE, "id": "x", "source": "/x", "data": data}
    headers = {"content-type": "application/cloudevents+json"}
    assert shard_from_cloudevent(json.dumps(event), headers) == ShardMessage("b", "0123abcd", "predict", 2)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"Records": []}', {"ce-specversion": "1.0", "ce-type": "dev.rasterfn.object.notification"}),
        (b'{"Records": []}', {"content-type": "application/json"}),
        (b'{"specversion": "1.0", "type": "other"}', {"content-type": "application/cloudevents+json"}),
        (b"not json", {"content-type": "application/cloudevents+json"}),
    ],
)
def test_other_requests_are_not_shard_events(body, headers):
    assert shard_from_cloudevent(body, headers) is None


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"{}", {"ce-specversion": "1.0", "ce-type": "dev.rasterfn.shard"}),
        (b'{"specversion": "1.0", "type": "dev.rasterfn.shard"}', {"content-type": "application/cloudevents+json"}),
        (
            b'{"specversion": "1.0", "type": "dev.rasterfn.shard", "data": {"rasterfn-shard": {"bucket": "b"}}}',
            {"content-type": "application/cloudevents+json"},
        ),
    ],
)
def test_a_shard_event_without_a_valid_message_is_an_event_error(body, headers):
    with pytest.raises(EventError, match="malformed shard message"):
        shard_from_cloudevent(body, headers)
