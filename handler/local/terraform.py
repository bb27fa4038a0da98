"""Running the ``terraform`` CLI on a throwaway copy of ``infra/terraform`` (local tools and tests only).

Nothing here writes into ``infra/terraform``: :func:`prepare_workdir` copies its ``*.tf`` files (and, on request,
its ``tests/``) into a scratch directory, where ``terraform init`` keeps its state, lock file and provider
links. Offline machines point Terraform at a filesystem mirror of the registry with :func:`cli_config`;
machines with network use their own CLI configuration and the registry, as a user's ``make tf-init`` does.

:func:`moto_override` is the one place where the configuration is adapted to moto, each change with its
reason; the production files are copied as they are.

Example:
    >>> print(cli_config(Path("/opt/tf-plugins")).splitlines()[2])
        path    = "/opt/tf-plugins"
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.local.paths import REPO_ROOT
from model.errors import ConfigError

TF_DIR = REPO_ROOT / "infra" / "terraform"
AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"
# Where `make tf-local`, `make static` and the tests look for a mirror when none is named (used only if present).
DEFAULT_PLUGIN_MIRROR = Path("/opt/tf-plugins")
CLI_CONFIG_NAME = "terraform.tfrc"
OVERRIDE_NAME = "tf_local_override.tf"
VARIABLES_NAME = "tf_local.auto.tfvars.json"
# Every service infra/terraform calls, pointed at moto by the override.
MOTO_SERVICES = ("cloudwatch", "ecr", "iam", "kms", "lambda", "logs", "s3", "sns", "sqs", "sts")
COMMAND_TIMEOUT_S = 600.0
ERROR_TAIL_LINES = 40


class TerraformError(ConfigError):
    """A terraform command failed (the message ends with the tail of its output)."""


def find_terraform(explicit: str | None = None) -> str | None:
    """The terraform executable: ``explicit`` if it is one, else the one on PATH; None when there is none."""
    return shutil.which(explicit or "terraform")


def has_provider_mirror(mirror: Path) -> bool:
    """True when ``mirror`` holds at least one version of hashicorp/aws in the unpacked mirror layout."""
    provider = mirror / AWS_PROVIDER
    return provider.is_dir() and any(provider.iterdir())


def cli_config(mirror: Path) -> str:
    """A Terraform CLI configuration that installs hashicorp/aws from ``mirror`` and nothing else (pure)."""
    return (
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f"    path    = {json.dumps(str(mirror))}\n"
        f"    include = [{json.dumps(AWS_PROVIDER)}]\n"
        "  }\n"
        "  direct {\n"
        f"    exclude = [{json.dumps(AWS_PROVIDER)}]\n"
        "  }\n"
        "}\n"
    )


# What moto_override changes, one line each (printed by `rasterfn tf-local`; the reasons are in the file).
MOTO_DEVIATIONS = (
    "provider: moto's endpoint for every service, fake credentials, path-style S3",
    "input bucket policy: no TLS-only Deny statements (moto evaluates them without request context)",
    "aws_sqs_queue_redrive_allow_policy: not created (moto never returns it; the provider would wait forever)",
    "event source mapping: created disabled (moto would run the image in Docker); rasterfn plays it locally",
)


def moto_override(endpoint_url: str, region: str) -> str:
    """An override file that applies infra/terraform to moto's server at ``endpoint_url`` (pure).

    Terraform merges ``*_override.tf`` files over the configuration: the provider block gains endpoints and
    fake credentials, and two things moto cannot evaluate are replaced, each with its reason below.
    """
    endpoints = "\n".join(f"    {service:<10} = {json.dumps(endpoint_url)}" for service in MOTO_SERVICES)
    return f"""# Written by `rasterfn tf-local` into a throwaway copy of infra/terraform: never part of a deployment.

provider "aws" {{
  region = {json.dumps(region)}
  # moto's fake credentials: AWS rejects them, so nothing here can act on a real account.
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  # moto serves buckets by path (host/bucket), not as virtual hosts (bucket.host).
  s3_use_path_style = true

  endpoints {{
{endpoints}
  }}
}}

# moto 5 evaluates a bucket policy's Deny statements without the request's context, so the production
# statements that refuse plain HTTP (aws:SecureTransport) and TLS < 1.2 (s3:TlsVersion) refuse every request,
# over moto's TLS too. Locally the policy holds one statement that only restates the account's own access.
data "aws_iam_policy_document" "input_bucket" {{
  statement {{
    sid       = "LocalOnlyAccountUsesTheBucket"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${{aws_s3_bucket.input.arn}}/*"]
    principals {{
      type        = "AWS"
      identifiers = ["arn:${{local.partition}}:iam::${{local.account_id}}:root"]
    }}
  }}
}}

# moto 5 neither stores nor returns a queue's RedriveAllowPolicy, and the provider waits for it to read back
# (forever). Locally it is not created; the redrive itself (the uploads queue's redrive_policy) is.
resource "aws_sqs_queue_redrive_allow_policy" "dead_letters" {{
  count = 0
}}

# moto 5 runs an enabled SQS mapping itself, by starting the function's image in Docker, the moment a message
# arrives. Locally the mapping is created disabled and `rasterfn tf-local` plays it (handler/local/local_esm.py),
# with the batch size, queue, timeout and environment read back from what Terraform created.
resource "aws_lambda_event_source_mapping" "uploads" {{
  enabled = false
}}
"""


def prepare_workdir(
    workdir: Path,
    *,
    source: Path = TF_DIR,
    override: str | None = None,
    variables: Mapping[str, Any] | None = None,
    with_tests: bool = False,
) -> Path:
    """Copy ``source``'s ``*.tf`` files into ``workdir`` (created), plus the override and variables given.

    ``tests/`` (``*.tftest.hcl``) comes along with ``with_tests``; state, ``.terraform`` and ``*.tfvars`` never do.
    """
    files = sorted(source.glob("*.tf"))
    if not files:
        raise ConfigError(f"no *.tf files in {source}")
    workdir.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, workdir / path.name)
    if with_tests and (source / "tests").is_dir():
        shutil.copytree(source / "tests", workdir / "tests", dirs_exist_ok=True)
    if override is not None:
        (workdir / OVERRIDE_NAME).write_text(override)
    if variables:
        (workdir / VARIABLES_NAME).write_text(json.dumps(dict(variables), indent=2) + "\n")
    return workdir


@dataclass(frozen=True)
class Terraform:
    """``terraform -chdir=workdir ...`` with a fixed environment; each call returns its output or raises."""

    executable: str
    workdir: Path
    environ: Mapping[str, str]
    timeout_s: float = COMMAND_TIMEOUT_S

    @classmethod
    def create(
        cls,
        workdir: Path,
        *,
        executable: str | None = None,
        mirror: Path | None = None,
        extra_env: Mapping[str, str | None] | None = None,
    ) -> Terraform:
        """A runner for ``workdir``; with ``mirror``, a CLI configuration installing the provider from it."""
        found = find_terraform(executable)
        if found is None:
            raise ConfigError(f"no terraform executable ({executable or 'terraform'} is not on PATH)")
        env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}
        if mirror is not None:
            if not has_provider_mirror(mirror):
                raise ConfigError(f"{mirror} holds no {AWS_PROVIDER} (a filesystem mirror of the registry)")
            config = workdir / CLI_CONFIG_NAME
            config.write_text(cli_config(mirror))
            env["TF_CLI_CONFIG_FILE"] = str(config)
        for name, value in (extra_env or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return cls(found, workdir, env)

    def run(self, *args: str, timeout_s: float | None = None) -> str:
        """Run one command; its combined output, or TerraformError with the output's tail."""
        command = [self.executable, f"-chdir={self.workdir}", *args]
        try:
            done = subprocess.run(
                command,
                env=dict(self.environ),
                capture_output=True,
                text=True,
                timeout=timeout_s or self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
            raise TerraformError(f"terraform {args[0]} did not finish in {exc.timeout:.0f} s{tail(output)}") from exc
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise TerraformError(f"terraform {args[0]} failed (exit {done.returncode}){tail(output)}")
        return output

    def init(self) -> str:
        return self.run("init", "-no-color", "-input=false")

    def apply(self) -> str:
        return self.run("apply", "-no-color", "-input=false", "-auto-approve")

    def destroy(self) -> str:
        return self.run("destroy", "-no-color", "-input=false", "-auto-approve")

    def outputs(self) -> dict[str, Any]:
        """``terraform output -json`` as ``{name: value}``."""
        return {name: item["value"] for name, item in json.loads(self.run("output", "-json")).items()}

    def state_list(self) -> list[str]:
        """Addresses in the state (``[]`` once everything is destroyed)."""
        return [line for line in self.run("state", "list").splitlines() if line.strip()]


def completed_lines(output: str, verbs: Sequence[str] = ("Creation complete", "Destruction complete")) -> list[str]:
    """The per-resource "... complete after 2s" lines of an apply or destroy (pure)."""
    return [line.strip() for line in output.splitlines() if any(verb in line for verb in verbs)]


def tail(output: str, lines: int = ERROR_TAIL_LINES) -> str:
    kept = [line for line in output.strip().splitlines() if line.strip()][-lines:]
    return (":\n" + "\n".join(kept)) if kept else ""
