"""The image as Knative runs it: PORT, read-only root, uid 10001, a sized /tmp, a memory limit; the old README's
curl, a MinIO webhook with the token (moto as the bucket), admission under load, and SIGTERM's drain."""

from __future__ import annotations

import concurrent.futures
import io
import json
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from tests.fixtures.aws import FAKE_CREDENTIALS
from tests.fixtures.paths import REPO_ROOT
from tests.fixtures.servers import free_port
from tests.image.conftest import (
    RunningContainer,
    docker,
    record_figure,
    run_container,
    wait_until_ready,
)

KNATIVE_USER = "10001:10001"  # infra/knative/service.yaml's runAsUser
TOKEN = secrets.token_hex(16)
# The old README's command, verbatim but for the address: the container's port on loopback.
OLD_README_CURL = (
    'curl -X POST "http://127.0.0.1:{port}/inference" -F "file=@./data/test-1.tif" --output \'output.npy\''
)
BURST = 6  # more uploads at once than one slot and one queued request admit
SIGTERM_EXIT_BOUND_S = 30  # well inside Knative's grace period (the revision's timeoutSeconds, 600)


def knative_env(port: int, moto_server: str, bucket: str) -> dict[str, str]:
    # What Knative Serving sets in every revision's container, beside the Service's own env.
    return {
        "K_SERVICE": "rasterfn",
        "K_CONFIGURATION": "rasterfn",
        "K_REVISION": "rasterfn-00001",
        "PORT": str(port),
        "WEBHOOK_TOKEN": TOKEN,
        "ALLOWED_BUCKETS": bucket,
        "MAX_CONCURRENT_INFERENCES": "1",
        "MAX_QUEUED_REQUESTS": "1",
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": moto_server,
    }


@pytest.fixture(scope="module")
def bucket(new_bucket) -> str:
    return new_bucket("image-knative")


@pytest.fixture(scope="module")
def knative(image, moto_server, bucket, tmp_path_factory) -> Iterator[tuple[RunningContainer, str]]:
    port = free_port()
    tmp = tmp_path_factory.mktemp("knative-container")
    with run_container(
        image, tmp, knative_env(port, moto_server, bucket), user=KNATIVE_USER, tmpfs_mb=1024, memory="3g"
    ) as container:
        url = f"http://127.0.0.1:{port}"
        ready = wait_until_ready(f"{url}/health/readiness", container)
        record_figure("Knative ready (docker run to readiness 200)", f"{ready:.2f} s")
        yield container, url


def minio_webhook(bucket: str, key: str) -> dict:
    body = json.loads((REPO_ROOT / "events" / "minio-webhook.json").read_text())
    body["Key"] = f"{bucket}/{key}"
    record = body["Records"][0]["s3"]
    record["bucket"]["name"] = bucket
    record["object"]["key"] = key
    record["object"].pop("size", None)
    record["object"].pop("eTag", None)
    return body


def test_the_old_readme_curl_gives_the_mask(knative, tmp_path):
    container, url = knative
    # GIVEN the old README's working directory: ./data/test-1.tif
    (tmp_path / "data").mkdir()
    shutil.copy(REPO_ROOT / "data" / "test-1.tif", tmp_path / "data" / "test-1.tif")
    command = OLD_README_CURL.format(port=url.rsplit(":", 1)[1])
    # WHEN the user runs its curl, verbatim
    started = time.monotonic()
    subprocess.run(command, shell=True, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    record_figure("Knative first POST /inference (512 x 512)", f"{time.monotonic() - started:.2f} s")
    # THEN output.npy is the mask: the old service's shape, dtype and classes, both present
    mask = np.load(tmp_path / "output.npy", allow_pickle=False)
    assert mask.shape == (512, 512) and mask.dtype == np.float32, container.log_tail()
    assert set(np.unique(mask)) == {0.0, 1.0}


def test_inference_answers_the_cog_when_asked_for_a_tiff(knative, tmp_path):
    container, url = knative
    # GIVEN the old README's curl, asking for a TIFF
    command = OLD_README_CURL.format(port=url.rsplit(":", 1)[1]).replace("'output.npy'", "'out.tif'")
    assert "out.tif" in command
    (tmp_path / "data").mkdir()
    shutil.copy(REPO_ROOT / "data" / "test-1.tif", tmp_path / "data" / "test-1.tif")
    subprocess.run(command + " -H 'Accept: image/tiff'", shell=True, cwd=tmp_path, check=True, timeout=120)
    # THEN the answer is a valid COG of the mask, on the input's grid
    valid, errors, _ = cog_validate(str(tmp_path / "out.tif"))
    assert valid and not errors, (errors, container.log_tail())
    with rasterio.open(tmp_path / "out.tif") as cog, rasterio.open(tmp_path / "data" / "test-1.tif") as src:
        assert (cog.crs, cog.transform, cog.shape) == (src.crs, src.transform, src.shape)


def test_a_minio_webhook_with_the_token_writes_the_mask_beside_the_upload(knative, s3, bucket):
    container, url = knative
    # GIVEN an upload in the bucket the deployment allows
    s3.put_object(Bucket=bucket, Key="scenes/minio/test-1.tif", Body=(REPO_ROOT / "data" / "test-1.tif").read_bytes())
    # WHEN MinIO's webhook reaches the event route with the token
    response = httpx.post(
        f"{url}/",
        json=minio_webhook(bucket, "scenes/minio/test-1.tif"),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=120,
    )
    # THEN it is processed and the .npy is beside the upload
    assert response.status_code == 200, (response.text, container.log_tail())
    body = s3.get_object(Bucket=bucket, Key="scenes/minio/test-1.npy")["Body"].read()
    assert np.load(io.BytesIO(body), allow_pickle=False).shape == (512, 512)


def test_events_without_the_token_are_401(knative, bucket):
    _, url = knative
    response = httpx.post(f"{url}/", json=minio_webhook(bucket, "scenes/x.tif"), timeout=30)
    assert response.status_code == 401
    wrong = httpx.post(
        f"{url}/", json=minio_webhook(bucket, "scenes/x.tif"), headers={"Authorization": "Bearer wrong"}, timeout=30
    )
    assert wrong.status_code == 401


def test_events_for_a_bucket_outside_allowed_buckets_are_403(knative, s3, new_bucket):
    _, url = knative
    other = new_bucket("not-allowed")
    s3.put_object(Bucket=other, Key="a/b.tif", Body=(REPO_ROOT / "data" / "test-1.tif").read_bytes())
    response = httpx.post(
        f"{url}/", json=minio_webhook(other, "a/b.tif"), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert response.status_code == 403, response.text
    assert "Contents" not in s3.list_objects_v2(Bucket=other, Prefix="a/b.npy")


def test_more_uploads_than_slots_get_200_or_503_and_the_container_stays_healthy(knative):
    container, url = knative
    scene = (REPO_ROOT / "data" / "test-1.tif").read_bytes()

    def upload(_: int) -> httpx.Response:
        return httpx.post(f"{url}/inference", files={"file": ("test-1.tif", scene)}, timeout=300)

    # WHEN more uploads arrive at once than one slot and a queue of one admit
    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        responses = list(pool.map(upload, range(BURST)))  # a dropped connection raises here
    statuses = sorted(r.status_code for r in responses)
    # THEN each is answered: the mask, or 503 with the time to retry after; some of each
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    assert all(r.headers.get("retry-after", "").isdigit() for r in responses if r.status_code == 503)
    # AND the container is healthy and serves the next request
    assert httpx.get(f"{url}/health/liveness", timeout=10).status_code == 200
    assert upload(0).status_code == 200, container.log_tail()


def test_without_the_token_the_container_exits_with_the_reason(image, moto_server, bucket, tmp_path):
    env = knative_env(free_port(), moto_server, bucket)
    del env["WEBHOOK_TOKEN"]
    with run_container(image, tmp_path, env, user=KNATIVE_USER, tmpfs_mb=64, memory="1g") as container:
        # THEN it does not serve an open event route: it exits 2 and its log (the pod's) says why
        assert container.exit_code(timeout=60) == 2
        assert "WEBHOOK_TOKEN is not set" in container.log_tail()


def test_sigterm_drains_the_request_in_flight_and_exits_zero(image, moto_server, bucket, tmp_path):
    port = free_port()
    with run_container(
        image, tmp_path, knative_env(port, moto_server, bucket), user=KNATIVE_USER, tmpfs_mb=1024, memory="3g"
    ) as container:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{url}/health/readiness", container)
        scene = (REPO_ROOT / "data" / "test-1.tif").read_bytes()
        result: dict[str, httpx.Response] = {}
        sent = threading.Event()

        def upload() -> None:
            with httpx.Client(timeout=120) as client:
                sent.set()
                result["response"] = client.post(f"{url}/inference", files={"file": ("test-1.tif", scene)})

        thread = threading.Thread(target=upload)
        thread.start()
        assert sent.wait(10)
        time.sleep(0.3)  # the upload is on the wire: Knative stops sending new requests before SIGTERM
        # WHEN Knative stops the pod
        stopped = time.monotonic()
        docker("kill", "--signal", "TERM", container.cid)
        # THEN the request in flight is answered, and the container exits 0 well within the grace period
        code = container.exit_code(timeout=SIGTERM_EXIT_BOUND_S + 30)
        elapsed = time.monotonic() - stopped
        thread.join(timeout=30)
        record_figure("Knative SIGTERM to exit (one request in flight)", f"{elapsed:.2f} s")
        assert code == 0, container.log_tail()
        assert elapsed < SIGTERM_EXIT_BOUND_S
        assert result["response"].status_code == 200, container.log_tail()
