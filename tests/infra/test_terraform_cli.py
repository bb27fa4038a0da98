"""infra/terraform checked by Terraform itself: fmt, init from the provider mirror, validate, ``terraform test``
(mocked provider, one run per review finding and per output rule of issue 20), and ``rasterfn tf-local`` (a real
apply onto moto, one upload through what Terraform created, destroy).

They need a terraform binary and a filesystem mirror holding hashicorp/aws (``TF_PLUGIN_MIRROR``, default
/opt/tf-plugins): where either is missing they are skipped, and pytest's summary (``-ra``) says which and why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handler.local.terraform import (
    DEFAULT_PLUGIN_MIRROR,
    TF_DIR,
    Terraform,
    find_terraform,
    has_provider_mirror,
    prepare_workdir,
)
from tests.fixtures.paths import REPO_ROOT

TERRAFORM = find_terraform()
MIRROR = Path(os.environ.get("TF_PLUGIN_MIRROR") or DEFAULT_PLUGIN_MIRROR)
# Generous: the suite shares 2 CPU cores, and the provider's own waiters take about 90 s on moto.
TF_LOCAL_TIMEOUT_S = 480

needs_terraform = pytest.mark.skipif(
    TERRAFORM is None, reason="no terraform on PATH: Terraform's own checks of infra/terraform did not run"
)
needs_provider = pytest.mark.skipif(
    TERRAFORM is None or not has_provider_mirror(MIRROR),
    reason=f"no terraform, or no hashicorp/aws mirror at {MIRROR} (TF_PLUGIN_MIRROR): init/validate/test did not run",
)


def terraform_version() -> tuple[int, int]:
    out = subprocess.run([TERRAFORM, "version"], capture_output=True, text=True, check=True).stdout
    major, minor = re.search(r"Terraform v(\d+)\.(\d+)", out).groups()
    return int(major), int(minor)


@pytest.fixture(scope="module")
def initialised(tmp_path_factory) -> Terraform:
    """A scratch copy of infra/terraform (with its tests), initialised from the mirror."""
    workdir = prepare_workdir(tmp_path_factory.mktemp("tf") / "terraform", with_tests=True)
    tf = Terraform.create(workdir, executable=TERRAFORM, mirror=MIRROR)
    output = tf.init()
    assert "hashicorp/aws" in output
    return tf


@needs_terraform
def test_terraform_fmt_check_passes():
    done = subprocess.run(
        [TERRAFORM, "fmt", "-check", "-recursive", "-diff", str(TF_DIR)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_provider
def test_init_from_the_mirror_and_validate(initialised):
    # GIVEN the provider version the mirror holds WHEN validated THEN no error and no deprecation warning
    output = initialised.run("validate", "-no-color")
    assert "The configuration is valid" in output
    assert "Warning" not in output, output
    assert "Deprecated" not in output, output


@needs_provider
def test_terraform_test_checks_each_review_finding(initialised):
    if terraform_version() < (1, 7):
        pytest.skip("terraform test with mock_provider needs Terraform >= 1.7")
    output = initialised.run("test", "-no-color")
    runs = re.findall(r'run "([a-z0-9_]+)"\.\.\. (\w+)', output)
    assert len(runs) >= 25, output
    assert all(result == "pass" for _, result in runs), output
    names = {name for name, _ in runs}
    assert {
        "defaults_apply_on_a_new_account",
        "a_derived_bucket_name_over_63_characters_is_refused",
        "deployed_images_are_never_expired_by_the_count_rule",
        "lifecycle_rules_filter_on_an_empty_prefix",
        "other_keys_are_granted_through_s3_only",
        # issue 20 (tests/outputs.tftest.hcl): the role writes exactly var.outputs' files; no suffix matches them
        "default_outputs_write_only_masks_and_error_markers",
        "every_output_with_a_mask_cog",
        "a_score_cog_alone",
        "stac_alone_is_refused",
        "an_input_suffix_matching_the_cog_is_refused",
        "an_input_suffix_ending_with_an_output_suffix_is_refused",
    } <= names


@pytest.mark.slow
@needs_provider
def test_make_tf_local_applies_processes_and_destroys():
    # GIVEN the embedded moto stack WHEN `rasterfn tf-local` (what `make tf-local` runs) applies infra/terraform,
    # uploads data/test-1.tif and destroys everything
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "handler.cli", "tf-local", "--plugin-mirror", str(MIRROR)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=TF_LOCAL_TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    print(f"rasterfn tf-local took {time.perf_counter() - t0:.0f} s")
    assert done.returncode == 0, output[-6000:]
    # THEN the created resources are listed, the production topology among them
    for address in (
        "aws_s3_bucket.input",
        "aws_s3_bucket_notification.input",
        "aws_sqs_queue.uploads",
        "aws_sqs_queue.dead_letters",
        "aws_lambda_function.this",
        "aws_lambda_event_source_mapping.uploads",
        "aws_s3_bucket_policy.input",
    ):
        assert f"  {address}\n" in output
    # AND the handler ran with the environment read back from the created function
    assert "environment from Terraform: {" in output and "'INPUT_SUFFIXES': '.tif,.tiff'" in output
    assert "timeout 300 s, memory 3008 MB, batch size 1" in output
    # AND `rasterfn demo`'s hand-made stack has the same queues, redrive and suffixes as Terraform's
    assert "`rasterfn demo` builds the same queues, redrive and suffixes" in output
    # AND the upload under the input prefix produced a valid mask beside it, with its metadata
    bucket = "rasterfn-input-123456789012-us-east-1"
    assert f"uploaded s3://{bucket}/scenes/test-1.tif" in output
    assert f"output s3://{bucket}/scenes/test-1.npy: (512, 512) float32" in output
    for name in ("crs", "transform", "model-sha256", "source-etag"):
        assert f"  metadata {name}: " in output
    assert "a valid mask of the input's shape (512, 512)" in output
    # AND destroy left an empty state
    assert "  the state is empty" in output
    assert "\ntf-local OK\n" in output + "\n"
