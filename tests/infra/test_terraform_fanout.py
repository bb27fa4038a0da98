"""infra/terraform/fanout.tf: least privilege for the sharded assembly, its settings and lifecycle (static)."""

from __future__ import annotations

import ast

import pytest

from handler.objects import JOB_PREFIX
from handler.settings import env_var_names
from tests.fixtures.paths import REPO_ROOT
from tests.infra.test_terraform import (
    OWN_OUTPUT_NAMES,
    TF_DIR,
    as_list,
    load_config,
    policy_statements,
    resource_patterns,
)

# What each call of handler/fanout makes needs (AWS's "Actions defined by Amazon S3 / SQS" tables).
_ACTIONS_BY_CALL = {
    "create_multipart_upload": {"s3:PutObject"},
    "upload_part": {"s3:PutObject"},
    "complete_multipart_upload": {"s3:PutObject"},
    "abort_multipart_upload": {"s3:AbortMultipartUpload"},
    "put_object": {"s3:PutObject"},
    "get_object": {"s3:GetObject"},
    "head_object": {"s3:GetObject"},
    "get_paginator": {"s3:ListBucket"},  # list_objects_v2 over the job's folder
    "send_message": {"sqs:SendMessage"},
}


@pytest.fixture(scope="module")
def tf():
    return load_config(TF_DIR)


@pytest.fixture(scope="module")
def fanout_policy(tf):
    return list(policy_statements(tf.data["aws_iam_policy_document"]["fanout"]))


def _client_calls(tree: ast.AST) -> set[str]:
    """Methods called on a boto3 client in ``tree`` (``client.x``, ``self.client.x``)."""
    calls = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if (isinstance(owner, ast.Attribute) and owner.attr == "client") or (
                isinstance(owner, ast.Name) and owner.id == "client"
            ):
                calls.add(node.func.attr)
    return calls


def fanout_calls() -> set[str]:
    """boto3 calls handler/fanout makes: its own, and those of the storage-layer methods it calls."""
    used, calls = set(), set()
    for path in (REPO_ROOT / "handler" / "fanout").glob("*.py"):
        tree = ast.parse(path.read_text())
        calls |= _client_calls(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name in ("storage", "queues"):
                    used.add(node.func.attr)
    for module in ("storage.py", "queues.py"):
        for node in ast.walk(ast.parse((REPO_ROOT / "handler" / module).read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in used:
                calls |= _client_calls(node)
    return calls


def test_role_allows_every_call_the_fanout_makes(tf, fanout_policy):
    calls = fanout_calls()
    assert {"upload_part", "complete_multipart_upload", "send_message"} <= calls
    assert calls - set(_ACTIONS_BY_CALL) == set(), "map the new call's IAM actions above"
    granted = {action for statement in fanout_policy for action in statement["actions"]}
    lambda_granted = {
        action
        for statement in policy_statements(tf.data["aws_iam_policy_document"]["lambda"])
        for action in statement["actions"]
    }
    assert set().union(*(_ACTIONS_BY_CALL[c] for c in calls)) - granted - lambda_granted == set()


def test_fanout_writes_only_outputs_and_job_objects(tf, fanout_policy):
    job_prefix = "${local.output_bucket_arn}/${local.fanout_job_prefix}*"
    own_objects = "${local.output_bucket_arn}/${local.output_key_prefix}*"
    for statement in fanout_policy:
        for resource in as_list(statement["resources"]):
            for pattern in resource_patterns(resource, tf):
                if "s3:PutObject" in statement["actions"]:
                    # any output the table holds; exactly which per var.outputs: tests/outputs.tftest.hcl
                    output = pattern.startswith(own_objects) and pattern.removeprefix(own_objects) in OWN_OUTPUT_NAMES
                    assert output or pattern == job_prefix, pattern
                assert pattern != "*"
    sqs = [s for s in fanout_policy if any(a.startswith("sqs:") for a in s["actions"])]
    assert [(s["actions"], s["resources"]) for s in sqs] == [(["sqs:SendMessage"], ["${aws_sqs_queue.uploads.arn}"])]
    listing = [s for s in fanout_policy if "s3:ListBucket" in s["actions"]]
    assert listing and all(s["condition"][0]["values"] == ["${local.fanout_job_prefix}*"] for s in listing)


def test_job_prefix_and_lifecycle_match_the_code(tf):
    assert tf.locals["fanout_job_prefix"] == JOB_PREFIX
    rules = {rule["id"]: rule for rule in tf.resource("aws_s3_bucket_lifecycle_configuration", "input")["rule"]}
    job_rule = rules["expire-fanout-job-objects"]
    assert job_rule["filter"][0]["prefix"] == "${local.fanout_job_prefix}"
    assert job_rule["expiration"][0]["days"] == "${var.fanout_job_expiration_days}"
    assert "abort_incomplete_multipart_upload" in rules["abort-incomplete-multipart-uploads"]


def test_fanout_settings_are_read_by_the_code(tf):
    assert set(tf.locals["fanout_settings"]) <= set(env_var_names())
    assert "FANOUT_QUEUE_URL" in tf.locals["fanout_settings"]
