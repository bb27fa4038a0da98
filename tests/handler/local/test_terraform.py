"""handler/local/terraform.py and tf_local.py without a terraform binary: the generated files, the scratch copy,
the handler's environment and the read-back of the created function. The runs with Terraform itself are in
tests/infra/test_terraform_cli.py."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2 import SerializationOptions

from handler import settings
from handler.local.moto_stack import StackSpec
from handler.local.terraform import (
    AWS_PROVIDER,
    MOTO_DEVIATIONS,
    MOTO_SERVICES,
    OVERRIDE_NAME,
    VARIABLES_NAME,
    TerraformError,
    cli_config,
    completed_lines,
    has_provider_mirror,
    moto_override,
    prepare_workdir,
    tail,
)
from handler.local.tf_local import (
    LOCAL_ONLY_ENV,
    LOCAL_VARIABLES,
    TfLocal,
    demo_topology_differences,
    handler_environ,
    read_back_function,
)
from model.errors import ConfigError
from tests.fixtures.paths import REPO_ROOT

ENDPOINT = "http://127.0.0.1:4566"
_PARSE = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)


def parse(text: str) -> dict[str, Any]:
    return hcl2.load(io.StringIO(text), serialization_options=_PARSE)


# --- The CLI configuration


def test_cli_config_installs_only_the_aws_provider_from_the_mirror():
    config = parse(cli_config(Path("/opt/mirror dir")))
    (installation,) = config["provider_installation"]
    (mirror,) = installation["filesystem_mirror"]
    assert mirror == {"path": "/opt/mirror dir", "include": [AWS_PROVIDER]}
    (direct,) = installation["direct"]
    assert direct == {"exclude": [AWS_PROVIDER]}


def test_a_mirror_needs_the_aws_provider_in_the_unpacked_layout(tmp_path):
    assert not has_provider_mirror(tmp_path)
    (tmp_path / AWS_PROVIDER).mkdir(parents=True)
    assert not has_provider_mirror(tmp_path)  # no version inside
    (tmp_path / AWS_PROVIDER / "5.100.0").mkdir()
    assert has_provider_mirror(tmp_path)


# --- The moto override: every deviation from production is here, and nothing else


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return parse(moto_override(ENDPOINT, "eu-west-1"))


def test_override_points_every_service_at_moto_with_fake_credentials(override):
    (provider,) = override["provider"]
    aws = provider["aws"]
    assert aws["region"] == "eu-west-1"
    assert (aws["access_key"], aws["secret_key"]) == ("testing", "testing")
    assert aws["s3_use_path_style"] is True
    (endpoints,) = aws["endpoints"]
    assert endpoints == dict.fromkeys(MOTO_SERVICES, ENDPOINT)


# Data sources the provider computes without an API call, and types whose service is not their first word.
_COMPUTED_LOCALLY = {"aws_iam_policy_document", "aws_partition", "aws_region"}
_SERVICE_OF = {
    "aws_caller_identity": "sts",
    "aws_cloudwatch_log_group": "logs",
    "aws_cloudwatch_metric_alarm": "cloudwatch",
}


def test_override_names_every_service_the_configuration_calls():
    # GIVEN every resource and data source type in infra/terraform
    text = "\n".join(p.read_text() for p in (REPO_ROOT / "infra" / "terraform").glob("*.tf"))
    kinds = set(re.findall(r'(?:resource|data) "(aws_[a-z0-9_]+)"', text)) - _COMPUTED_LOCALLY
    assert "aws_lambda_function" in kinds
    # WHEN mapped to the service it calls THEN each has a moto endpoint (a new one would reach AWS's)
    services = {_SERVICE_OF.get(kind, kind.removeprefix("aws_").split("_")[0]) for kind in kinds}
    assert services - set(MOTO_SERVICES) == set()


def test_override_replaces_only_what_moto_cannot_evaluate(override):
    # The TLS-only Deny statements: replaced by one Allow for the account
    (document,) = [d for d in override["data"] if "aws_iam_policy_document" in d]
    statements = document["aws_iam_policy_document"]["input_bucket"]["statement"]
    assert [s.get("effect", "Allow") for s in statements] == ["Allow"]
    assert "condition" not in statements[0]
    resources = {kind: body for block in override["resource"] for kind, body in block.items()}
    # The redrive-allow policy: not created (moto never reads it back)
    assert resources["aws_sqs_queue_redrive_allow_policy"]["dead_letters"] == {"count": 0}
    # The mapping: created disabled (moto would run it in Docker); the local one plays it
    assert resources["aws_lambda_event_source_mapping"]["uploads"] == {"enabled": False}
    assert set(resources) == {"aws_sqs_queue_redrive_allow_policy", "aws_lambda_event_source_mapping"}


def test_override_explains_each_deviation():
    text = moto_override(ENDPOINT, "us-east-1")
    for reason in ("RedriveAllowPolicy", "aws:SecureTransport", "Docker"):
        assert reason in text


# --- The scratch copy


def test_prepare_workdir_copies_only_the_configuration(tmp_path):
    # GIVEN a source with state, a provider cache, the user's tfvars and tests
    source = tmp_path / "src"
    (source / ".terraform").mkdir(parents=True)
    (source / "tests").mkdir()
    (source / "main.tf").write_text("# main\n")
    (source / "terraform.tfvars").write_text('name = "mine"\n')
    (source / "terraform.tfstate").write_text("{}")
    (source / "tests" / "a.tftest.hcl").write_text("# test\n")
    # WHEN copied with the override and variables
    work = prepare_workdir(tmp_path / "work", source=source, override="# o\n", variables={"image_tag": "x"})
    # THEN only the .tf files, the override and the variables are there
    assert sorted(p.name for p in work.iterdir()) == sorted(["main.tf", OVERRIDE_NAME, VARIABLES_NAME])
    assert OVERRIDE_NAME.endswith("_override.tf")  # Terraform merges only *_override.tf files this way
    assert (work / VARIABLES_NAME).read_text().strip().startswith("{")
    # AND the tests come along only when asked
    again = prepare_workdir(tmp_path / "work2", source=source, with_tests=True)
    assert (again / "tests" / "a.tftest.hcl").is_file()


def test_prepare_workdir_refuses_an_empty_source(tmp_path):
    with pytest.raises(ConfigError, match=r"no \*\.tf files"):
        prepare_workdir(tmp_path / "work", source=tmp_path)


def test_local_variables_keep_production_defaults_but_the_necessary():
    assert set(LOCAL_VARIABLES) == {"image_tag", "input_prefix", "force_destroy"}
    assert isinstance(TerraformError("x"), ConfigError)


def test_completed_lines_and_tail():
    output = "a: Creating...\na: Creation complete after 1s [id=a]\n\nb: Destruction complete after 0s\n"
    assert completed_lines(output) == ["a: Creation complete after 1s [id=a]", "b: Destruction complete after 0s"]
    assert tail("x\n\ny\nz\n", lines=2) == ":\ny\nz"
    assert tail("") == ""


# --- The handler's environment and the read-back


def test_handler_environ_is_terraforms_plus_moto_and_local_only_additions():
    # GIVEN a shell with settings of its own and the environment Terraform gave the function
    current = {"OUTPUT_BUCKET": "elsewhere", "PRECISION": "bf16", "TMPDIR": "/scratch", "AWS_PROFILE": "prod"}
    function_env = {"INPUT_SUFFIXES": ".tif,.tiff", "POWERTOOLS_SERVICE_NAME": "rasterfn"}
    # WHEN the handler's environment is built
    env = handler_environ(function_env, ENDPOINT, "us-east-1", current)
    # THEN Terraform's variables are there, the shell's settings are unset (as in Lambda), TMPDIR is kept
    assert env["INPUT_SUFFIXES"] == ".tif,.tiff"
    assert env["OUTPUT_BUCKET"] is None and env["PRECISION"] is None
    assert "TMPDIR" not in env
    # AND every client points at moto with fake credentials, never at a profile
    assert env["AWS_ENDPOINT_URL"] == ENDPOINT and env["AWS_ACCESS_KEY_ID"] == "testing"
    assert env["AWS_PROFILE"] is None
    # AND the local-only additions are exactly the named ones
    assert {k: env[k] for k in LOCAL_ONLY_ENV} == LOCAL_ONLY_ENV
    assert set(env) - set(function_env) - set(LOCAL_ONLY_ENV) - set(settings.env_var_names()) <= {
        k for k in env if k.startswith("AWS_")
    }


class StubLambda:
    def __init__(self, mappings: list[dict[str, Any]]) -> None:
        self.mappings = mappings
        self.asked: list[dict[str, Any]] = []

    def get_function_configuration(self, FunctionName: str) -> dict[str, Any]:
        return {
            "FunctionName": FunctionName,
            "FunctionArn": f"arn:aws:lambda:us-east-1:123456789012:function:{FunctionName}",
            "Timeout": 300,
            "MemorySize": 3008,
            "Environment": {"Variables": {"INPUT_SUFFIXES": ".tif"}},
        }

    def list_event_source_mappings(self, **kwargs: Any) -> dict[str, Any]:
        self.asked.append(kwargs)
        return {"EventSourceMappings": self.mappings}


QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:rasterfn-uploads"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:rasterfn"


def test_read_back_builds_the_local_mapping_from_the_created_one():
    stub = StubLambda(
        [
            {"FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:other", "BatchSize": 7},
            {
                "FunctionArn": FUNCTION_ARN,
                "BatchSize": 1,
                "MaximumBatchingWindowInSeconds": 0,
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
            },
        ]
    )
    deployed = read_back_function(stub, "rasterfn", "http://q", QUEUE_ARN, "us-east-1")
    assert stub.asked == [{"EventSourceArn": QUEUE_ARN}]
    assert deployed.environment == {"INPUT_SUFFIXES": ".tif"}
    esm = deployed.esm
    assert (esm.queue_url, esm.queue_arn, esm.batch_size, esm.report_batch_item_failures) == (
        "http://q",
        QUEUE_ARN,
        1,
        True,
    )
    assert (esm.function_timeout_s, esm.memory_mb, esm.function_name) == (300.0, 3008, "rasterfn")


def test_read_back_refuses_a_function_without_its_mapping():
    stub = StubLambda([{"FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:other", "BatchSize": 1}])
    with pytest.raises(ConfigError, match="expected one event-source mapping"):
        read_back_function(stub, "rasterfn", "http://q", QUEUE_ARN, "us-east-1")


# --- `rasterfn demo`'s hand-made topology against what Terraform created


def terraform_queues(**changes: str) -> tuple[dict[str, str], dict[str, str]]:
    dlq_arn = "arn:aws:sqs:us-east-1:123456789012:rasterfn-uploads-dlq"
    queue = {
        "QueueArn": QUEUE_ARN,
        "VisibilityTimeout": "1800",
        "MessageRetentionPeriod": "345600",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3}),
    }
    dlq = {"QueueArn": dlq_arn, "MessageRetentionPeriod": "1209600"}
    queue.update(changes)
    return queue, dlq


def test_demo_topology_matches_terraforms_defaults():
    queue, dlq = terraform_queues()
    assert demo_topology_differences(StackSpec(), queue, dlq, [".tiff", ".tif"]) == []


@pytest.mark.parametrize(
    ("changes", "suffixes", "expected"),
    [
        ({"VisibilityTimeout": "900"}, [".tif", ".tiff"], "visibility timeout: demo '1800', Terraform '900'"),
        ({}, [".tif"], "notification suffixes"),
        (
            {"RedrivePolicy": json.dumps({"deadLetterTargetArn": "x", "maxReceiveCount": 5})},
            [".tif", ".tiff"],
            "maxReceiveCount: demo 3, Terraform 5",
        ),
    ],
)
def test_demo_topology_differences_are_named(changes, suffixes, expected):
    queue, dlq = terraform_queues(**changes)
    differences = demo_topology_differences(StackSpec(), queue, dlq, suffixes)
    assert any(line.startswith(expected) for line in differences), differences


@pytest.mark.parametrize(
    ("said", "done"),
    [
        ("moto's endpoint for every service", "endpoints {"),
        ("no TLS-only Deny statements", 'data "aws_iam_policy_document" "input_bucket"'),
        ("aws_sqs_queue_redrive_allow_policy: not created", "count = 0"),
        ("event source mapping: created disabled", "enabled = false"),
    ],
)
def test_each_deviation_the_user_is_told_about_is_in_the_override(said, done):
    assert sum(said in line for line in MOTO_DEVIATIONS) == 1
    assert done in moto_override(ENDPOINT, "us-east-1")


def test_the_user_is_told_about_every_deviation():
    assert len(MOTO_DEVIATIONS) == 4  # one per block of the override (provider, policy, redrive-allow, mapping)


def test_tf_local_refuses_to_start_without_terraform():
    with pytest.raises(ConfigError, match="needs terraform"):
        TfLocal(out=io.StringIO(), terraform="no-such-terraform-binary").run()
