"""infra/terraform, parsed with python-hcl2 and cross-checked against the code it deploys.

No terraform binary or AWS account is needed: these tests read the configuration as data and check what would
otherwise only fail after a deployment (an environment variable the code never reads, a suffix filter the code
disagrees with, a visibility timeout shorter than the function, a wildcard in the function's role).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2 import SerializationOptions

from handler import objects, settings
from tests.fixtures.paths import REPO_ROOT

ROOT = REPO_ROOT
TF_DIR = ROOT / "infra" / "terraform"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
LAMBDA_HANDLER = "handler.lambda_function.lambda_handler"
SQS_MAX_VISIBILITY_TIMEOUT_S = 43_200
_PARSE_OPTIONS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
_REFERENCE = re.compile(r"\b(var|local)\.([A-Za-z_][A-Za-z0-9_]*)\b")


@dataclass(frozen=True)
class Config:
    """All ``.tf`` files of one directory merged: ``resources[type][name]`` -> body, and so on."""

    resources: dict[str, dict[str, dict[str, Any]]]
    data: dict[str, dict[str, dict[str, Any]]]
    variables: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    terraform: dict[str, Any]

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        return self.resources[kind][name]

    def default(self, name: str) -> Any:
        return self.variables[name]["default"]


def load_config(directory: Path) -> Config:
    resources: dict[str, dict[str, dict[str, Any]]] = {}
    data: dict[str, dict[str, dict[str, Any]]] = {}
    variables: dict[str, dict[str, Any]] = {}
    local_values: dict[str, Any] = {}
    outputs: dict[str, dict[str, Any]] = {}
    terraform: dict[str, Any] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            doc = hcl2.load(handle, serialization_options=_PARSE_OPTIONS)
        for target, key in ((resources, "resource"), (data, "data")):
            for block in doc.get(key, []):
                for kind, named in block.items():
                    for name, body in named.items():
                        assert name not in target.setdefault(kind, {}), f"{kind}.{name} declared twice"
                        target[kind][name] = body
        for block in doc.get("variable", []):
            variables.update(block)
        for block in doc.get("locals", []):
            local_values.update(block)
        for block in doc.get("output", []):
            outputs.update(block)
        for block in doc.get("terraform", []):
            terraform.update(block)
    return Config(resources, data, variables, local_values, outputs, terraform)


def evaluate(expression: Any, config: Config, overrides: dict[str, Any] | None = None) -> Any:
    """Arithmetic over variable defaults and locals: ``"${6 * var.timeout + 5}"`` -> a number (pure).

    Only numbers, + - * / and parentheses after substitution: anything else is a test error, on purpose.
    """
    if not isinstance(expression, str):
        return expression
    text = expression.removeprefix("${").removesuffix("}")
    overrides = overrides or {}

    def substitute(match: re.Match[str]) -> str:
        kind, name = match.groups()
        if kind == "var":
            value = overrides.get(name, config.default(name))
        else:
            value = evaluate(config.locals[name], config, overrides)
        return f"({value!r})"

    tree = ast.parse(_REFERENCE.sub(substitute, text), mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop)
    bad = [type(node).__name__ for node in ast.walk(tree) if not isinstance(node, allowed)]
    assert not bad, f"not plain arithmetic: {expression!r} ({bad})"
    return eval(compile(tree, "<terraform>", "eval"))


def policy_statements(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Static and dynamic ``statement`` blocks of an ``aws_iam_policy_document``."""
    yield from document.get("statement", [])
    for dynamic in document.get("dynamic", []):
        yield from dynamic.get("statement", {}).get("content", [])


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# `[for suffix in local.SUFFIXES : "<prefix>${suffix}"]`: the object ARNs of a suffix list (iam.tf, fanout.tf).
_OBJECTS_OF_SUFFIXES = re.compile(r'^\$\{\[for (\w+) in local\.(\w+) : "(?P<prefix>[^"]*)\$\{\1\}"\]\}$')
# What may surround local references in a list-valued resources expression: concat() of lists, nothing else.
_ONLY_LIST_GLUE = re.compile(r"^[\s,\[\]()]*(concat[\s,\[\]()]*)*$")


def product_suffixes(config: Config) -> dict[str, list[str]]:
    """iam.tf's table of what each OUTPUTS format writes, the COG under every name OUTPUT_MODE can give it."""
    cogs = list(dict.fromkeys(config.locals["cog_suffixes"].values()))
    return {
        name: [s for value in values for s in (cogs if value == "${local.cog_suffix}" else [value])]
        for name, values in config.locals["product_suffixes"].items()
    }


def resource_patterns(resource: str, config: Config) -> set[str]:
    """Every ARN pattern a ``resources`` entry can stand for, whatever the variables (a superset: pure).

    A literal or template is itself; ``${local.X}`` and ``concat()`` of locals are followed; a local built from
    the output table (``local.product_suffixes[...]``) may hold any of its suffixes. Anything else is a test error.
    """
    if not (resource.startswith("${") and resource.endswith("}")) or resource.count("${") > 1:
        match = _OBJECTS_OF_SUFFIXES.match(resource)
        if match is None:
            return {resource}  # a literal ARN or a "${a}/${b}*.npy" template
        source = config.locals[match.group(2)]
        assert "local.product_suffixes[" in source, f"local.{match.group(2)} is not built from the output table"
        return {match["prefix"] + suffix for suffixes in product_suffixes(config).values() for suffix in suffixes}
    expression = resource[2:-1]
    if re.fullmatch(r"(aws_\w+\.\w+\.arn|local\.output_bucket_arn)", expression):
        return {resource}  # one of this configuration's own resources
    names = re.findall(r"\blocal\.(\w+)", expression)
    glue = re.sub(r"\blocal\.\w+", "", expression)
    assert names and _ONLY_LIST_GLUE.match(glue), f"cannot follow {resource!r}"
    return set().union(*(resource_patterns(value, config) for n in names for value in as_list(config.locals[n])))


def powertools_env_var_names() -> set[str]:
    """The environment variables aws-lambda-powertools documents, from its own constants module."""
    from aws_lambda_powertools.shared import constants

    return {
        value
        for name, value in vars(constants).items()
        if name.endswith("_ENV")
        and isinstance(value, str)
        and (value.startswith("POWERTOOLS_") or value == "LOG_LEVEL")
    }


@pytest.fixture(scope="module")
def tf() -> Config:
    return load_config(TF_DIR)


@pytest.fixture(scope="module")
def lambda_policy(tf) -> list[dict[str, Any]]:
    return list(policy_statements(tf.data["aws_iam_policy_document"]["lambda"]))


# --- Versions and hygiene


def test_versions_are_pinned(tf):
    # GIVEN versions.tf WHEN read THEN Terraform and the AWS provider are constrained to a major version
    assert tf.terraform["required_version"] == ">= 1.6"
    (providers,) = tf.terraform["required_providers"]  # a block: one-element list
    aws = providers["aws"]
    assert aws["source"] == "hashicorp/aws"
    # The last 5.x (what offline mirrors hold, and what `make static` validates with here) through 6.x
    assert aws["version"] == ">= 5.100, < 7.0"


@pytest.mark.parametrize("attribute", ["region", "name", "endpoint"])
def test_no_aws_region_attribute_that_only_one_provider_major_has(attribute):
    # `region` is new in 6.x, `name` and `endpoint` are deprecated there: `id` is the region in both
    text = "\n".join(path.read_text() for path in TF_DIR.glob("*.tf"))
    assert f"data.aws_region.current.{attribute}" not in text
    assert "data.aws_region.current.id" in text


def test_every_variable_and_output_is_documented(tf):
    undocumented = [f"var.{n}" for n, v in tf.variables.items() if not v.get("description") or "type" not in v]
    undocumented += [f"output.{n}" for n, o in tf.outputs.items() if not o.get("description")]
    assert undocumented == []


def test_tfvars_example_sets_only_declared_variables(tf):
    # GIVEN the example tfvars WHEN parsed THEN every name is a declared variable (typos would be errors)
    with (TF_DIR / "terraform.tfvars.example").open() as handle:
        example = hcl2.load(handle, serialization_options=_PARSE_OPTIONS)
    assert example, "the example sets nothing"
    assert set(example) - set(tf.variables) == set()


def test_makefile_reads_outputs_that_exist(tf):
    # GIVEN the Makefile's `terraform output -raw NAME` calls THEN each NAME is an output
    used = set(re.findall(r"output -raw ([a-z_]+)", (ROOT / "Makefile").read_text()))
    assert used, "make push-image should read the repository URL from Terraform"
    assert used - set(tf.outputs) == set()


# --- The function and the code


def test_lambda_environment_names_are_read_by_the_code_or_powertools(tf):
    # GIVEN the function's environment, built from two maps in locals.tf
    function = tf.resource("aws_lambda_function", "this")
    assert function["environment"][0]["variables"] == "${local.lambda_environment}"
    assert "local.lambda_settings" in tf.locals["lambda_environment"]
    assert "local.powertools_settings" in tf.locals["lambda_environment"]
    # WHEN compared with what the code reads THEN each name is read by handler/settings.py or by powertools
    assert set(tf.locals["lambda_settings"]) - set(settings.env_var_names()) == set()
    assert set(tf.locals["powertools_settings"]) - powertools_env_var_names() == set()


def test_lambda_settings_are_skipped_when_null(tf):
    # GIVEN optional settings defaulting to null WHEN the environment is built THEN nulls are dropped, so
    # the code's defaults (handler/settings.py) apply instead of empty strings
    assert "if value != null" in tf.locals["lambda_environment"]
    optional = {"precision", "output_mode", "max_pixels", "max_input_bytes", "min_remaining_ms", "model_uri"}
    assert {name for name in optional if tf.default(name) is not None} == set()


def test_entrypoint_handler_exists_in_the_code():
    # GIVEN the handler the image's entrypoint runs under Lambda
    assert f'DEFAULT_LAMBDA_HANDLER="{LAMBDA_HANDLER}"' in ENTRYPOINT.read_text()
    module, function = LAMBDA_HANDLER.rsplit(".", 1)
    path = ROOT / (module.replace(".", "/") + ".py")
    # WHEN its module is parsed (importing it would load the model) THEN it defines that function at top level
    assert path.is_file(), f"{path} is missing"
    tree = ast.parse(path.read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    defined |= {
        t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
    }
    assert function in defined


def test_function_runs_the_image_with_tracing(tf):
    function = tf.resource("aws_lambda_function", "this")
    assert function["package_type"] == "Image"
    assert function["image_uri"] == "${local.image_uri}"
    assert function["architectures"] == ["x86_64"]
    assert function["tracing_config"][0]["mode"] == "Active"
    # The entrypoint picks the handler: no image_config that could disagree with it.
    assert "image_config" not in function
    assert tf.default("memory_mb") == 3008
    assert tf.default("function_timeout_seconds") == 300
    assert tf.default("ephemeral_storage_mb") == 4096


def test_log_group_is_the_one_lambda_writes_to(tf):
    function = tf.resource("aws_lambda_function", "this")
    group = tf.resource("aws_cloudwatch_log_group", "lambda")
    assert function["function_name"] == "${local.function_name}"
    assert group["name"] == "/aws/lambda/${local.function_name}"
    assert function["logging_config"][0]["log_group"] == "${aws_cloudwatch_log_group.lambda.name}"


def test_suffix_filter_matches_the_code(tf):
    # GIVEN the notification's suffixes and the code's defaults THEN they are the same list
    assert tf.default("input_suffixes") == list(settings.DEFAULT_INPUT_SUFFIXES)
    # AND every suffix gets an object-created queue notification, filtered by that suffix
    notification = tf.resource("aws_s3_bucket_notification", "input")
    queue = notification["dynamic"][0]["queue"]
    assert queue["for_each"] == "${toset(var.input_suffixes)}"
    content = queue["content"][0]
    assert content["filter_suffix"] == "${queue.value}"
    assert content["events"] == ["s3:ObjectCreated:*"]
    assert content["queue_arn"] == "${aws_sqs_queue.uploads.arn}"
    assert "${aws_sqs_queue_policy.uploads}" in notification["depends_on"]
    # AND the function is told the same suffixes, so a changed variable changes both
    assert tf.locals["lambda_settings"]["INPUT_SUFFIXES"] == '${join(",", var.input_suffixes)}'


@pytest.mark.parametrize("timeout_s", [60, 300, 900])
def test_visibility_timeout_covers_six_function_timeouts(tf, timeout_s):
    # GIVEN a function timeout WHEN the queue's visibility timeout is derived
    # THEN it is >= 6x it (AWS's advice for SQS event sources) and within SQS's limit
    queue = tf.resource("aws_sqs_queue", "uploads")
    overrides = {"function_timeout_seconds": timeout_s}
    visibility = evaluate(queue["visibility_timeout_seconds"], tf, overrides)
    assert 6 * timeout_s <= visibility <= SQS_MAX_VISIBILITY_TIMEOUT_S


def test_visibility_timeout_with_defaults(tf):
    queue = tf.resource("aws_sqs_queue", "uploads")
    visibility = evaluate(queue["visibility_timeout_seconds"], tf)
    assert visibility >= 6 * tf.default("function_timeout_seconds") == 1800
    assert queue["receive_wait_time_seconds"] == 20


def test_event_source_mapping_reports_batch_item_failures(tf):
    mapping = tf.resource("aws_lambda_event_source_mapping", "uploads")
    assert mapping["function_response_types"] == ["ReportBatchItemFailures"]
    assert mapping["event_source_arn"] == "${aws_sqs_queue.uploads.arn}"
    assert mapping["scaling_config"][0]["maximum_concurrency"] == "${var.maximum_concurrency}"


def test_function_is_unreserved_by_default(tf):
    # GIVEN a new account (AWS refuses reservations leaving under 100 unreserved) THEN nothing is reserved
    assert tf.default("reserved_concurrency") is None
    function = tf.resource("aws_lambda_function", "this")
    assert function["reserved_concurrent_executions"] == "${var.reserved_concurrency}"
    # AND a reservation, when set, must cover the pollers (checked with null in mind)
    (precondition, _) = tf.resource("aws_lambda_event_source_mapping", "uploads")["lifecycle"][0]["precondition"]
    assert "coalesce(var.reserved_concurrency" in precondition["condition"]


# --- IAM: least privilege

_SCOPED_RESOURCES = (
    "${aws_s3_bucket.input.arn}",
    "${local.output_bucket_arn}",
    "${aws_sqs_queue.uploads.arn}",
    "${aws_kms_key.this.arn}",
    "${aws_cloudwatch_log_group.lambda.arn}",
    "arn:${local.partition}:s3:::${statement.value[0]}",  # the MODEL_URI bucket, only when set
)
# var.extra_kms_key_arns (validated as key ARNs), granted through S3 only: checked on its own below.
_EXTRA_KEYS = ("UseOtherBucketsKeysThroughS3", "${statement.value}")
# Actions without resource-level permissions: "*" is their only valid resource.
_UNSCOPABLE_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def test_function_policy_names_every_action(lambda_policy):
    actions = [action for statement in lambda_policy for action in statement["actions"]]
    assert actions
    assert [a for a in actions if "*" in a or "?" in a] == []
    assert all(statement.get("effect", "Allow") == "Allow" for statement in lambda_policy)


def test_function_policy_resources_are_scoped(tf, lambda_policy):
    unscoped = []
    for statement in lambda_policy:
        for resource in as_list(statement["resources"]):
            if (statement.get("sid"), resource) == _EXTRA_KEYS or "statement.value" in resource:
                patterns = {resource}  # dynamic content: checked as written
            else:
                patterns = resource_patterns(resource, tf)
            for pattern in patterns:
                unscoped += _unscoped(statement, pattern)
    assert unscoped == []


def _unscoped(statement: dict[str, Any], resource: str) -> list[tuple[str | None, str]]:
    """``[(sid, resource)]`` if ``resource`` is neither one of this configuration's nor ``*`` where only ``*`` works."""
    if resource == "*":
        scoped = set(statement["actions"]) <= _UNSCOPABLE_ACTIONS
    else:
        scoped = (statement.get("sid"), resource) == _EXTRA_KEYS or any(p in resource for p in _SCOPED_RESOURCES)
    return [] if scoped else [(statement.get("sid"), resource)]


# Every output the function can write (handler/objects.py), as S3 compares them: case-sensitively.
OWN_OUTPUT_NAMES = (
    objects.OUTPUT_SUFFIX,
    *objects.COG_SUFFIXES.values(),
    objects.STAC_SUFFIX,
    objects.THUMBNAIL_SUFFIX,
)


@pytest.mark.parametrize(
    ("action", "allowed_suffixes"),
    [
        # outputs and error markers only: never a user's upload (any output var.outputs may name: see
        # infra/terraform/tests/outputs.tftest.hcl for exactly which ones each setting grants)
        ("s3:PutObject", (*OWN_OUTPUT_NAMES, objects.ERROR_SUFFIX)),
        ("s3:AbortMultipartUpload", OWN_OUTPUT_NAMES),  # outputs may go up in parts; markers never do
        ("s3:DeleteObject", (objects.ERROR_SUFFIX,)),  # stale error markers only
        ("s3:DeleteObjectVersion", (objects.ERROR_SUFFIX,)),
    ],
)
def test_function_writes_only_its_own_outputs(tf, lambda_policy, action, allowed_suffixes):
    patterns = {
        pattern
        for statement in lambda_policy
        if action in statement["actions"]
        for resource in as_list(statement["resources"])
        for pattern in resource_patterns(resource, tf)
    }
    own_objects = "${local.output_bucket_arn}/${local.output_key_prefix}*"
    assert patterns
    assert {
        p for p in patterns if not (p.startswith(own_objects) and p.removeprefix(own_objects) in allowed_suffixes)
    } == set()


# What each S3 call of handler/storage.py needs (AWS's "Actions defined by Amazon S3" table); a call not
# listed here fails the test below until its actions are added here and to iam.tf.
_S3_ACTIONS_BY_CALL = {
    "head_object": {"s3:GetObject", "s3:GetObjectVersion"},  # with VersionId: GetObjectVersion
    "get_object": {"s3:GetObject", "s3:GetObjectVersion"},
    "put_object": {"s3:PutObject"},
    "delete_object": {"s3:DeleteObject", "s3:DeleteObjectVersion"},
    "download": {"s3:GetObject", "s3:GetObjectVersion"},  # s3transfer: ranged GetObject
    "upload": {"s3:PutObject", "s3:AbortMultipartUpload"},  # s3transfer: multipart above the threshold
    # Our own multipart upload, for conditional writes (If-Match / If-None-Match on the completion).
    "create_multipart_upload": {"s3:PutObject"},
    "upload_part": {"s3:PutObject"},
    "complete_multipart_upload": {"s3:PutObject"},
    "abort_multipart_upload": {"s3:AbortMultipartUpload"},
    # Fan-out's range reads: GDAL sends a GET presigned with the function's own (role) credentials.
    "generate_presigned_url": {"s3:GetObject", "s3:GetObjectVersion"},
    # Fan-out's job store counts a phase's objects (list_objects_v2 pages).
    "get_paginator": {"s3:ListBucket"},
}


def storage_s3_calls() -> set[str]:
    """Methods handler/storage.py calls on its boto3 client (``self.client.x``) or transfer manager."""
    tree = ast.parse((ROOT / "handler" / "storage.py").read_text())
    calls = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            on_client = isinstance(owner, ast.Attribute) and owner.attr == "client"
            on_manager = isinstance(owner, ast.Name) and owner.id == "manager"
            if on_client or on_manager:
                calls.add(node.func.attr)
    return calls


def test_role_allows_every_s3_call_the_code_makes(lambda_policy):
    calls = storage_s3_calls()
    assert {"head_object", "put_object"} <= calls, "the call finder no longer finds storage.py's calls"
    assert calls - set(_S3_ACTIONS_BY_CALL) == set(), "map the new call's IAM actions above"
    granted = {action for statement in lambda_policy for action in statement["actions"]}
    needed = set().union(*(_S3_ACTIONS_BY_CALL[call] for call in calls))
    assert needed - granted == set()


def test_function_consumes_only_its_queue(lambda_policy):
    sqs = [s for s in lambda_policy if any(a.startswith("sqs:") for a in s["actions"])]
    assert len(sqs) == 1
    assert set(sqs[0]["actions"]) == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:ChangeMessageVisibility",
    }
    assert sqs[0]["resources"] == ["${aws_sqs_queue.uploads.arn}"]


# --- Storage, queue and registry hardening


def test_ecr_tags_are_immutable_and_scanned(tf):
    repository = tf.resource("aws_ecr_repository", "this")
    assert repository["image_tag_mutability"] == "IMMUTABLE"
    assert repository["image_scanning_configuration"][0]["scan_on_push"] is True
    assert "aws_ecr_repository.this" in tf.resource("aws_ecr_lifecycle_policy", "this")["repository"]


def test_bucket_blocks_all_public_access(tf):
    block = tf.resource("aws_s3_bucket_public_access_block", "input")
    flags = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    assert {flag: block[flag] for flag in flags} == dict.fromkeys(flags, True)
    assert tf.resource("aws_s3_bucket_ownership_controls", "input")["rule"][0]["object_ownership"] == (
        "BucketOwnerEnforced"
    )


def test_bucket_is_versioned_encrypted_and_tls_only(tf):
    versioning = tf.resource("aws_s3_bucket_versioning", "input")
    assert versioning["versioning_configuration"][0]["status"] == "Enabled"
    sse = tf.resource("aws_s3_bucket_server_side_encryption_configuration", "input")["rule"][0]
    assert sse["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "aws:kms"
    policy = list(policy_statements(tf.data["aws_iam_policy_document"]["input_bucket"]))
    deny_plain_http = [
        s
        for s in policy
        if s.get("effect") == "Deny"
        and {"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]} in s["condition"]
    ]
    assert len(deny_plain_http) == 1


def test_queue_dead_letters_after_max_receive_count(tf):
    queue = tf.resource("aws_sqs_queue", "uploads")
    assert "deadLetterTargetArn = aws_sqs_queue.dead_letters.arn" in queue["redrive_policy"]
    assert "maxReceiveCount = var.max_receive_count" in queue["redrive_policy"]
    allow = tf.resource("aws_sqs_queue_redrive_allow_policy", "dead_letters")
    assert 'redrivePermission = "byQueue"' in allow["redrive_allow_policy"]
    assert "aws_sqs_queue.uploads.arn" in allow["redrive_allow_policy"]
    assert all("kms_master_key_id" in tf.resource("aws_sqs_queue", q) for q in ("uploads", "dead_letters"))


def test_only_the_input_bucket_may_send_to_the_queue(tf):
    policy = list(policy_statements(tf.data["aws_iam_policy_document"]["uploads_queue"]))
    allows = [s for s in policy if s.get("effect", "Allow") == "Allow"]
    assert len(allows) == 1
    (allow,) = allows
    assert allow["actions"] == ["sqs:SendMessage"]
    assert allow["principals"] == [{"type": "Service", "identifiers": ["s3.amazonaws.com"]}]
    conditions = {c["variable"]: c["values"] for c in allow["condition"]}
    assert conditions == {
        "aws:SourceArn": ["${aws_s3_bucket.input.arn}"],
        "aws:SourceAccount": ["${local.account_id}"],
    }


def test_alarms_watch_dead_letters_errors_and_throttles(tf):
    alarms = tf.resources["aws_cloudwatch_metric_alarm"]
    watched = {(a["namespace"], a["metric_name"]) for a in alarms.values()}
    assert {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Throttles"),
    } <= watched
    assert alarms["dead_letters"]["dimensions"] == {"QueueName": "${aws_sqs_queue.dead_letters.name}"}
    assert all(a["alarm_actions"] == "${local.alarm_actions}" for a in alarms.values())


# --- The evaluator itself (it guards the visibility-timeout test)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("${6 * var.t + var.w}", 6 * 300 + 5), ("${(var.t + 1) * 2}", 602), (7, 7)],
)
def test_evaluate_arithmetic(expression, expected):
    config = Config({}, {}, {"t": {"default": 300}, "w": {"default": 5}}, {}, {}, {})
    assert evaluate(expression, config) == expected


def test_evaluate_refuses_anything_else():
    config = Config({}, {}, {"t": {"default": 300}}, {}, {}, {})
    with pytest.raises(AssertionError, match="not plain arithmetic"):
        evaluate("${max(var.t, 1)}", config)


# --- Review findings of issue 12 (Terraform itself checks them too: infra/terraform/tests/*.tftest.hcl)


def test_lifecycle_rules_filter_on_an_explicit_empty_prefix(tf):
    # An empty `filter {}` warns on current providers ("will be an error in a future version")
    rules = tf.resource("aws_s3_bucket_lifecycle_configuration", "input")["rule"]
    # (the fan-out's job-object rule filters on its own prefix: tests/infra/test_terraform_fanout.py)
    rules = [rule for rule in rules if rule["id"] != "expire-fanout-job-objects"]
    assert len(rules) == 2
    assert [rule["filter"] for rule in rules] == [[{"prefix": ""}], [{"prefix": ""}]]


def test_derived_bucket_name_is_checked_against_s3s_limit(tf):
    bucket = tf.resource("aws_s3_bucket", "input")
    (precondition,) = bucket["lifecycle"][0]["precondition"]
    assert "length(local.bucket_name) <= 63" in precondition["condition"]
    assert "shorten name" in precondition["error_message"]
    assert "bucket_name" in tf.variables["bucket_name"]["validation"][0]["condition"]


def test_tfvars_example_does_not_reserve_concurrency():
    with (TF_DIR / "terraform.tfvars.example").open() as handle:
        example = hcl2.load(handle, serialization_options=_PARSE_OPTIONS)
    assert "reserved_concurrency" not in example


def test_makefile_marks_the_deployed_image_with_the_prefix_ecr_keeps(tf):
    # GIVEN the prefix the ECR lifecycle policy keeps and the one `make tf-apply` tags with
    makefile = (ROOT / "Makefile").read_text()
    (prefix,) = re.findall(r"^ECR_DEPLOYED_PREFIX := (\S+)$", makefile, re.MULTILINE)
    assert tf.locals["deployed_tag_prefix"] == prefix == "deployed-"
    assert "tagPrefixList = [local.deployed_tag_prefix]" in tf.resource("aws_ecr_lifecycle_policy", "this")["policy"]
    # THEN tf-apply tags the image before Terraform points the function at it
    recipe = makefile.split("\ntf-apply:", 1)[1].split("\n\n", 1)[0]
    assert recipe.index("scripts/ecr_mark_deployed.sh") < recipe.index("apply -var image_tag=$(VERSION)")
    assert "$(ECR_DEPLOYED_PREFIX)" in recipe


def test_ecr_lifecycle_keeps_deployed_images_before_counting_the_rest(tf):
    policy = tf.resource("aws_ecr_lifecycle_policy", "this")["policy"]
    # Rule 2 selects the deployed images; rule 3 (any tag) comes after it, so it can never expire them
    assert (
        policy.index("rulePriority = 2") < policy.index("local.deployed_tag_prefix") < policy.index("rulePriority = 3")
    )
    assert policy.index("rulePriority = 3") < policy.index('tagStatus = "any"')
    assert tf.default("ecr_keep_deployed_images") >= 1000


def test_other_buckets_keys_are_granted_through_s3_only(tf):
    (dynamic,) = [
        d["statement"]
        for d in tf.data["aws_iam_policy_document"]["lambda"]["dynamic"]
        if d["statement"]["content"][0]["sid"] == "UseOtherBucketsKeysThroughS3"
    ]
    assert "var.extra_kms_key_arns" in dynamic["for_each"]
    (content,) = dynamic["content"]
    assert content["actions"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    (condition,) = content["condition"]
    assert condition == {
        "test": "StringEquals",
        "variable": "kms:ViaService",
        "values": ["s3.${local.region}.amazonaws.com"],
    }
    assert tf.default("extra_kms_key_arns") == []
