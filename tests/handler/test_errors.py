"""What each service error does to an object: a marker, a skip, or a retry by the event source.

Behaviour, not the class tree: the same object goes through process_object while the predictor raises.
"""

from __future__ import annotations

import json

import pytest

import handler.products as products
from handler.errors import (
    BusyError,
    CancelledError,
    DeadlineError,
    EventError,
    ForbiddenObjectError,
    ObjectMissingError,
    TransientError,
    WorkerCrashedError,
)
from handler.outcome import OutcomeStatus
from handler.process import process_object
from model.errors import RasterfnError
from tests.fixtures.aws import keys_in
from tests.fixtures.events import ref_for


def predictor_raising(error: Exception):
    def predict(*args, **kwargs):
        raise error

    return predict


@pytest.mark.parametrize(
    "error", [DeadlineError("too slow"), WorkerCrashedError("killed by SIGSEGV"), EventError("odd event")]
)
def test_what_the_input_caused_writes_a_marker_and_is_not_retried(
    make_runtime, bucket, upload_raster, s3_client, monkeypatch, error
):
    # GIVEN an upload whose processing raises an error the input caused
    runtime = make_runtime()
    put = upload_raster(bucket, "a.tif")
    monkeypatch.setattr(products, "predict_file", predictor_raising(error))
    # WHEN processed THEN it is rejected with <stem>.error.json naming the error; nothing raises to the source
    outcome = process_object(ref_for(bucket, "a.tif", put), runtime)
    assert outcome.status is OutcomeStatus.REJECTED and outcome.error_type == type(error).__name__
    marker = json.loads(s3_client.get_object(Bucket=bucket, Key="a.error.json")["Body"].read())
    assert marker["error"] == type(error).__name__


@pytest.mark.parametrize("error", [TransientError("S3 slow"), BusyError("no slot"), CancelledError("client gone")])
def test_what_may_pass_is_raised_to_the_event_source_and_writes_nothing(
    make_runtime, bucket, upload_raster, s3_client, monkeypatch, error
):
    runtime = make_runtime()
    put = upload_raster(bucket, "a.tif")
    monkeypatch.setattr(products, "predict_file", predictor_raising(error))
    # one clause catches everything of ours
    with pytest.raises(RasterfnError) as raised:
        process_object(ref_for(bucket, "a.tif", put), runtime)
    assert raised.value is error
    assert keys_in(s3_client, bucket) == {"a.tif"}


def test_an_object_gone_meanwhile_is_skipped_not_retried(make_runtime, bucket, upload_raster, s3_client, monkeypatch):
    runtime = make_runtime()
    put = upload_raster(bucket, "a.tif")
    monkeypatch.setattr(products, "predict_file", predictor_raising(ObjectMissingError("deleted meanwhile")))
    outcome = process_object(ref_for(bucket, "a.tif", put), runtime)
    assert outcome.status is OutcomeStatus.MISSING
    assert keys_in(s3_client, bucket) == {"a.tif"}


def test_a_foreign_bucket_is_a_bad_event(make_runtime, bucket, upload_raster):
    runtime = make_runtime(allowed_buckets=("elsewhere",))
    upload_raster(bucket, "a.tif")
    with pytest.raises(EventError) as raised:
        process_object(ref_for(bucket, "a.tif"), runtime)
    assert type(raised.value) is ForbiddenObjectError
