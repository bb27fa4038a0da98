"""An embedded S3 + SQS (moto's server on 127.0.0.1) with the topology Terraform creates in AWS.

Topology (see ``infra/terraform``): a versioned, encrypted, private bucket whose ``s3:ObjectCreated:*``
notifications for ``.tif`` and ``.tiff`` keys go to an SQS queue; the queue's redrive policy moves a message
to a dead-letter queue after ``max_receive_count`` receives. moto 5 implements both for real: a PutObject
sends the S3 event to the queue (URL-encoding the key with ``quote_plus``, like AWS) and a receive beyond
``maxReceiveCount`` moves the message to the DLQ (checked in ``tests/test_moto_stack.py``).

Example:
    >>> with MotoServer() as server:
    ...     stack = create_stack(server.endpoint_url, StackSpec(bucket="my-demo"))
    ...     stack.queue_arn
    'arn:aws:sqs:us-east-1:123456789012:rasterfn-uploads'
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from model.errors import ConfigError

DEFAULT_REGION = "us-east-1"
DEMO_BUCKET = "rasterfn-demo"
DEMO_QUEUE = "rasterfn-uploads"  # Terraform: "${var.name}-uploads"
DEMO_DLQ = "rasterfn-uploads-dlq"
DEFAULT_SUFFIXES = (".tif", ".tiff")
# Terraform's: AWS's advice for an SQS-triggered function, 6 x the function timeout (300 s).
DEFAULT_VISIBILITY_TIMEOUT_S = 6 * 300
DEFAULT_MAX_RECEIVE_COUNT = 3
DEFAULT_RETENTION_S = 4 * 24 * 3600
DLQ_RETENTION_S = 14 * 24 * 3600  # the maximum: a dead letter must outlive the original message
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

# Credentials moto accepts and AWS rejects: nothing signed with them can act on a real account.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
# Variables that could send a client elsewhere than AWS_ENDPOINT_URL or pick real credentials.
_UNSAFE_AWS_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SECURITY_TOKEN",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)
_SERVICE_ENDPOINT_PREFIX = "AWS_ENDPOINT_URL_"


@dataclass(frozen=True)
class StackSpec:
    """Names and knobs of the stack; the defaults mirror the Terraform variables' defaults."""

    bucket: str = DEMO_BUCKET
    queue_name: str = DEMO_QUEUE
    dlq_name: str = DEMO_DLQ
    region: str = DEFAULT_REGION
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT
    retention_s: int = DEFAULT_RETENTION_S


@dataclass(frozen=True)
class Stack:
    """What :func:`create_stack` made, with the ids the event-source mapping and the demo need."""

    endpoint_url: str
    spec: StackSpec
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str

    @property
    def bucket(self) -> str:
        return self.spec.bucket

    @property
    def region(self) -> str:
        return self.spec.region


class MotoServer:
    """moto's threaded server on a free loopback port, as a context manager.

    moto keeps its state per process: two servers in one process see the same buckets and queues.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from moto.server import ThreadedMotoServer  # moto is heavy: imported only when a server starts

        # werkzeug would log every request to stderr and drown the demo's progress lines.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self._started = False
        self.endpoint_url = ""

    def start(self) -> MotoServer:
        self._server.start()
        self._started = True
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._started:
            self._server.stop()
            self._started = False

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client(service: str, endpoint_url: str | None, region: str = DEFAULT_REGION) -> Any:
    """A boto3 client; ``endpoint_url=None`` means the environment's (AWS_ENDPOINT_URL) or AWS."""
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    return boto3.client(service, endpoint_url=endpoint_url, region_name=region, config=config)


def create_stack(endpoint_url: str, spec: StackSpec = StackSpec()) -> Stack:
    """Create the bucket, queue, DLQ and notification (idempotent within one moto process)."""
    sqs = client("sqs", endpoint_url, spec.region)
    s3 = client("s3", endpoint_url, spec.region)

    dlq_url = sqs.create_queue(QueueName=spec.dlq_name, Attributes={"MessageRetentionPeriod": str(DLQ_RETENTION_S)})[
        "QueueUrl"
    ]
    dlq_arn = queue_arn(sqs, dlq_url)
    queue_attributes = {
        "VisibilityTimeout": str(spec.visibility_timeout_s),
        "MessageRetentionPeriod": str(spec.retention_s),
        "ReceiveMessageWaitTimeSeconds": "20",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": spec.max_receive_count}),
    }
    queue_url = sqs.create_queue(QueueName=spec.queue_name, Attributes=queue_attributes)["QueueUrl"]
    arn = queue_arn(sqs, queue_url)
    bucket_arn = f"arn:aws:s3:::{spec.bucket}"
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(_queue_policy(arn, bucket_arn))})
    sqs.set_queue_attributes(
        QueueUrl=dlq_url,
        Attributes={"RedriveAllowPolicy": json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [arn]})},
    )

    _create_bucket(s3, spec.bucket, spec.region)
    s3.put_bucket_versioning(Bucket=spec.bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_public_access_block(
        Bucket=spec.bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=spec.bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_bucket_notification_configuration(
        Bucket=spec.bucket, NotificationConfiguration=notification_configuration(arn, spec.suffixes)
    )
    return Stack(
        endpoint_url=endpoint_url,
        spec=spec,
        queue_url=queue_url,
        queue_arn=arn,
        dlq_url=dlq_url,
        dlq_arn=dlq_arn,
    )


def notification_configuration(queue_arn: str, suffixes: tuple[str, ...]) -> dict[str, Any]:
    """One queue configuration per suffix: S3 filters take one suffix rule each (pure)."""
    return {
        "QueueConfigurations": [
            {
                "Id": f"rasterfn-{suffix.lstrip('.')}",
                "QueueArn": queue_arn,
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": suffix}]}},
            }
            for suffix in suffixes
        ]
    }


def queue_arn(sqs: Any, queue_url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def queue_depth(sqs: Any, queue_url: str) -> int:
    """Messages in the queue: visible, in flight and delayed."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def ensure_bucket(s3: Any, bucket: str, region: str = DEFAULT_REGION) -> bool:
    """Create ``bucket`` unless it exists; True when it was created."""
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    _create_bucket(s3, bucket, region)
    return True


def local_aws_environ(
    endpoint_url: str, region: str = DEFAULT_REGION, current: Mapping[str, str] | None = None
) -> dict[str, str | None]:
    """The variables that point every boto3 client of this process at ``endpoint_url`` with fake
    credentials; ``None`` means "unset" (pure given ``current``; apply it with :func:`patched_environ`).

    Raises ConfigError unless the endpoint is on the loopback interface: the demo must never touch AWS.
    """
    require_loopback(endpoint_url)
    current = os.environ if current is None else current
    env: dict[str, str | None] = {name: None for name in _UNSAFE_AWS_VARS}
    # Service-specific endpoints win over AWS_ENDPOINT_URL in botocore: unset them all, pin S3 and SQS.
    env.update({k: None for k in current if k.startswith(_SERVICE_ENDPOINT_PREFIX)})
    env.update(FAKE_CREDENTIALS)
    env.update(
        {
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_ENDPOINT_URL_S3": endpoint_url,
            "AWS_ENDPOINT_URL_SQS": endpoint_url,
            "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region,
            # No ~/.aws files: a profile there could carry credentials or endpoint settings.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return env


def require_loopback(endpoint_url: str) -> None:
    host = urlsplit(endpoint_url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ConfigError(f"refusing to run: endpoint {endpoint_url!r} is not on this machine (127.0.0.1)")


def verify_clients_local(endpoint_url: str, region: str = DEFAULT_REGION) -> None:
    """Refuse to go on unless default boto3 clients resolve to ``endpoint_url`` with the fake credentials.

    The handler builds its clients from the environment; this checks what it will get before it runs.
    """
    session = boto3.session.Session(region_name=region)
    for service in ("s3", "sqs"):
        endpoint = session.client(service).meta.endpoint_url
        if endpoint.rstrip("/") != endpoint_url.rstrip("/"):
            raise ConfigError(
                f"refusing to run: a default {service} client would use {endpoint}, not the local {endpoint_url}"
            )
    creds = session.get_credentials()
    if creds is None or creds.access_key != FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]:
        raise ConfigError("refusing to run: default clients would not use the fake credentials")


@contextmanager
def patched_environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for ``None``, unset) variables in ``os.environ``; restore them on exit."""
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _create_bucket(s3: Any, bucket: str, region: str) -> None:
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":  # us-east-1 refuses an explicit LocationConstraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise


def _queue_policy(queue_arn: str, bucket_arn: str) -> dict[str, Any]:
    # The same statement Terraform attaches: only this bucket's notifications may send to the queue.
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowBucketNotifications",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": bucket_arn}},
            }
        ],
    }
