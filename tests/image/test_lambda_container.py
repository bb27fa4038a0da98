"""The image as AWS Lambda runs it: read-only root, only /tmp writable, a uid the image does not define, a
memory limit, the real runtime interface client against a Runtime API on loopback, S3 on moto's server."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from rio_cogeo.cogeo import cog_validate

from tests.fixtures.aws import FAKE_CREDENTIALS
from tests.fixtures.paths import REPO_ROOT
from tests.fixtures.runtime_api import STOP, RuntimeApiState, runtime_api_handler, serve
from tests.fixtures.stac_schemas import validate_item
from tests.image.conftest import RunningContainer, record_figure, run_container

LAMBDA_UID = "993:990"  # Lambda's sandbox user: no entry in the image's /etc/passwd
RESULT_TIMEOUT_S = 180
TEST_TIF = REPO_ROOT / "data" / "test-1.tif"


@pytest.fixture(scope="module")
def bucket(new_bucket) -> str:
    return new_bucket("image-lambda")


@pytest.fixture(scope="module")
def lambda_container(
    image, moto_server, bucket, tmp_path_factory
) -> Iterator[tuple[RunningContainer, RuntimeApiState]]:
    yield from _lambda_container(image, moto_server, bucket, tmp_path_factory, {})


@pytest.fixture(scope="module")
def lambda_container_every_output(
    image, moto_server, bucket, tmp_path_factory
) -> Iterator[tuple[RunningContainer, RuntimeApiState]]:
    yield from _lambda_container(image, moto_server, bucket, tmp_path_factory, {"OUTPUTS": "npy,cog,stac"})


def _lambda_container(
    image, moto_server, bucket, tmp_path_factory, extra_env: dict[str, str]
) -> Iterator[tuple[RunningContainer, RuntimeApiState]]:
    state = RuntimeApiState()
    tmp = tmp_path_factory.mktemp("lambda-container")
    with serve(runtime_api_handler(state)) as (host, port):
        env = {
            "AWS_LAMBDA_RUNTIME_API": f"{host}:{port}",
            "AWS_LAMBDA_FUNCTION_NAME": "rasterfn",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/rasterfn",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/04/[$LATEST]0123456789abcdef",
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": moto_server,
            "INPUT_SUFFIXES": ".tif,.tiff",
            "ALLOWED_BUCKETS": bucket,
            "POWERTOOLS_SERVICE_NAME": "rasterfn",
            "POWERTOOLS_METRICS_NAMESPACE": "rasterfn",
            **extra_env,
        }
        with run_container(image, tmp, env, user=LAMBDA_UID, tmpfs_mb=512, memory="3g") as container:
            try:
                yield container, state
            finally:
                state.events.put((STOP, b""))


def put(s3, bucket: str, key: str, body: bytes) -> dict[str, Any]:
    reply = s3.put_object(Bucket=bucket, Key=key, Body=body)
    return {"key": key, "size": len(body), "eTag": reply["ETag"].strip('"')}


def invoke(container: RunningContainer, state: RuntimeApiState, event: dict[str, Any]) -> tuple[str, Any]:
    request_id = str(uuid.uuid4())
    state.events.put((request_id, json.dumps(event).encode()))
    try:
        state.wait_for(
            lambda: request_id in state.results or not container.alive(), RESULT_TIMEOUT_S, f"result {request_id}"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- container log ---\n{container.log_tail()}") from None
    assert request_id in state.results, f"the container exited:\n{container.log_tail()}"
    return state.results[request_id]


def test_init_loads_the_model_and_polls_for_events(lambda_container):
    container, state = lambda_container
    # GIVEN a cold container WHEN Lambda starts it THEN INIT ends in the first poll for an event, with no init error
    state.wait_for(lambda: state.polls >= 1 or state.init_errors or not container.alive(), RESULT_TIMEOUT_S, "INIT")
    assert not state.init_errors, (state.init_errors, container.log_tail())
    assert state.polls >= 1, container.log_tail()
    record_figure("Lambda INIT (docker run to first poll)", f"{time.monotonic() - container.started:.2f} s")


def test_a_batch_with_a_good_and_a_corrupt_tiff(lambda_container, s3, bucket, make_upload_batch):
    container, state = lambda_container
    state.wait_for(lambda: state.polls >= 1 or state.init_errors, RESULT_TIMEOUT_S, "the first poll")
    assert not state.init_errors, state.init_errors
    # GIVEN a good upload and a corrupt one (a TIFF signature, then the good file's bytes scrambled)
    good_body = TEST_TIF.read_bytes()
    corrupt_body = good_body[:4096] + bytes(reversed(good_body[4096:]))
    good = put(s3, bucket, "scenes/good.tif", good_body)
    corrupt = put(s3, bucket, "scenes/corrupt.tif", corrupt_body)
    # WHEN Lambda hands the container one batch with both
    started = time.monotonic()
    kind, body = invoke(container, state, make_upload_batch(bucket, good, corrupt))
    record_figure("Lambda first batch (2 records, one 512 x 512 scene)", f"{time.monotonic() - started:.2f} s")
    # THEN no record goes back to the queue: the corrupt upload is the user's to fix, not a retry
    assert (kind, body) == ("response", {"batchItemFailures": []}), container.log_tail()
    # AND the mask is beside the good upload, with the metadata that georeferences it
    obj = s3.get_object(Bucket=bucket, Key="scenes/good.npy")
    mask = np.load(io.BytesIO(obj["Body"].read()), allow_pickle=False)
    assert mask.shape == (512, 512) and mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
    assert {"crs", "transform", "model-sha256"} <= set(obj["Metadata"]), obj["Metadata"]
    # AND the corrupt one has its error document instead, saying what is wrong
    error = json.loads(s3.get_object(Bucket=bucket, Key="scenes/corrupt.error.json")["Body"].read())
    assert "corrupt.tif" in json.dumps(error)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="scenes/")["Contents"]}
    assert "scenes/corrupt.npy" not in keys
    # AND the container is warm again, polling for the next event
    state.wait_for(lambda: state.polls >= 2, 30, "the next poll")
    assert container.alive()


def test_every_output_is_written_from_the_image(lambda_container_every_output, s3, bucket, make_upload_batch, tmp_path):
    container, state = lambda_container_every_output
    state.wait_for(lambda: state.polls >= 1 or state.init_errors, RESULT_TIMEOUT_S, "the first poll")
    assert not state.init_errors, state.init_errors
    # GIVEN a deployment with OUTPUTS=npy,cog,stac and an upload
    good = put(s3, bucket, "gis/good.tif", TEST_TIF.read_bytes())
    # WHEN Lambda hands the container its event
    started = time.monotonic()
    kind, body = invoke(container, state, make_upload_batch(bucket, good))
    record_figure("Lambda, OUTPUTS=npy,cog,stac (one 512 x 512 scene)", f"{time.monotonic() - started:.2f} s")
    assert (kind, body) == ("response", {"batchItemFailures": []}), container.log_tail()
    # THEN the .npy, a valid COG, the quicklook and a valid STAC Item naming them lie beside it
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="gis/")["Contents"]}
    assert keys == {"gis/good.tif", "gis/good.npy", "gis/good.mask.TIF", "gis/good.thumb.png", "gis/good.stac.json"}
    cog = tmp_path / "good.mask.TIF"
    cog.write_bytes(s3.get_object(Bucket=bucket, Key="gis/good.mask.TIF")["Body"].read())
    valid, errors, _ = cog_validate(str(cog))
    assert valid and not errors, errors
    item = json.loads(s3.get_object(Bucket=bucket, Key="gis/good.stac.json")["Body"].read())
    validate_item(item)
    assert item["assets"]["mask"]["href"] == "./good.mask.TIF"
