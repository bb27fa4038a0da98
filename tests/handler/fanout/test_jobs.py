"""handler/fanout/jobs.py on moto's S3 server: the typed job records and the store's conditional writes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from handler.fanout.jobs import Failure, Job, JobStore, SourceVersion
from handler.objects import JOB_PREFIX, ObjectInfo
from handler.storage import Storage
from model.predictor.shards import RowBand
from tests.fixtures.paths import REPO_ROOT

BAND = RowBand(index=0, first_tile_row=0, emit_tile_row=0, stop_tile_row=2, row_start=0, row_stop=94, read_rows=94)


def make_job(**changes) -> Job:
    fields = dict(
        source=SourceVersion("in", "scenes/big.tif", "etag1", "v1"),
        source_size=1234,
        source_dtype="uint16",
        target_key="scenes/big.npy",
        marker_key="scenes/big.error.json",
        upload_id="up-1",
        dtype="float32",
        shape=(300, 70),
        bands=(BAND, BAND),
        estimated_seconds=12.5,
        created=1700000000.0,
    )
    return Job(**{**fields, **changes})


@pytest.fixture
def store(s3_client, make_bucket) -> JobStore:
    return JobStore(Storage(s3_client), make_bucket(), "0123abcd")


def test_a_job_survives_its_document():
    job = make_job()
    assert Job.from_doc(job.to_doc()) == job
    assert job.shards == 2 and job.source.ref().version_id == "v1"


def test_the_source_version_is_the_objects():
    info = ObjectInfo("in", "a.tif", 5, "etag", "v9")
    assert SourceVersion.of(info) == SourceVersion("in", "a.tif", "etag", "v9")


def test_the_first_coordinator_records_the_job_and_the_input_key_finds_it(store):
    # GIVEN two coordinators of one upload WHEN both record their plan THEN the first stands
    first, second = make_job(upload_id="up-1"), make_job(upload_id="up-2")
    assert store.create_job(first) is True
    assert store.create_job(second) is False
    assert store.read_job() == first
    # AND `rasterfn status` finds the job from the input's key alone
    latest = JobStore.latest(store.storage, store.bucket, "in", "scenes/big.tif")
    assert latest is not None and latest.job == store.job
    assert JobStore.latest(store.storage, store.bucket, "in", "other.tif") is None


def test_an_unknown_job_reads_as_none(store):
    assert store.read_job() is None and store.failure() is None and store.completion() is None
    assert not store.is_failed() and not store.is_done()


def test_histograms_round_trip_and_are_counted(store):
    counts = np.arange(6, dtype=np.int64)
    store.put_histograms(1, [("u16", counts)])
    assert store.has_histograms(1) and not store.has_histograms(0)
    [(mode, got)] = store.get_histograms(1)
    assert mode == "u16" and np.array_equal(got, counts)
    assert store.histograms_done() == 1
    with pytest.raises(FileNotFoundError):
        store.get_histograms(0)


def test_the_first_reduction_stands(store):
    store.put_p90s([1.0, 2.0])
    store.put_p90s([9.0, 9.0])
    assert store.p90s() == [1.0, 2.0]


def test_parts_are_recorded_and_read_in_part_order(store):
    store.record_part(1, '"b"')
    store.record_part(0, '"a"')
    assert store.has_part(0) and store.parts_done() == 2
    assert store.part_etags(2) == ['"a"', '"b"']


def test_a_bands_read_is_retried_once(store):
    assert store.mark_read_retried("stats", 0, "read error") is True
    assert store.mark_read_retried("stats", 0, "read error") is False
    assert store.mark_read_retried("predict", 0, "read error") is True


def test_the_first_failure_stands(store):
    assert store.record_failure(Failure("RasterReadError", "first")) is True
    assert store.record_failure(Failure("DeadlineError", "second")) is False
    assert store.failure() == Failure("RasterReadError", "first") and store.is_failed()


def test_the_phases_messages_are_marked_sent(store):
    assert not store.stats_sent() and not store.predict_sent()
    store.mark_stats_sent()
    store.mark_predict_sent()
    assert store.stats_sent() and store.predict_sent()


def test_a_completed_job_says_where_its_output_is(store):
    store.record_done("s3://out/scenes/big.npy")
    done = store.completion()
    assert store.is_done() and done is not None and done.output == "s3://out/scenes/big.npy"


def test_every_job_object_lies_under_the_jobs_prefix(store, s3_client):
    store.create_job(make_job())
    store.record_part(0, '"a"')
    store.mark_stats_sent()
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=store.bucket)["Contents"]]
    assert keys and all(k.startswith(JOB_PREFIX) for k in keys)


# Every name the store gives a job object; none may be spelled anywhere else in the function's code.
JOB_OBJECT_NAMES = re.compile(
    r"""["'](job|stats-sent|predict-sent|p90s|failed|done|latest)\.json["']|["'](parts|stats|read-retried)/"""
)


def test_no_job_object_name_is_spelled_outside_the_store():
    store_module = REPO_ROOT / "handler" / "fanout" / "jobs.py"
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for package in ("handler", "model")
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        if path != store_module
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if JOB_OBJECT_NAMES.search(line)
    ]
    assert offenders == []
