"""Where shard messages go: the function's own SQS queue (``FANOUT_QUEUE_URL``).

The function's queue, not a dedicated one: shard messages then get the same event-source mapping, retries,
visibility timeout, dead-letter queue and concurrency cap as uploads, and no second trigger to keep in step.
The price is that uploads and shards share the queue's order; ``FANOUT_MAX_SHARDS`` and the mapping's maximum
concurrency bound how many invocations one job takes.
"""

from __future__ import annotations

from collections.abc import Callable

import boto3

from handler.fanout.messages import ShardMessage
from handler.settings import Settings
from handler.storage import s3_errors


def sqs_sender(queue_url: str) -> Callable[[ShardMessage], None]:
    """A ``send(message)`` that puts each shard message on ``queue_url`` (boto3 reads the endpoint itself)."""
    client = boto3.client("sqs")

    def send(message: ShardMessage) -> None:
        with s3_errors(queue_url, writing=True):  # the same botocore -> ours mapping (throttling is transient)
            client.send_message(QueueUrl=queue_url, MessageBody=message.to_json())

    return send


def sender_from_settings(settings: Settings) -> Callable[[ShardMessage], None] | None:
    """The deployment's sender, or ``None`` when fan-out is off (``FANOUT_QUEUE_URL`` unset)."""
    return sqs_sender(settings.fanout_queue_url) if settings.fanout_queue_url else None
