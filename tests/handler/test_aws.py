"""handler/aws.py and handler/queues.py: one table of AWS error codes, each service's wording, and the boundary."""

from __future__ import annotations

import ast

import pytest
from botocore.exceptions import ClientError

from handler.aws import Fault, classify
from handler.errors import TransientError
from handler.queues import Queues, translate_sqs_error
from model.errors import ConfigError
from tests.fixtures.paths import REPO_ROOT

# The storage layer: the only modules of the function that may touch boto3, botocore or s3transfer.
STORAGE_LAYER = {"handler/aws.py", "handler/s3_errors.py", "handler/storage.py", "handler/queues.py"}
AWS_SDK = ("boto3", "botocore", "s3transfer")
# Local tools drive moto and the local stack with boto3; they are not the function (and not in the image).
LOCAL_ONLY = ("handler/local/", "model/training/")


def sdk_imports(path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return [n for n in names if n.split(".")[0] in AWS_SDK]


def test_no_aws_sdk_use_outside_the_storage_layer():
    offenders = {}
    for package in ("handler", "model"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            name = path.relative_to(REPO_ROOT).as_posix()
            if name in STORAGE_LAYER or name.startswith(LOCAL_ONLY):
                continue
            if found := sdk_imports(path):
                offenders[name] = found
    assert offenders == {}


@pytest.mark.parametrize(
    ("code", "status", "fault"),
    [
        ("InvalidObjectState", 403, Fault.ARCHIVED),  # the code wins over the status
        ("NoSuchUpload", 404, Fault.UPLOAD_GONE),
        ("SlowDown", 503, Fault.TRANSIENT),
        ("NoSuchKey", 500, Fault.TRANSIENT),  # a 5xx is worth a retry whatever it says
        ("", 429, Fault.TRANSIENT),
        ("AccessDenied", 403, Fault.DENIED),
        ("NoSuchKey", 403, Fault.DENIED),
        ("NoSuchBucket", 404, Fault.MISSING),
        ("", 404, Fault.MISSING),
        ("ConditionalRequestConflict", 409, Fault.CHANGED),
        ("", 412, Fault.CHANGED),
        ("InvalidArgument", 400, None),
    ],
)
def test_classify_reads_the_code_then_the_status(code, status, fault):
    assert classify(code, status) is fault


def sqs_error(code: str, status: int) -> ClientError:
    response = {"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "SendMessage")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ThrottlingException", 400, TransientError),
        ("ServiceUnavailable", 503, TransientError),
        ("AccessDenied", 403, ConfigError),
        ("AWS.SimpleQueueService.NonExistentQueue", 400, ConfigError),
    ],
)
def test_an_sqs_refusal_is_worded_for_the_queue(code, status, expected):
    error = translate_sqs_error(sqs_error(code, status), "https://sqs/q")
    assert type(error) is expected
    assert "https://sqs/q" in str(error) and "S3" not in str(error)


def test_a_send_to_a_missing_queue_is_a_config_error(moto_endpoint):
    # GIVEN the container's SQS client WHEN a message goes to a queue that does not exist THEN ConfigError
    queues = Queues.from_defaults(max_attempts=1)
    missing = f"{moto_endpoint}/123456789012/nope"
    with pytest.raises(ConfigError, match="nope"):
        queues.send(missing, "{}")
