"""scripts/ecr_mark_deployed.sh (run by `make tf-apply`) against moto's ECR with the real AWS CLI: the deployed
image gets the deployed-<tag> tag the lifecycle policy keeps, a re-apply is fine, a missing tag stops the apply.
Skipped, with the reason, where the AWS CLI is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import boto3
import pytest

from tests.fixtures.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "ecr_mark_deployed.sh"
AWS_CLI = shutil.which("aws")
MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 7023,
        "digest": "sha256:" + "a" * 64,
    },
    "layers": [],
}

pytestmark = pytest.mark.skipif(AWS_CLI is None, reason="no AWS CLI (aws) on PATH: ecr_mark_deployed.sh not run")


@pytest.fixture
def repository(moto_endpoint) -> tuple[object, str, str]:
    ecr = boto3.client("ecr", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"rasterfn-{uuid.uuid4().hex[:8]}"
    url = ecr.create_repository(repositoryName=name, imageTagMutability="IMMUTABLE")["repository"]["repositoryUri"]
    ecr.put_image(repositoryName=name, imageManifest=json.dumps(MANIFEST), imageTag="abc123")
    return ecr, name, url


def mark(url: str, tag: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), url, "us-east-1", tag, "deployed-"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tags(ecr, name: str) -> set[str]:
    return {tag for image in ecr.describe_images(repositoryName=name)["imageDetails"] for tag in image["imageTags"]}


def test_deployed_image_gets_the_kept_tag_once(repository):
    ecr, name, url = repository
    # WHEN tf-apply marks the tag it deploys THEN the same image also carries deployed-<tag>
    first = mark(url, "abc123")
    assert first.returncode == 0, first.stderr
    assert tags(ecr, name) == {"abc123", "deployed-abc123"}
    # AND marking it again (a re-apply, a rollback to it) is not an error
    again = mark(url, "abc123")
    assert again.returncode == 0, again.stderr
    assert tags(ecr, name) == {"abc123", "deployed-abc123"}


def test_a_missing_tag_stops_the_apply(repository):
    ecr, name, url = repository
    done = mark(url, "gone999")
    assert done.returncode == 1
    assert "no image" in done.stderr and "gone999" in done.stderr
    assert tags(ecr, name) == {"abc123"}
