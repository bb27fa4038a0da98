"""Where shard messages go: the function's own SQS queue (AWS) or the Knative sink, as CloudEvents.

- **AWS** (``FANOUT_QUEUE_URL``): the function's queue, not a dedicated one: shard messages then get the same
  event-source mapping, retries, visibility timeout, dead-letter queue and concurrency cap as uploads, and no
  second trigger to keep in step. The price is that uploads and shards share the queue's order;
  ``FANOUT_MAX_SHARDS`` and the mapping's maximum concurrency bound how many invocations one job takes.
- **Knative** (``K_SINK``, injected by the SinkBinding of infra/knative/fanout.yaml): each message is a
  binary-mode CloudEvent of type :data:`~handler.event_types.SHARD_EVENT_TYPE` posted to the Broker,
  whose Trigger ``rasterfn-shards`` delivers it back to the function (through the relay, which adds the
  bearer token). The Trigger's retries and dead-letter sink play the queue's part.

A send that fails raises :class:`~handler.errors.TransientError`: the message being handled is then retried
(SQS re-delivers it, the Broker retries its delivery), and every send is idempotent on the receiving side.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent

from handler.errors import TransientError
from handler.event_types import SHARD_EVENT_TYPE
from handler.fanout.messages import SHARD_EVENT_SOURCE, ShardMessage
from handler.queues import Queues
from handler.settings import Settings

Send = Callable[[ShardMessage], None]
# The Broker's ingress answers as soon as the channel has the event; a sink this slow is down.
SINK_TIMEOUT_S = 10.0


def sqs_sender(queue_url: str, queues: Queues) -> Send:
    """A ``send(message)`` that puts each shard message on ``queue_url``."""

    def send(message: ShardMessage) -> None:
        queues.send(queue_url, message.to_json())

    return send


def shard_event(message: ShardMessage) -> CloudEvent:
    """``message`` as a CloudEvent; duplicates of one shard share its id (pure).

    >>> shard_event(ShardMessage("b", "0123abcd", "predict", 2)).get_id()
    '0123abcd-predict-2'
    """
    attributes = {
        "type": SHARD_EVENT_TYPE,
        "source": SHARD_EVENT_SOURCE,
        "id": message.event_id,
        "subject": f"{message.job}/{message.phase}/{message.index}",
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes=attributes, data=message.to_json().encode())


def cloudevent_sender(sink_url: str, client: httpx.Client | None = None) -> Send:
    """A ``send(message)`` that posts each shard message to ``sink_url`` as a binary-mode CloudEvent."""
    http = client or httpx.Client(timeout=SINK_TIMEOUT_S)

    def send(message: ShardMessage) -> None:
        event = to_binary_event(shard_event(message))
        try:
            answer = http.post(sink_url, content=event.body, headers=event.headers)
        except httpx.HTTPError as exc:
            raise TransientError(f"shard message {message.event_id}: {sink_url} is unreachable: {exc}") from exc
        if not answer.is_success:
            raise TransientError(f"shard message {message.event_id}: the sink {sink_url} answered {answer.status_code}")

    return send


def sender_from_settings(settings: Settings, queues: Queues | None = None) -> Send | None:
    """The deployment's sender, or ``None`` when fan-out is off (neither ``FANOUT_QUEUE_URL`` nor ``K_SINK``).

    ``queues``: the container's SQS client (:attr:`handler.runtime.Runtime.queues`); a new one when None.
    """
    if settings.fanout_queue_url:
        return sqs_sender(settings.fanout_queue_url, queues or Queues.from_defaults())
    if settings.fanout_sink_url:
        return cloudevent_sender(settings.fanout_sink_url)
    return None
