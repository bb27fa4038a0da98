"""Reading back what the function wrote: output/error-marker lookup and mask validation."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from handler.local.results import find_result, load_npy, validate_mask


@pytest.mark.parametrize(
    ("array", "shape", "problem"),
    [
        (np.zeros((4, 5), np.float32), (4, 5), None),
        (np.eye(4, dtype=np.float32), (4, 4), None),
        (np.zeros((4, 5), np.float32), None, None),
        (np.zeros((5, 4), np.float32), (4, 5), "shape"),
        (np.zeros((1, 4, 5), np.float32), (4, 5), "shape"),
        (np.zeros((1, 4, 5), np.float32), None, "dimensions"),
        (np.zeros((4, 5), np.float64), (4, 5), "dtype"),
        (np.zeros((4, 5), np.uint8), (4, 5), "dtype"),
        (np.full((4, 5), 0.5, np.float32), (4, 5), "values outside"),
        (np.full((4, 5), np.nan, np.float32), (4, 5), "values outside"),
        (np.full((4, 5), 2, np.float32), (4, 5), "values outside"),
    ],
)
def test_validate_mask(array, shape, problem):
    got = validate_mask(array, shape)
    assert (got is None) if problem is None else (problem in got)


def test_load_npy_refuses_pickled_objects():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        load_npy(buffer.getvalue())


def test_load_npy_round_trips_a_mask():
    buffer = io.BytesIO()
    np.save(buffer, np.ones((3, 2), np.float32))
    assert load_npy(buffer.getvalue()).shape == (3, 2)


def test_find_result_sees_outputs_markers_and_their_age(s3_client, make_bucket):
    # GIVEN a bucket with one output and one error marker
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="a/x.npy", Body=b"12345")
    doc = {"error": "RasterReadError", "message": "not a raster"}
    s3_client.put_object(Bucket=bucket, Key="a/y.error.json", Body=json.dumps(doc).encode())
    # WHEN results are looked up
    written = find_result(s3_client, bucket, "a/x.tif")
    rejected = find_result(s3_client, bucket, "a/y.tif")
    nothing = find_result(s3_client, bucket, "a/z.tif")
    later = find_result(s3_client, bucket, "a/x.tif", since=datetime.now(UTC) + timedelta(minutes=5))
    # THEN each is told apart, with the marker's message, and old outputs do not count
    assert (written.status, written.key, written.size) == ("written", "a/x.npy", 5)
    assert rejected.status == "rejected" and rejected.detail == "RasterReadError: not a raster"
    assert nothing.status == "none" and later.status == "none"


def test_find_result_honours_output_bucket_and_prefix(s3_client, make_bucket):
    inputs, outputs = make_bucket(), make_bucket()
    s3_client.put_object(Bucket=outputs, Key="masks/a/x.npy", Body=b"1")
    result = find_result(s3_client, inputs, "a/x.tif", output_bucket=outputs, output_prefix="masks/")
    assert (result.status, result.bucket, result.key) == ("written", outputs, "masks/a/x.npy")
