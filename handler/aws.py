"""What the S3 and SQS clients share: the one table of AWS error codes, botocore's exceptions, the clients.

:func:`classify` says what an error code and status mean (:class:`Fault`); :mod:`handler.s3_errors` and
:mod:`handler.queues` word the errors for their own service. Nothing outside the storage layer (these,
:mod:`handler.storage`) touches boto3 or botocore (``tests/handler/test_aws.py`` checks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ResponseStreamingError,
)

from handler.errors import TransientError
from model.errors import ConfigError, RasterfnError

# botocore's "standard" mode retries throttling, 5xx and connection errors with jittered backoff and a retry
# quota; "adaptive" only adds a per-client rate limiter, which does not help one-object-at-a-time containers.
DEFAULT_MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
# Connections per S3 client: Storage's transfers run 8 at once, plus room for the odd HEAD beside them.
DEFAULT_POOL = 10
# Connection errors botocore gives up on after its own retries: worth retrying later.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (ConnectionError, HTTPClientError, ResponseStreamingError)


class Fault(Enum):
    """What an S3 (or SQS) error code means for us; :data:`ERROR_CODES` is the one table."""

    ARCHIVED = "archived"
    TRANSIENT = "transient"
    DENIED = "denied"
    MISSING = "missing"
    CHANGED = "changed"
    UPLOAD_GONE = "upload gone"


ERROR_CODES: Mapping[str, Fault] = {
    "InvalidObjectState": Fault.ARCHIVED,
    **dict.fromkeys(
        (
            "SlowDown",
            "Throttling",
            "ThrottlingException",
            "TooManyRequests",
            "RequestLimitExceeded",
            "RequestTimeout",
            "RequestTimeoutException",
            "ServiceUnavailable",
            "InternalError",
            "OperationAborted",
            "ExpiredToken",
        ),
        Fault.TRANSIENT,
    ),
    **dict.fromkeys(
        ("403", "AccessDenied", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"),
        Fault.DENIED,
    ),
    **dict.fromkeys(("404", "NoSuchKey", "NoSuchVersion", "NoSuchBucket", "NotFound"), Fault.MISSING),
    **dict.fromkeys(("412", "PreconditionFailed", "ConditionalRequestConflict"), Fault.CHANGED),
    "NoSuchUpload": Fault.UPLOAD_GONE,  # a multipart upload completed or aborted since
}


def classify(code: str, status: int) -> Fault | None:
    """The fault an error code and HTTP status mean, None for any other refusal (pure).

    The code is more specific than the status (InvalidObjectState comes with 403), so codes decide first.
    """
    fault = ERROR_CODES.get(code)
    if fault in (Fault.ARCHIVED, Fault.UPLOAD_GONE):
        return fault
    if fault is Fault.TRANSIENT or status >= 500 or status == 429:
        return Fault.TRANSIENT
    for candidate, candidate_status in ((Fault.DENIED, 403), (Fault.MISSING, 404), (Fault.CHANGED, 412)):
        if fault is candidate or status == candidate_status:
            return candidate
    return None


def error_code(exc: ClientError) -> tuple[str, int]:
    """A ``ClientError``'s code and HTTP status (0 when absent) (pure)."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code, status


def error_message(exc: ClientError, uri: str) -> str:
    code, status = error_code(exc)
    return f"{exc.operation_name} {uri}: {code or status} {exc.response.get('Error', {}).get('Message', '')}".strip()


@contextlib.contextmanager
def botocore_errors(
    uri: str,
    service: str,
    translate: Callable[[ClientError], RasterfnError],
    transient: tuple[type[Exception], ...] = (),
) -> Iterator[None]:
    """Translate botocore's exceptions inside the block (``raise ... from``): a ``ClientError`` by
    ``translate``; a dropped connection (or one of ``transient``) is transient; no credentials, or any other
    client fault, is a :class:`ConfigError`."""
    try:
        yield
    except ClientError as exc:
        raise translate(exc) from exc
    except CONNECTION_ERRORS + transient as exc:
        raise TransientError(f"{service} connection failed for {uri}, retry later: {exc}") from exc
    except NoCredentialsError as exc:
        raise ConfigError(f"no AWS credentials to access {uri}") from exc
    except BotoCoreError as exc:
        raise ConfigError(f"{service} client error for {uri}: {exc}") from exc


def client_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS, **options: Any) -> Config:
    """Retries and timeouts every client of ours has; ``options`` are further botocore ``Config`` fields."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        tcp_keepalive=True,
        **options,
    )


def make_client(service: str, config: Config, endpoint_url: str | None = None) -> Any:
    """A boto3 client of a new session; ``endpoint_url`` None lets boto3 read ``AWS_ENDPOINT_URL*``."""
    return boto3.session.Session().client(service, endpoint_url=endpoint_url, config=config)


def make_s3_client(
    endpoint_url: str | None = None, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS, pool: int = DEFAULT_POOL
) -> Any:
    """An S3 client with retries and timeouts; ``endpoint_url`` None lets boto3 read ``AWS_ENDPOINT_URL*``."""
    config = client_config(
        max_attempts,
        signature_version="s3v4",  # presigned URLs too (botocore may presign with SigV2, which S3 is retiring)
        max_pool_connections=pool,
    )
    client = make_client("s3", config, endpoint_url)
    if not _is_aws_endpoint(client.meta.endpoint_url):
        # MinIO and moto serve buckets under the path, not as sub-domains of the endpoint host.
        client = make_client("s3", config.merge(Config(s3={"addressing_style": "path"})), endpoint_url)
    return client


def _is_aws_endpoint(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws"))


def make_sqs_client(endpoint_url: str | None = None, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Any:
    """An SQS client with our retries and timeouts; boto3 reads ``AWS_ENDPOINT_URL*`` itself."""
    return make_client("sqs", client_config(max_attempts), endpoint_url)
