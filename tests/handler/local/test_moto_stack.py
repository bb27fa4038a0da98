"""The embedded stack: moto really delivers S3 notifications to SQS and really dead-letters, and the demo's
environment can only reach 127.0.0.1."""

from __future__ import annotations

import json
import os
import uuid

import boto3
import pytest

from handler.events import parse_sqs_body
from handler.local.moto_stack import (
    FAKE_CREDENTIALS,
    MotoServer,
    StackSpec,
    create_stack,
    ensure_bucket,
    local_aws_environ,
    notification_configuration,
    patched_environ,
    queue_depth,
    require_loopback,
    verify_clients_local,
)
from model.errors import ConfigError


@pytest.fixture
def stack(moto_endpoint):
    suffix = uuid.uuid4().hex[:10]
    spec = StackSpec(
        bucket=f"stack-{suffix}",
        queue_name=f"q-{suffix}",
        dlq_name=f"dlq-{suffix}",
        visibility_timeout_s=30,
        max_receive_count=2,
    )
    return create_stack(moto_endpoint, spec)


@pytest.fixture
def sqs(moto_endpoint):
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def s3(moto_endpoint):
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


def receive_all(sqs, queue_url: str) -> list[dict]:
    messages = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
        "Messages", []
    ):
        messages += batch
    return messages


def test_stack_has_the_terraform_topology(stack, sqs, s3):
    # GIVEN a freshly created stack
    # THEN the queue redrives to the DLQ after max_receive_count receives, with the configured visibility
    attrs = sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["All"])["Attributes"]
    assert json.loads(attrs["RedrivePolicy"]) == {"deadLetterTargetArn": stack.dlq_arn, "maxReceiveCount": 2}
    assert attrs["VisibilityTimeout"] == "30"
    policy = json.loads(attrs["Policy"])
    assert policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"] == f"arn:aws:s3:::{stack.bucket}"
    # AND the bucket is versioned, encrypted, private, and notifies the queue for each suffix
    assert s3.get_bucket_versioning(Bucket=stack.bucket)["Status"] == "Enabled"
    assert s3.get_public_access_block(Bucket=stack.bucket)["PublicAccessBlockConfiguration"]["BlockPublicAcls"]
    rules = s3.get_bucket_encryption(Bucket=stack.bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    configs = s3.get_bucket_notification_configuration(Bucket=stack.bucket)["QueueConfigurations"]
    assert sorted(c["Filter"]["Key"]["FilterRules"][0]["Value"] for c in configs) == [".tif", ".tiff"]
    assert {c["QueueArn"] for c in configs} == {stack.queue_arn}


def test_put_object_notifies_the_queue_for_tif_and_tiff_only(stack, sqs, s3):
    # GIVEN the stack (S3 sends its s3:TestEvent when the notification is configured)
    # WHEN objects with several suffixes are uploaded
    for key in (
        "scenes/a b.tif",
        "scenes/c.tiff",
        "scenes/a b.npy",
        "scenes/d.jpg",
        "scenes/e.tif.error.json",
    ):
        s3.put_object(Bucket=stack.bucket, Key=key, Body=b"x")
    # THEN only .tif and .tiff reach the queue, as S3 notifications the event parser decodes
    refs = [ref for m in receive_all(sqs, stack.queue_url) for ref in parse_sqs_body(m["Body"])]
    assert sorted(r.key for r in refs) == ["scenes/a b.tif", "scenes/c.tiff"]
    assert {r.event_name for r in refs} == {"ObjectCreated:Put"}
    assert {r.bucket for r in refs} == {stack.bucket}


def test_redrive_moves_a_message_to_the_dlq_after_max_receive_count(stack, sqs):
    # GIVEN a message nobody deletes
    for m in receive_all(sqs, stack.queue_url):  # S3's s3:TestEvent
        sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=m["ReceiptHandle"])
    sqs.send_message(QueueUrl=stack.queue_url, MessageBody="poison")
    receives = 0
    # WHEN it is received and released (visibility 0) more often than maxReceiveCount
    for _ in range(4):
        for m in sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        ):
            if m["Body"] == "poison":
                receives += 1
            sqs.change_message_visibility(
                QueueUrl=stack.queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
            )
    # THEN it was delivered exactly maxReceiveCount times, then moved to the DLQ
    assert receives == 2
    assert queue_depth(sqs, stack.queue_url) == 0
    assert [m["Body"] for m in receive_all(sqs, stack.dlq_url) if m["Body"] == "poison"] == ["poison"]


def test_create_stack_is_idempotent(stack, moto_endpoint):
    # GIVEN an existing stack WHEN it is created again THEN the same queues come back, no error
    again = create_stack(moto_endpoint, stack.spec)
    assert (again.queue_url, again.dlq_arn) == (stack.queue_url, stack.dlq_arn)


def test_ensure_bucket_creates_only_when_missing(s3):
    name = f"ensure-{uuid.uuid4().hex[:10]}"
    assert ensure_bucket(s3, name) is True
    assert ensure_bucket(s3, name) is False


def test_notification_configuration_has_one_rule_per_suffix():
    config = notification_configuration("arn:q", (".tif", ".tiff"))
    assert [c["Id"] for c in config["QueueConfigurations"]] == ["rasterfn-tif", "rasterfn-tiff"]
    assert all(c["Events"] == ["s3:ObjectCreated:*"] for c in config["QueueConfigurations"])


@pytest.mark.parametrize(
    "url", ["https://s3.amazonaws.com", "http://10.0.0.5:9000", "http://minio.example.com", "http://[::2]:1"]
)
def test_non_loopback_endpoints_are_refused(url):
    with pytest.raises(ConfigError, match="not on this machine"):
        require_loopback(url)
    with pytest.raises(ConfigError):
        local_aws_environ(url)


def test_local_environ_unsets_what_could_reach_aws():
    # GIVEN a user environment with a profile and a service-specific endpoint
    current = {
        "AWS_PROFILE": "prod",
        "AWS_ENDPOINT_URL_DYNAMODB": "https://x",
        "AWS_ENDPOINT_URL_S3": "https://y",
    }
    # WHEN the local environment is computed
    env = local_aws_environ("http://127.0.0.1:5000", current=current)
    # THEN the profile and foreign endpoints are unset, S3/SQS pinned, credentials fake
    assert env["AWS_PROFILE"] is None and env["AWS_ENDPOINT_URL_DYNAMODB"] is None
    assert env["AWS_ENDPOINT_URL_S3"] == env["AWS_ENDPOINT_URL_SQS"] == "http://127.0.0.1:5000"
    assert env["AWS_ACCESS_KEY_ID"] == FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]
    assert env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"] is None


def test_verify_clients_local_passes_in_the_local_environ_and_fails_outside(monkeypatch):
    url = "http://127.0.0.1:5999"
    with patched_environ(local_aws_environ(url)):
        verify_clients_local(url)
        # A service-specific endpoint set after the fact would send S3 elsewhere: refused.
        with patched_environ({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:1"}), pytest.raises(ConfigError):
            verify_clients_local(url)
        with patched_environ({"AWS_ACCESS_KEY_ID": "AKIAREAL"}), pytest.raises(ConfigError, match="fake"):
            verify_clients_local(url)


def test_patched_environ_restores_previous_values(monkeypatch):
    monkeypatch.setenv("RASTERFN_X", "before")
    monkeypatch.delenv("RASTERFN_Y", raising=False)
    with patched_environ({"RASTERFN_X": None, "RASTERFN_Y": "set"}):
        assert "RASTERFN_X" not in os.environ and os.environ["RASTERFN_Y"] == "set"
    assert os.environ["RASTERFN_X"] == "before" and "RASTERFN_Y" not in os.environ


def test_moto_server_serves_on_a_free_loopback_port():
    with MotoServer() as server:
        assert server.endpoint_url.startswith("http://127.0.0.1:")
        sqs = boto3.client("sqs", endpoint_url=server.endpoint_url, region_name="us-east-1")
        url = sqs.create_queue(QueueName=f"alive-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        assert url.startswith(server.endpoint_url)
