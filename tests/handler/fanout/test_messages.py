"""Shard messages: round trip, recognised among upload notifications, malformed ones refused."""

from __future__ import annotations

import json

import pytest

from handler.errors import EventError
from handler.fanout import ShardMessage, is_shard_message, parse_shard_message


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
