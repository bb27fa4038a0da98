"""Sharded jobs on moto's real S3 server: the assembled .npy is predict_file's, whatever the queue does twice."""

from __future__ import annotations

import itertools
import json
import threading

import numpy as np
import pytest

import handler.fanout.coordinator as coordinator
import model.predictor.predict as predict_module
from handler.errors import TransientError
from handler.fanout import ShardMessage, parse_shard_message, run_shard
from handler.fanout.jobs import JobStore
from handler.objects import JOB_PREFIX, ObjectRef
from handler.outcome import OutcomeStatus
from handler.process import process_object
from handler.storage import Storage
from model.errors import RemoteReadError
from model.options import PredictOptions
from model.predictor.predict import predict_file
from tests.fixtures.hostile_tiffs import giant_strip_file, huge_tile_file, sparse_file


def expected_npy(runtime, make_raster, tmp_path, body: bytes, output: str = "mask") -> bytes:
    src = tmp_path / "expected-src.tif"
    src.write_bytes(body)
    predict_file(runtime.model, src, tmp_path / "expected.npy", PredictOptions(output=output))
    return (tmp_path / "expected.npy").read_bytes()


def upload(s3_client, bucket, make_raster, height, width, **kw) -> bytes:
    body = make_raster(height, width, name=f"src-{height}x{width}.tif", **kw).read_bytes()
    s3_client.put_object(Bucket=bucket, Key="scenes/big.tif", Body=body)
    return body


def get(s3_client, bucket, key) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def in_progress_uploads(s3_client, bucket) -> list:
    return s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


REF = ObjectRef("", "scenes/big.tif", event_name="ObjectCreated:Put")


def ref(bucket: str) -> ObjectRef:
    return ObjectRef(bucket, REF.key, event_name=REF.event_name)


@pytest.mark.parametrize(
    ("height", "width", "output", "nodata"),
    [(300, 70, "mask", None), (530, 90, "score", None), (250, 64, "mask", 0)],
)
def test_sharded_job_assembles_predict_files_npy(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path, height, width, output, nodata
):
    # GIVEN an upload the estimate says is too much for one invocation
    runtime = fan_runtime(output_mode=output)
    bucket = make_bucket()
    body = upload(s3_client, bucket, make_raster, height, width, nodata=nodata)
    # WHEN it is processed, then every shard message is
    outcome = process_object(ref(bucket), runtime)
    assert outcome.status is OutcomeStatus.FANNED_OUT
    assert len(queue.messages) == (2 if height == 250 else 3)  # the fitted grid has 2 tile rows in 250 rows
    queue.drain(runtime)
    # THEN the .npy is the single-invocation result byte for byte, with the same metadata
    assert get(s3_client, bucket, "scenes/big.npy") == expected_npy(runtime, make_raster, tmp_path, body, output)
    meta = s3_client.head_object(Bucket=bucket, Key="scenes/big.npy")["Metadata"]
    assert meta["shape"] == f"{height},{width}" and meta["output"] == output
    assert [entry["status"] for entry in queue.log].count("completed") == 1
    assert in_progress_uploads(s3_client, bucket) == []
    # and the upload's event again is a duplicate
    assert process_object(ref(bucket), runtime).status is OutcomeStatus.DUPLICATE


def test_narrow_raster_under_s3s_real_part_minimum_is_one_part(
    queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path
):
    # 400 x 64 uint8 is 25 KB, under one 5 MiB part: one shard, and moto's real minimum is kept
    runtime = fan_runtime()
    bucket = make_bucket()
    body = upload(s3_client, bucket, make_raster, 400, 64)
    assert process_object(ref(bucket), runtime).status is OutcomeStatus.FANNED_OUT
    assert len(queue.messages) == 1
    queue.drain(runtime)
    assert get(s3_client, bucket, "scenes/big.npy") == expected_npy(runtime, make_raster, tmp_path, body)


def test_every_message_delivered_twice_gives_one_output(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path
):
    runtime = fan_runtime()
    bucket = make_bucket()
    body = upload(s3_client, bucket, make_raster, 300, 70)
    process_object(ref(bucket), runtime)
    queue.drain(runtime, twice=True)
    assert get(s3_client, bucket, "scenes/big.npy") == expected_npy(runtime, make_raster, tmp_path, body)
    statuses = [entry["status"] for entry in queue.log]
    assert statuses.count("completed") == 1
    assert "part already uploaded" in statuses
    assert in_progress_uploads(s3_client, bucket) == []
    # the stats message delivered again after the reduction sent no second round of predict messages
    assert statuses.count("stats reduced") == 1 and statuses.count("stats reduced earlier") == 1
    assert [entry["phase"] for entry in queue.log].count("predict") == 2 * 3


def test_shard_failing_once_then_succeeding(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path, monkeypatch
):
    runtime = fan_runtime()
    bucket = make_bucket()
    body = upload(s3_client, bucket, make_raster, 300, 70)
    process_object(ref(bucket), runtime)
    real = coordinator.predict_band
    failures = []

    def flaky(model, src, band, *args, **kwargs):
        if band.index == 1 and not failures:
            failures.append(band.index)
            raise TransientError("S3 throttled mid-shard")
        return real(model, src, band, *args, **kwargs)

    monkeypatch.setattr(coordinator, "predict_band", flaky)
    redelivered = 0
    while queue.messages:
        body_ = queue.messages.popleft()
        try:
            run_shard(parse_shard_message(body_), runtime, queue.send)
        except TransientError:
            queue.messages.append(body_)  # the queue delivers it again after the visibility timeout
            redelivered += 1
    assert failures == [1] and redelivered == 1
    assert get(s3_client, bucket, "scenes/big.npy") == expected_npy(runtime, make_raster, tmp_path, body)


def test_redelivered_coordinator_rejoins_the_job(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path, monkeypatch
):
    runtime = fan_runtime()
    bucket = make_bucket()
    body = upload(s3_client, bucket, make_raster, 300, 70)
    first = process_object(ref(bucket), runtime)
    # A re-delivered coordinator that raced the first (it did not see job.json yet) loses the conditional put
    real_read, blind = JobStore.read_job, []

    def read_job_once_blind(self):
        if not blind:
            blind.append("job.json")
            return None
        return real_read(self)

    monkeypatch.setattr(JobStore, "read_job", read_job_once_blind)
    second = process_object(ref(bucket), runtime)
    monkeypatch.setattr(JobStore, "read_job", real_read)
    assert blind == ["job.json"]
    third = process_object(ref(bucket), runtime)
    assert first.detail == second.detail == third.detail  # one job id
    assert len(in_progress_uploads(s3_client, bucket)) == 1  # the loser's upload was aborted
    assert len(queue.messages) == 3  # the stats messages once: the re-joining coordinators found them sent
    queue.drain(runtime)
    assert get(s3_client, bucket, "scenes/big.npy") == expected_npy(runtime, make_raster, tmp_path, body)
    assert in_progress_uploads(s3_client, bucket) == []


def test_two_concurrent_completers_give_one_output(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path
):
    runtime = fan_runtime()
    bucket = make_bucket()
    body = upload(s3_client, bucket, make_raster, 300, 70)
    process_object(ref(bucket), runtime)
    while queue.messages and json.loads(queue.messages[0])["rasterfn-shard"]["phase"] == "stats":
        queue.log.append(run_shard(parse_shard_message(queue.messages.popleft()), runtime, queue.send).as_dict())
    predict = [parse_shard_message(m) for m in queue.messages]
    queue.messages.clear()
    for message in predict[:-1]:
        run_shard(message, runtime, queue.send)
    # The last part, delivered twice at once: both copies may find every part present and complete
    barrier, results = threading.Barrier(2), []

    def deliver() -> None:
        barrier.wait()
        results.append(run_shard(predict[-1], runtime, queue.send).status)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("completed") >= 1
    assert get(s3_client, bucket, "scenes/big.npy") == expected_npy(runtime, make_raster, tmp_path, body)
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="scenes/")["Contents"]] == [
        "scenes/big.npy",
        "scenes/big.tif",
    ]


def test_bad_shard_input_ends_in_error_json_and_no_npy(
    small_parts, queue, fan_runtime, make_bucket, s3_client, corrupt_raster_body
):
    # A readable header over corrupt compressed blocks: the coordinator plans, a shard cannot read its rows
    runtime = fan_runtime()
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="scenes/big.tif", Body=corrupt_raster_body)
    assert process_object(ref(bucket), runtime).status is OutcomeStatus.FANNED_OUT
    queue.drain(runtime)
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "scenes/big.error.json" in keys
    assert "scenes/big.npy" not in keys
    assert in_progress_uploads(s3_client, bucket) == []
    assert any(entry["status"] == "failed" for entry in queue.log)
    assert any(k.startswith(JOB_PREFIX) and k.endswith("failed.json") for k in keys)
    # the unreadable rows were read twice before the file was judged (a failed ranged GET reads the same)
    retried = [entry for entry in queue.log if entry["status"] == "retried"]
    assert retried and all("retried once before the file is judged" in entry["error"] for entry in retried)
    error = json.loads(get(s3_client, bucket, "scenes/big.error.json"))
    assert error["key"] == "scenes/big.tif" and error["error"] == "RasterReadError"
    # the upload's event again is a duplicate of the rejection
    assert process_object(ref(bucket), runtime).status is OutcomeStatus.DUPLICATE


def test_small_raster_is_not_fanned_out(queue, make_runtime, make_bucket, s3_client, make_raster):
    runtime = make_runtime()  # default threshold: 64 x 64 is one tile, far below it
    bucket = make_bucket()
    upload(s3_client, bucket, make_raster, 64, 64)
    assert process_object(ref(bucket), runtime).status is OutcomeStatus.WRITTEN
    assert not queue.messages
    assert np.load(__import__("io").BytesIO(get(s3_client, bucket, "scenes/big.npy"))).shape == (64, 64)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("FANOUT_MAX_SHARDS", "0", "FANOUT_MAX_SHARDS must be >= 1"),
        ("MAX_SCENE_PIXELS", "0", "MAX_SCENE_PIXELS must be >= 1"),
        ("FANOUT_SECONDS_PER_TILE", "0", "FANOUT_SECONDS_PER_TILE must be > 0"),
        ("FANOUT_SECONDS_PER_TILE", "fast", "FANOUT_SECONDS_PER_TILE must be a number"),
        ("FANOUT_THRESHOLD_SECONDS", "-1", "FANOUT_THRESHOLD_SECONDS >= 0"),
    ],
)
def test_fanout_settings_refuse_bad_values(variable, value, message):
    from handler.settings import Settings
    from model.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Settings.from_env({variable: value})


def test_job_objects_are_never_inputs():
    from handler.filters import skip_reason

    reason = skip_reason(ObjectRef("b", f"{JOB_PREFIX}abc/stats/0.tif", event_name="ObjectCreated:Put"))
    assert reason is not None and "fan-out job" in reason
    assert skip_reason(ObjectRef("b", f"masks/{JOB_PREFIX}x/job.tif", event_name="ObjectCreated:Put")) is not None


def test_status_follows_the_job_to_done(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, moto_endpoint, capsys
):
    from handler.cli import main
    from handler.fanout.status import find_job_status

    runtime = fan_runtime()
    bucket = make_bucket()
    upload(s3_client, bucket, make_raster, 300, 70)
    assert main(["status", f"s3://{bucket}/scenes/big.tif"]) == 1  # no job yet
    process_object(ref(bucket), runtime)
    queued = find_job_status(Storage(s3_client), bucket, bucket, "scenes/big.tif")
    assert (queued.shards, queued.stats_done, queued.parts_done, queued.done) == (3, 0, 0, False)
    queue.drain(runtime)
    capsys.readouterr()
    assert main(["status", f"s3://{bucket}/scenes/big.tif"]) == 0
    out = capsys.readouterr().out
    assert "3 shards; stats 3/3, parts 3/3; done: " in out and "scenes/big.npy" in out


def test_status_reports_a_failed_job(
    small_parts, queue, fan_runtime, make_bucket, s3_client, corrupt_raster_body, capsys
):
    from handler.cli import main

    runtime = fan_runtime()
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="scenes/big.tif", Body=corrupt_raster_body)
    process_object(ref(bucket), runtime)
    queue.drain(runtime)
    assert main(["status", f"s3://{bucket}/scenes/big.tif"]) == 2
    assert "FAILED: RasterReadError" in capsys.readouterr().out


def test_a_late_duplicate_after_completion_changes_nothing(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path, monkeypatch
):
    # GIVEN a finished job, and a copy of a predict shard that passed the early checks before it finished
    runtime = fan_runtime()
    bucket = make_bucket()
    body = upload(s3_client, bucket, make_raster, 300, 70)
    process_object(ref(bucket), runtime)
    queue.drain(runtime)
    store = JobStore(runtime.storage, bucket, queue.log[-1]["job"])
    real_is_done, real_has_part = JobStore.is_done, JobStore.has_part
    blinded = []

    def done_after_the_first_look(self):
        # The copy checked done.json and its part record before the job completed; its last check is real.
        if not blinded:
            blinded.append("done.json")
            return False
        return real_is_done(self)

    monkeypatch.setattr(JobStore, "is_done", done_after_the_first_look)
    monkeypatch.setattr(JobStore, "has_part", lambda self, index: index != 1 and real_has_part(self, index))
    # WHEN it is about to upload its part to the completed upload
    status = run_shard(ShardMessage(bucket, store.job, "predict", 1), runtime, queue.send)
    monkeypatch.setattr(JobStore, "is_done", real_is_done)
    monkeypatch.setattr(JobStore, "has_part", real_has_part)
    # THEN nothing is marked failed and the output stands
    assert status.status == "job already finished"
    assert not store.is_failed()
    assert get(s3_client, bucket, "scenes/big.npy") == expected_npy(runtime, make_raster, tmp_path, body)


def test_lambda_entry_point_runs_a_whole_job_from_sqs_batches(
    small_parts,
    queue,
    fan_runtime,
    make_bucket,
    s3_client,
    make_raster,
    make_sqs_event,
    make_s3_record,
    tiny_model_card,
    monkeypatch,
    tmp_path,
):
    # GIVEN the Lambda module (tiny model) and an upload's S3 notification in an SQS batch
    import importlib

    from handler.local.lambda_context import make_context
    from handler.runtime import get_runtime
    from handler.settings import get_settings

    monkeypatch.setenv("MODEL_CARD", str(tiny_model_card))
    get_settings.cache_clear()
    get_runtime.cache_clear()
    lambda_fn = importlib.import_module("handler.lambda_function")
    runtime = fan_runtime(min_remaining_ms=0)
    monkeypatch.setattr(lambda_fn, "get_runtime", lambda: runtime)
    bucket = make_bucket()
    body = upload(s3_client, bucket, make_raster, 300, 70)
    notification = {"Records": [make_s3_record("scenes/big.tif", bucket=bucket, size=None)]}
    # WHEN the batch and then every shard message (as SQS batches of one) reach lambda_handler
    assert lambda_fn.lambda_handler(make_sqs_event(notification), make_context()) == {"batchItemFailures": []}
    while queue.messages:
        event = make_sqs_event(queue.messages.popleft())
        assert lambda_fn.lambda_handler(event, make_context()) == {"batchItemFailures": []}
    get_settings.cache_clear()
    get_runtime.cache_clear()
    # THEN the assembled .npy is the single-invocation one
    assert get(s3_client, bucket, "scenes/big.npy") == expected_npy(runtime, make_raster, tmp_path, body)


# -- shards read the source where it lies (handler/remote.py) ---------------------------------------------------


def random_tiled(s3_client, bucket, make_raster, height, width, block=64) -> bytes:
    """A tiled DEFLATE scene of noise (it hardly compresses: the object is mostly pixel blocks)."""
    data = np.random.default_rng(7).integers(0, 4000, (10, height, width), dtype="uint16")
    return upload(s3_client, bucket, make_raster, height, width, data=data, tiled=True, blockxsize=block,
                  blockysize=block, compress="deflate")  # fmt: skip


def cold_urls(monkeypatch) -> None:
    """A new URL for every shard, so each starts as cold as in another process (GDAL caches ranges by URL)."""
    lifetimes = itertools.count(1200)
    monkeypatch.setattr(coordinator, "url_lifetime_s", lambda settings: next(lifetimes))


def no_download(*args, **kwargs):
    raise AssertionError("a fan-out job downloaded its input")


def test_a_shard_reads_its_rows_not_the_whole_object(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path, s3_gets, monkeypatch
):
    # GIVEN a scene of 1536 rows in 128-pixel tiles, in 3 shards, every GET of it recorded, and no download
    monkeypatch.setattr(Storage, "download", no_download)
    cold_urls(monkeypatch)
    runtime = fan_runtime()
    bucket = make_bucket()
    body = random_tiled(s3_client, bucket, make_raster, 1536, 128, block=128)
    etag = s3_client.head_object(Bucket=bucket, Key="scenes/big.tif")["ETag"]
    assert process_object(ref(bucket), runtime).status is OutcomeStatus.FANNED_OUT
    coordinator_gets = source_gets(s3_gets)
    # WHEN each shard message runs
    shards = []
    while queue.messages:
        s3_gets.clear()
        queue.log.append(run_shard(parse_shard_message(queue.messages.popleft()), runtime, queue.send).as_dict())
        shards.append(source_gets(s3_gets))
    # THEN each read of the source is ranged but GDAL's one size probe (a GET it cuts off after the headers),
    # every one carries the job's ETag (an unversioned bucket: If-Match pins the bytes)
    for gets in [coordinator_gets, *shards]:
        assert [g["bytes"] for g in gets].count(None) <= 1
        assert gets and all(g["if_match"] == etag for g in gets)
    # and a shard asks for well under the object (its rows, its overlap rows, the header), the coordinator for
    # the header only; the assembled .npy is still predict_file's byte for byte
    asked = [sum(g["bytes"] or 0 for g in gets) for gets in shards]
    # (the fitted grid's tile rows are up to 2.25x the card's: a shard's overlap rows are a larger share here)
    assert len(asked) == 6 and max(asked) < 0.8 * len(body), (asked, len(body))
    assert sum(g["bytes"] or 0 for g in coordinator_gets) < 0.1 * len(body)
    assert get(s3_client, bucket, "scenes/big.npy") == expected_npy(runtime, make_raster, tmp_path, body)
    print(f"object {len(body)} B; ranged bytes asked: coordinator {sum(g['bytes'] or 0 for g in coordinator_gets)}, "
          f"stats shards {asked[:3]}, predict shards {asked[3:]}")  # fmt: skip


def source_gets(gets: list[dict]) -> list[dict]:
    """The GETs of the scene itself (job objects and the .npy are other keys)."""
    return [g for g in gets if g["path"].split("?")[0].endswith("/scenes/big.tif")]


@pytest.mark.parametrize("versioned", [False, True])
def test_an_input_over_max_input_bytes_fans_out_and_assembles(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path, monkeypatch, versioned
):
    # GIVEN an object over MAX_INPUT_BYTES but far within MAX_SCENE_PIXELS
    monkeypatch.setattr(Storage, "download", no_download)
    runtime = fan_runtime(max_input_bytes=50_000)
    bucket = make_bucket(versioned=versioned)
    body = upload(s3_client, bucket, make_raster, 530, 90)
    assert len(body) > runtime.settings.max_input_bytes
    # WHEN it is processed and its shards run
    assert process_object(ref(bucket), runtime).status is OutcomeStatus.FANNED_OUT
    queue.drain(runtime)
    # THEN it is not refused for its size: the .npy is predict_file's
    assert get(s3_client, bucket, "scenes/big.npy") == expected_npy(runtime, make_raster, tmp_path, body)


def test_an_input_over_max_input_bytes_that_stays_in_one_invocation_is_still_refused(
    queue, make_runtime, make_bucket, s3_client, make_raster
):
    runtime = make_runtime(max_input_bytes=50_000)  # default threshold: 300 x 70 is far below it
    bucket = make_bucket()
    upload(s3_client, bucket, make_raster, 300, 70)
    outcome = process_object(ref(bucket), runtime)
    assert outcome.status is OutcomeStatus.REJECTED and outcome.error_type == "RasterTooLargeError"
    assert "MAX_INPUT_BYTES" in outcome.detail and not queue.messages


def assert_abandoned(s3_client, bucket, queue) -> None:
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "scenes/big.npy" not in keys and "scenes/big.error.json" not in keys  # the new upload's event decides
    assert in_progress_uploads(s3_client, bucket) == []
    assert any(entry["status"] == "abandoned" for entry in queue.log)
    failed = [k for k in keys if k.startswith(JOB_PREFIX) and k.endswith("failed.json")]
    assert len(failed) == 1 and json.loads(get(s3_client, bucket, failed[0]))["error"] == "ObjectMissingError"


def test_an_object_replaced_between_phases_abandons_the_job(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster
):
    runtime = fan_runtime()
    bucket = make_bucket()
    random_tiled(s3_client, bucket, make_raster, 600, 70)
    process_object(ref(bucket), runtime)
    queue.log.append(run_shard(parse_shard_message(queue.messages.popleft()), runtime, queue.send).as_dict())
    upload(s3_client, bucket, make_raster, 600, 70, seed=3)  # a new upload, same key, unversioned bucket
    queue.drain(runtime)
    assert_abandoned(s3_client, bucket, queue)


def test_an_object_replaced_while_a_shard_reads_it_abandons_the_job(
    small_parts, queue, make_runtime, make_bucket, s3_client, make_raster, monkeypatch
):
    # GIVEN a job whose stats are done, and a predict shard (in another process: nothing cached) during which a
    # new upload replaces the object
    cold_urls(monkeypatch)
    runtime = make_runtime(fanout_threshold_seconds=0, fanout_max_shards=1)
    bucket = make_bucket()
    random_tiled(s3_client, bucket, make_raster, 600, 70)
    process_object(ref(bucket), runtime)
    queue.log.append(run_shard(parse_shard_message(queue.messages.popleft()), runtime, queue.send).as_dict())
    real_read, reads = predict_module.read_window, []

    def read_then_replace(*args, **kwargs):
        reads.append(args[2])
        if len(reads) == 2:  # after the first tile row: later rows are blocks GDAL has not fetched yet
            upload(s3_client, bucket, make_raster, 600, 70, seed=3)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(predict_module, "read_window", read_then_replace)
    # WHEN it runs
    queue.drain(runtime)
    # THEN it stopped at the first request for the new bytes: no .npy mixing two uploads, the job abandoned
    assert 2 <= len(reads) < 10
    assert_abandoned(s3_client, bucket, queue)


def test_a_failed_fetch_of_an_unchanged_object_is_retried_not_a_verdict(
    small_parts, queue, make_runtime, make_bucket, s3_client, make_raster, monkeypatch
):
    # GIVEN a shard whose remote read fails with an HTTP error while the object is unchanged (S3 503s, say)
    runtime = make_runtime(fanout_threshold_seconds=0, fanout_max_shards=1)
    bucket = make_bucket()
    random_tiled(s3_client, bucket, make_raster, 300, 70)
    process_object(ref(bucket), runtime)

    def unavailable(*args, **kwargs):
        raise RemoteReadError("big.tif: a ranged read failed (HTTP response code: 503)")

    monkeypatch.setattr(coordinator, "band_statistics", unavailable)
    # WHEN it runs, THEN the message is retried (TransientError), and nothing is failed or marked
    with pytest.raises(TransientError, match="retry later"):
        run_shard(parse_shard_message(queue.messages[0]), runtime, queue.send)
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert not any(k.endswith(("failed.json", ".error.json")) for k in keys)


@pytest.mark.parametrize(
    ("write", "error", "match"),
    [
        (sparse_file, "RasterTooLargeError", "MAX_COMPRESSION_RATIO"),
        (huge_tile_file, "RasterReadError", "larger than the image"),
        (giant_strip_file, "RasterTooLargeError", "MAX_BLOCK_BYTES"),
    ],
)
def test_a_hostile_header_is_refused_from_the_remote_header_before_any_pixel(
    queue, fan_runtime, make_bucket, s3_client, tmp_path, monkeypatch, write, error, match
):
    # GIVEN fan-out on, a crafted header, and pixel reads that would fail the test
    monkeypatch.setattr(Storage, "download", no_download)
    monkeypatch.setattr(predict_module, "read_window", no_pixels)
    runtime = fan_runtime()
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="scenes/big.tif", Body=write(tmp_path / "hostile.tif").read_bytes())
    # WHEN it is processed
    outcome = process_object(ref(bucket), runtime)
    # THEN the coordinator refused it from the header it read where the object lies: no job, no shard
    assert outcome.status is OutcomeStatus.REJECTED and outcome.error_type == error
    assert match in outcome.detail and outcome.detail.startswith("scenes/big.tif: ")
    assert not queue.messages


def no_pixels(*args, **kwargs):
    raise AssertionError("pixels were read")
