"""SQS, as the fan-out uses it: one message onto the function's own queue, its errors worded for a queue.

The client is built once per container (:class:`handler.runtime.Runtime` holds the :class:`Queues`); the
error codes mean what :func:`handler.aws.classify` says, as for S3.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from handler.aws import (
    DEFAULT_MAX_ATTEMPTS,
    Fault,
    botocore_errors,
    classify,
    error_code,
    error_message,
    make_sqs_client,
)
from handler.errors import TransientError
from model.errors import ConfigError, RasterfnError


def translate_sqs_error(exc: ClientError, queue_url: str) -> RasterfnError:
    """A send refused by SQS: throttled or unavailable is transient, anything else a deployment fault (pure)."""
    what = error_message(exc, queue_url)
    fault = classify(*error_code(exc))
    if fault is Fault.TRANSIENT:
        return TransientError(f"SQS is unavailable, retry later ({what})")
    if fault is Fault.DENIED:
        return ConfigError(f"access denied: the function's role or the queue policy does not allow {what}")
    return ConfigError(f"SQS refused the message ({what})")


@contextlib.contextmanager
def sqs_errors(queue_url: str) -> Iterator[None]:
    with botocore_errors(queue_url, "SQS", lambda exc: translate_sqs_error(exc, queue_url)):
        yield


@dataclass(frozen=True)
class Queues:
    """SQS operations the function needs, over one thread-safe boto3 client."""

    client: Any

    @classmethod
    def from_defaults(cls, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Queues:
        return cls(make_sqs_client(max_attempts=max_attempts))

    def send(self, queue_url: str, body: str) -> None:
        with sqs_errors(queue_url):
            self.client.send_message(QueueUrl=queue_url, MessageBody=body)
