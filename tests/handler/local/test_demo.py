"""``rasterfn demo``: upload -> S3 notification -> SQS -> local ESM -> lambda_handler -> .npy, checked.

The mechanics (progress, waiting, validation, DLQ detection) run in-process with stand-in handlers; the real
pipeline runs as ``rasterfn demo`` subprocesses, exactly as ``make demo`` does.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from handler.events import parse_sqs_body
from handler.local.demo import Demo, plan_uploads
from handler.local.moto_stack import StackSpec
from model.errors import ConfigError, InputError
from tests.fixtures.paths import REPO_ROOT

REPO = REPO_ROOT
RASTERFN = Path(sys.executable).parent / "rasterfn"
# Generous: the suite shares 2 CPU cores. The measured time goes to the test's output, not an assertion.
DEMO_TIMEOUT_S = 240


def unique_spec(**kw: Any) -> StackSpec:
    suffix = uuid.uuid4().hex[:10]
    return StackSpec(bucket=f"demo-{suffix}", queue_name=f"q-{suffix}", dlq_name=f"dlq-{suffix}", **kw)


def mask_writer(array_for: Any, suffixes: tuple[str, ...] = (".npy",), cog_for: Any = None):
    """A stand-in ``lambda_handler`` loader writing, for each input, the objects of ``suffixes`` beside its stem:
    ``.npy`` ``array_for(height, width)``, ``.mask.TIF`` ``cog_for(height, width)``, the others a few bytes."""

    def load(endpoint_url: str):
        import rasterio

        s3 = boto3.client("s3")  # from the environment the demo set: must be the local endpoint
        assert s3.meta.endpoint_url == endpoint_url

        def handler(event: dict, context: Any) -> dict:
            for record in event["Records"]:
                for ref in parse_sqs_body(record["body"]):
                    body = s3.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
                    with rasterio.MemoryFile(body) as mem, mem.open() as src:
                        shape = (src.height, src.width)
                    buffer = io.BytesIO()
                    np.save(buffer, array_for(*shape))
                    objects = {".npy": buffer.getvalue(), ".thumb.png": b"png", ".stac.json": b"{}"}
                    for suffix in suffixes:
                        data = cog_for(*shape) if suffix == ".mask.TIF" else objects[suffix]
                        s3.put_object(Bucket=ref.bucket, Key=ref.key.rsplit(".", 1)[0] + suffix, Body=data)
            return {"batchItemFailures": []}

        return handler

    return load


@pytest.fixture
def small_rasters(make_raster):
    def make(count: int) -> list[Path]:
        return [make_raster(64, 48, name=f"small-{i}.tif", seed=i) for i in range(count)]

    return make


def run_demo(uploads, load_handler, timeout=30.0, **spec) -> tuple[int, str]:
    out = io.StringIO()
    code = Demo(uploads, out=out, spec=unique_spec(**spec), load_handler=load_handler).run(timeout=timeout)
    return code, out.getvalue()


# --- planning --------------------------------------------------------------------------------------------


def test_plan_puts_the_sample_under_scenes_and_files_under_uploads(small_rasters):
    [a] = small_rasters(1)
    plan = plan_uploads([a])
    assert [u.key for u in plan] == ["scenes/test-1.tif", "uploads/small-0.tif"]
    assert plan[1].shape == (64, 48) and plan[1].size == a.stat().st_size


@pytest.mark.parametrize(
    ("name", "message"),
    [("x.png", "only keys ending in"), ("x.TIF", "case-sensitive"), ("missing.tif", "no such")],
)
def test_plan_refuses_files_that_could_never_produce_an_output(tmp_path, name, message):
    path = tmp_path / name
    if name != "missing.tif":
        path.write_bytes(b"x")
    with pytest.raises(InputError, match=message):
        plan_uploads([path])


def test_plan_refuses_two_files_with_one_key(tmp_path, make_raster):
    (tmp_path / "other").mkdir()
    a = make_raster(8, 8, name="same.tif")
    b = make_raster(8, 8, name="other/same.tif")
    with pytest.raises(InputError, match=r"both be uploads/same\.tif"):
        plan_uploads([a, b])


def test_plan_keeps_unreadable_files_without_a_shape(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    assert plan_uploads([bad])[1].shape is None


# --- the mechanics, with stand-in handlers -----------------------------------------------------------------


def test_valid_outputs_give_exit_0_with_progress_and_summary(small_rasters):
    # GIVEN a handler that writes all-zero float32 masks of the right shape
    uploads = plan_uploads(small_rasters(3))
    # WHEN the demo runs
    code, out = run_demo(uploads, mask_writer(lambda h, w: np.zeros((h, w), np.float32)))
    # THEN every object went through every stage, and the summary says all is well
    assert code == 0, out
    for upload in uploads:
        stages = re.findall(rf"{re.escape(upload.key)}\s+(\w+)", out)
        assert stages[:4] == ["uploaded", "notified", "processing", "written"], out
    assert "4/4 outputs valid | DLQ depth: 0" in out
    assert "(s3:TestEvent)" in out  # S3's test message went through the ESM too
    assert out.rstrip().endswith("demo OK")


def test_invalid_masks_fail_the_demo(small_rasters):
    # GIVEN a handler writing probabilities, not a 0/1 mask
    code, out = run_demo(plan_uploads(small_rasters(1)), mask_writer(lambda h, w: np.full((h, w), 0.4, np.float32)))
    # THEN the demo fails and says why
    assert code == 1
    assert "FAIL: values outside {0, 1}" in out and "0/2 outputs valid" in out and "demo FAILED" in out


def test_wrong_shape_fails_the_demo(small_rasters):
    code, out = run_demo(plan_uploads(small_rasters(1)), mask_writer(lambda h, w: np.zeros((w, h), np.float32)))
    assert code == 1 and "FAIL: shape" in out


def test_a_dead_lettered_message_fails_the_demo_without_waiting_for_the_timeout(small_rasters):
    # GIVEN a handler that always raises and a queue that dead-letters after one receive
    def load(endpoint_url):
        def handler(event, context):
            if any(parse_sqs_body(r["body"]) for r in event["Records"]):
                raise RuntimeError("boom")
            return {}

        return handler

    t0 = time.monotonic()
    # WHEN the demo runs with a long timeout
    code, out = run_demo(plan_uploads([]), load, timeout=60, visibility_timeout_s=1, max_receive_count=1)
    # THEN it reports the failure and the DLQ, and stopped early
    assert code == 1
    assert "failed" in out and "RuntimeError: boom" in out
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("given", [None, "mine/in/"])
def test_the_handler_may_touch_the_demo_s_bucket_alone_unless_told_more(small_rasters, monkeypatch, given):
    # Fail closed, as deployments do: ALLOWED_BUCKETS is the demo's bucket when unset, the user's when given.
    monkeypatch.delenv("ALLOWED_BUCKETS", raising=False)
    if given is not None:
        monkeypatch.setenv("ALLOWED_BUCKETS", given)
    seen = []

    def load(endpoint_url: str):
        seen.append(os.environ.get("ALLOWED_BUCKETS"))
        raise ConfigError("stop here")

    spec = unique_spec()
    with pytest.raises(ConfigError, match="stop here"):
        Demo(plan_uploads(small_rasters(1)), out=io.StringIO(), spec=spec, load_handler=load).run(timeout=5)
    assert seen == [spec.bucket if given is None else given]


def test_the_demo_refuses_a_handler_talking_elsewhere(small_rasters, monkeypatch):
    # GIVEN a process where the handler's runtime was built for another endpoint
    from handler.local import demo

    class FakeRuntime:
        class storage:
            class client:
                class meta:
                    endpoint_url = "https://s3.amazonaws.com"

    monkeypatch.setitem(sys.modules, "handler.lambda_function", type(sys)("handler.lambda_function"))
    sys.modules["handler.lambda_function"].lambda_handler = lambda e, c: None
    monkeypatch.setattr(demo, "get_runtime", lambda: FakeRuntime)
    # WHEN the real loader checks it THEN the demo refuses to run
    with pytest.raises(ConfigError, match="refusing to run"):
        demo.load_lambda_handler("http://127.0.0.1:1234")


# --- the real pipeline --------------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    # The real user's environment, minus the test sandbox's unreachable endpoint: the demo sets its own.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(RASTERFN), *args],
        cwd=REPO,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )
    return proc, time.perf_counter() - t0


@pytest.mark.slow
def test_rasterfn_demo_succeeds_as_make_demo_runs_it():
    # WHEN `rasterfn demo` runs exactly as `make demo` does
    proc, seconds = run_cli("demo")
    print(f"\n`rasterfn demo` wall time: {seconds:.1f} s")
    # THEN it exits 0 with a valid 512 x 512 float32 mask of data/test-1.tif and an empty DLQ
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"scenes/test-1\.tif\s+scenes/test-1\.npy\s+512x512\s+float32\s+[\d.]+%.*\bok$", out, re.M), out
    assert "1/1 outputs valid | DLQ depth: 0" in out
    assert re.search(r"model init: [\d.]+ s \(once\)", out)
    for stage in ("uploaded", "notified", "processing", "written"):
        assert re.search(rf"scenes/test-1\.tif\s+{stage}\b", out), stage


@pytest.fixture
def quick_model_card(random_model_card):
    """A seeded 2-level U-Net with 512-pixel tiles: data/test-1.tif in one tile, in about a second."""
    return random_model_card(name="quick", depth=2, start_filts=4, tile_size=512, tile_overlap=64)


@pytest.mark.slow
def test_twenty_uploads_at_once_all_give_valid_outputs(small_rasters, quick_model_card):
    # GIVEN 20 small rasters uploaded at once (beside data/test-1.tif)
    files = small_rasters(20)
    # WHEN the real pipeline runs on them
    proc, seconds = run_cli("demo", *map(str, files), env={"MODEL_CARD": str(quick_model_card)})
    print(f"\n`rasterfn demo` with 20 extra uploads: {seconds:.1f} s")
    # THEN all 21 outputs are valid masks of their raster's shape and nothing was dead-lettered
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^\s+uploads/small-\d+\.tif\s+(\S+)\s+(\S+)\s+(\S+)\s+.*\b(ok|FAIL.*)$", proc.stdout, re.M)
    assert len(rows) == 20, proc.stdout
    assert {(shape, dtype, check) for _output, shape, dtype, check in rows} == {("64x48", "float32", "ok")}
    assert "21/21 outputs valid | DLQ depth: 0" in proc.stdout


@pytest.mark.slow
def test_serve_keeps_the_stack_up_for_the_users_own_uploads(make_raster, quick_model_card):
    # GIVEN `rasterfn demo --serve` running
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    proc = subprocess.Popen(
        [str(RASTERFN), "demo", "--serve"],
        cwd=REPO,
        env={**environ, "MODEL_CARD": str(quick_model_card), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    watchdog = threading.Timer(DEMO_TIMEOUT_S, proc.kill)  # reading stdout must not hang the suite
    watchdog.start()
    try:
        endpoint = None
        for line in proc.stdout:
            lines.append(line)
            if match := re.search(r"aws --endpoint-url (http://127\.0\.0\.1:\d+) s3 cp", line):
                endpoint = match.group(1)
                break
        assert endpoint, "".join(lines)
        assert any("AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing" in x for x in lines)
        # WHEN the user uploads a raster of their own, as the printed `aws s3 cp` line would
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.upload_file(str(make_raster(40, 56, name="mine.tif")), "rasterfn-demo", "uploads/mine.tif")
        # THEN a line announces its output, and the output is there
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"uploads/mine\.tif\s+written\s+uploads/mine\.npy", line):
                break
        body = s3.get_object(Bucket="rasterfn-demo", Key="uploads/mine.npy")["Body"].read()
        assert np.load(io.BytesIO(body)).shape == (40, 56)
        # AND Ctrl-C stops it cleanly
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- --outputs: every object the handler writes, with stand-in handlers and the real pipeline --------------


def mask_tif(height: int, width: int, classes: Any = None) -> bytes:
    """A uint8 class-mask GeoTIFF (nodata 255), as the COG holds it: zeros unless ``classes`` is given."""
    import rasterio
    from rasterio.transform import from_origin

    data = np.zeros((height, width), np.uint8) if classes is None else classes
    profile = dict(driver="GTiff", height=height, width=width, count=1, dtype="uint8", nodata=255)
    profile |= dict(crs="EPSG:32633", transform=from_origin(0, 0, 10, 10))
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(data, 1)
        return mem.read()


def products_writer(kinds: tuple[str, ...], cog_for: Any = mask_tif):
    """:func:`mask_writer` of a zero mask, writing the objects of ``kinds`` (``.mask.TIF``: ``cog_for``)."""
    return mask_writer(lambda height, width: np.zeros((height, width), np.float32), kinds, cog_for)


def run_demo_with(uploads, load_handler, outputs, timeout=30.0) -> tuple[int, str]:
    out = io.StringIO()
    code = Demo(uploads, out=out, spec=unique_spec(), load_handler=load_handler, outputs=outputs).run(timeout=timeout)
    return code, out.getvalue()


ALL_SUFFIXES = (".npy", ".mask.TIF", ".thumb.png", ".stac.json")


def test_outputs_print_every_object_and_check_the_npy(small_rasters, monkeypatch):
    # GIVEN OUTPUTS=npy,cog,stac, and a handler writing all four objects
    monkeypatch.delenv("OUTPUTS", raising=False)
    uploads = plan_uploads(small_rasters(1))
    # WHEN the demo runs
    code, out = run_demo_with(uploads, products_writer(ALL_SUFFIXES), ("npy", "cog", "stac"))
    # THEN a line names each object written, in order, the summary checks the .npy, and the demo passes
    assert code == 0, out
    for upload in uploads:
        stem = upload.key.rsplit(".", 1)[0]
        written = re.findall(rf"{re.escape(upload.key)}\s+written\s+(\S+)", out)
        assert written == [stem + suffix for suffix in ALL_SUFFIXES], out
        assert re.search(rf"^\s+{re.escape(upload.key)}\s+{re.escape(stem)}\.npy\s+\d+x\d+\s+float32.*\bok$", out, re.M)
    assert out.rstrip().endswith("demo OK")
    assert "OUTPUTS" not in os.environ


def test_a_missing_output_fails_the_demo(small_rasters, monkeypatch):
    # GIVEN OUTPUTS=npy,cog,stac, and a handler that writes the .npy alone
    monkeypatch.delenv("OUTPUTS", raising=False)
    code, out = run_demo_with(plan_uploads(small_rasters(1)), products_writer((".npy",)), ("npy", "cog", "stac"))
    # THEN no upload counts as written, and the demo fails
    assert code == 1
    assert "FAIL: nothing written" in out and "demo FAILED" in out


def test_cog_alone_checks_the_cog_mask(small_rasters, monkeypatch):
    # GIVEN OUTPUTS=cog, and a handler writing a class mask with nodata where the input was invalid
    monkeypatch.delenv("OUTPUTS", raising=False)

    def holey(height, width):
        classes = np.zeros((height, width), np.uint8)
        classes[:4, :4] = 255
        classes[10:20, 10:20] = 1
        return mask_tif(height, width, classes)

    uploads = plan_uploads(small_rasters(1))
    code, out = run_demo_with(uploads, products_writer((".mask.TIF",), holey), ("cog",))
    # THEN the COG is what the summary checks: a float32 0/1 mask of the raster's shape
    assert code == 0, out
    assert re.search(r"^\s+uploads/small-0\.tif\s+uploads/small-0\.mask\.TIF\s+64x48\s+float32\s+.*\bok$", out, re.M)


def test_cog_alone_with_a_bad_cog_fails_the_demo(small_rasters, monkeypatch):
    monkeypatch.delenv("OUTPUTS", raising=False)
    uploads = plan_uploads(small_rasters(1))
    code, out = run_demo_with(uploads, products_writer((".mask.TIF",), lambda h, w: b"not a tiff"), ("cog",))
    assert code == 1
    assert "FAIL: not a loadable mask" in out and "demo FAILED" in out


@pytest.mark.slow
def test_rasterfn_demo_with_outputs_writes_and_checks_every_object(quick_model_card):
    # WHEN `rasterfn demo --outputs npy,cog,stac` runs the real pipeline
    proc, seconds = run_cli("demo", "--outputs", "npy,cog,stac", env={"MODEL_CARD": str(quick_model_card)})
    print(f"\n`rasterfn demo --outputs npy,cog,stac` wall time: {seconds:.1f} s")
    # THEN it prints each object written, and the summary's check of the mask passes
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    written = re.findall(r"scenes/test-1\.tif\s+written\s+(\S+)", out)
    assert written == [f"scenes/test-1{suffix}" for suffix in ALL_SUFFIXES], out
    assert re.search(r"scenes/test-1\.tif\s+scenes/test-1\.npy\s+512x512\s+float32\s+[\d.]+%.*\bok$", out, re.M), out
    assert "1/1 outputs valid | DLQ depth: 0" in out and out.rstrip().endswith("demo OK")


@pytest.mark.slow
def test_rasterfn_demo_with_the_cog_alone_checks_the_cog(quick_model_card):
    proc, _ = run_cli("demo", "--outputs", "cog", env={"MODEL_CARD": str(quick_model_card)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"scenes/test-1\.tif\s+scenes/test-1\.mask\.TIF\s+512x512\s+float32\s+[\d.]+%.*\bok$", out, re.M)
    assert "scenes/test-1.npy" not in out
