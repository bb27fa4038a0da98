"""handler/fanout/sender.py: shard messages to SQS (AWS) or as CloudEvents to K_SINK (Knative)."""

from __future__ import annotations

import httpx
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event

from handler.errors import TransientError
from handler.event_types import SHARD_EVENT_TYPE
from handler.fanout import ShardMessage, parse_shard_message, shard_from_cloudevent
from handler.fanout.sender import cloudevent_sender, sender_from_settings, shard_event
from handler.settings import Settings

SINK = "http://broker-ingress.knative-eventing.svc.cluster.local/default/default"
MESSAGE = ShardMessage("scenes", "0123abcd", "predict", 4)


def sender_to(handler) -> tuple[list[httpx.Request], object]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return seen, cloudevent_sender(SINK, httpx.Client(transport=httpx.MockTransport(record)))


def test_a_shard_message_is_posted_to_the_sink_as_a_binary_mode_cloudevent():
    seen, send = sender_to(lambda request: httpx.Response(202))
    send(MESSAGE)
    [request] = seen
    assert str(request.url) == SINK and request.method == "POST"
    event = from_binary_event(HTTPMessage(dict(request.headers), request.content))
    assert event.get_type() == SHARD_EVENT_TYPE and event.get_id() == "0123abcd-predict-4"
    # what the function's event route gets back from the Trigger is the same message
    assert parse_shard_message(event.get_data()) == MESSAGE
    assert shard_from_cloudevent(request.content, {k.lower(): v for k, v in request.headers.items()}) == MESSAGE


def test_duplicates_of_one_shard_share_the_event_id_and_other_shards_do_not():
    assert shard_event(MESSAGE).get_id() == shard_event(ShardMessage("scenes", "0123abcd", "predict", 4)).get_id()
    assert shard_event(MESSAGE).get_id() != shard_event(ShardMessage("scenes", "0123abcd", "stats", 4)).get_id()


@pytest.mark.parametrize("status", [400, 404, 500, 503])
def test_a_sink_that_refuses_is_a_transient_error(status):
    # The message being handled is then retried (SQS / the Broker), and every send is idempotent.
    _, send = sender_to(lambda request: httpx.Response(status))
    with pytest.raises(TransientError, match=f"answered {status}"):
        send(MESSAGE)


def test_an_unreachable_sink_is_a_transient_error():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    _, send = sender_to(refuse)
    with pytest.raises(TransientError, match="unreachable"):
        send(MESSAGE)


def test_the_deployment_chooses_the_sender():
    assert sender_from_settings(Settings()) is None  # fan-out off
    assert sender_from_settings(Settings(fanout_sink_url=SINK)) is not None
