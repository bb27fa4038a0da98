"""handler/process.py's guards (issue 9): the allow-list before any S3 call, resource faults are transient,
two inputs never share an output, and a job on an old version never overwrites a newer version's result."""

from __future__ import annotations

import errno
import json

import pytest

import handler.products as products
from handler.errors import ForbiddenObjectError, TransientError, WorkerCrashedError
from handler.outcome import OutcomeStatus
from handler.outputs import META_SOURCE_ETAG, META_SOURCE_KEY, key_digest, reject_object
from handler.process import process_object
from tests.fixtures.aws import keys_in
from tests.fixtures.events import ref_for


def count_requests(client) -> list[str]:
    """Every request the client is about to send, whatever the operation."""
    sent: list[str] = []
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    return sent


def test_a_foreign_bucket_is_refused_before_any_s3_request(make_runtime, bucket, upload_raster, s3_client):
    # GIVEN a runtime allowed only "scenes/in/" and an object in another bucket it could reach
    runtime = make_runtime(allowed_buckets=("scenes/in/",))
    upload_raster(bucket, "a.tif")
    sent = count_requests(runtime.storage.client)
    # WHEN an event names that object THEN it is refused and S3 saw no request at all
    with pytest.raises(ForbiddenObjectError, match="outside ALLOWED_BUCKETS"):
        process_object(ref_for(bucket, "a.tif"), runtime)
    with pytest.raises(ForbiddenObjectError):
        reject_object(ref_for(bucket, "a.tif"), runtime, WorkerCrashedError("x"))
    assert sent == []
    assert keys_in(s3_client, bucket) == {"a.tif"}


def test_an_allowed_prefix_is_processed(make_runtime, bucket, upload_raster):
    runtime = make_runtime(allowed_buckets=(f"{bucket}/in/",))
    put = upload_raster(bucket, "in/a.tif")
    assert process_object(ref_for(bucket, "in/a.tif", put), runtime).status is OutcomeStatus.WRITTEN


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.ENOMEM])
def test_out_of_disk_or_memory_is_transient_and_writes_no_marker(
    make_runtime, bucket, upload_raster, s3_client, monkeypatch, code
):
    runtime = make_runtime()
    put = upload_raster(bucket, "a.tif")

    def full(*_args, **_kwargs):
        raise OSError(code, "resource")

    monkeypatch.setattr(products, "predict_file", full)
    with pytest.raises(TransientError, match="retry later"):
        process_object(ref_for(bucket, "a.tif", put), runtime)
    assert keys_in(s3_client, bucket) == {"a.tif"}


def test_a_memory_error_is_transient(make_runtime, bucket, upload_raster, monkeypatch):
    runtime = make_runtime()
    put = upload_raster(bucket, "a.tif")
    monkeypatch.setattr(products, "predict_file", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(TransientError, match="out of memory"):
        process_object(ref_for(bucket, "a.tif", put), runtime)


def test_the_output_records_its_source_key(make_runtime, bucket, upload_raster, s3_client):
    runtime = make_runtime()
    put = upload_raster(bucket, "a.tif")
    process_object(ref_for(bucket, "a.tif", put), runtime)
    metadata = s3_client.head_object(Bucket=bucket, Key="a.npy")["Metadata"]
    assert metadata[META_SOURCE_KEY] == key_digest("a.tif")


def test_a_second_input_with_the_same_stem_is_refused_and_the_first_result_kept(
    make_runtime, bucket, upload_raster, s3_client
):
    # GIVEN a.tif processed into a.npy
    runtime = make_runtime()
    first = upload_raster(bucket, "a.tif", seed=1)
    process_object(ref_for(bucket, "a.tif", first), runtime)
    result = s3_client.get_object(Bucket=bucket, Key="a.npy")["Body"].read()
    # WHEN a.TIFF (same bytes even, so the same ETag) arrives
    second = upload_raster(bucket, "a.TIFF", body=s3_client.get_object(Bucket=bucket, Key="a.tif")["Body"].read())
    outcome = process_object(ref_for(bucket, "a.TIFF", second), runtime)
    # THEN it is rejected with a marker that says what to do, and a.npy is still a.tif's
    assert outcome.status is OutcomeStatus.REJECTED and outcome.error_type == "OutputConflictError"
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key="a.error.json")["Body"].read())
    assert doc["key"] == "a.TIFF" and "rename a.TIFF" in doc["message"]
    assert s3_client.get_object(Bucket=bucket, Key="a.npy")["Body"].read() == result
    # AND a.tif's own next delivery is still a duplicate of its result, not of a.TIFF's marker
    again = process_object(ref_for(bucket, "a.tif", first), runtime)
    assert again.status is OutcomeStatus.DUPLICATE and again.output_key == "a.npy"


def test_a_slow_job_on_an_old_version_never_overwrites_the_newer_versions_result(
    make_runtime, make_bucket, upload_raster, s3_client, monkeypatch
):
    # GIVEN version 1 of a.tif being processed slowly, and during its inference version 2 uploaded and processed
    runtime = make_runtime()
    bucket = make_bucket(versioned=True)
    v1 = upload_raster(bucket, "a.tif", seed=1)
    real_predict = products.predict_file
    seen: dict[str, object] = {}

    def slow_predict(*args, **kwargs):
        if "v2" not in seen:
            seen["v2"] = v2 = upload_raster(bucket, "a.tif", seed=2)
            monkeypatch.setattr(products, "predict_file", real_predict)
            seen["v2_outcome"] = process_object(ref_for(bucket, "a.tif", v2), runtime)
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(products, "predict_file", slow_predict)
    # WHEN version 1's job finishes last
    outcome = process_object(ref_for(bucket, "a.tif", v1), runtime)
    # THEN its conditional write failed, it reports the object replaced, and a.npy is version 2's
    assert seen["v2_outcome"].status is OutcomeStatus.WRITTEN
    assert outcome.status is OutcomeStatus.MISSING and "newer upload" in outcome.detail
    metadata = s3_client.head_object(Bucket=bucket, Key="a.npy")["Metadata"]
    assert metadata[META_SOURCE_ETAG] == seen["v2"]["ETag"].strip('"')


def test_a_concurrent_write_while_the_input_is_unchanged_is_retried(make_runtime, bucket, upload_raster, s3_client):
    # GIVEN an output written by someone else between our look and our write
    runtime = make_runtime()
    put = upload_raster(bucket, "a.tif")
    real_head = runtime.storage.head

    def head_then_race(b, key, **kwargs):
        info = real_head(b, key, **kwargs)
        if key == "a.npy":
            s3_client.put_object(Bucket=b, Key="a.npy", Body=b"someone else")
        return info

    object.__setattr__(runtime.storage, "head", head_then_race)
    # WHEN we finish THEN nothing is overwritten and the event is retried
    with pytest.raises(TransientError, match="changed while"):
        process_object(ref_for(bucket, "a.tif", put), runtime)
    assert s3_client.get_object(Bucket=bucket, Key="a.npy")["Body"].read() == b"someone else"


def test_reject_object_writes_the_crash_marker(make_runtime, bucket, upload_raster, s3_client):
    runtime = make_runtime()
    upload_raster(bucket, "a.tif")
    outcome = reject_object(ref_for(bucket, "a.tif"), runtime, WorkerCrashedError("crashed (killed by SIGABRT)"))
    assert outcome.status is OutcomeStatus.REJECTED and outcome.output_key == "a.error.json"
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key="a.error.json")["Body"].read())
    assert doc["error"] == "WorkerCrashedError" and "SIGABRT" in doc["message"]
