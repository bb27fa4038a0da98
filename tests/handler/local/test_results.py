"""Reading back what the function wrote: output/error-marker lookup and mask validation."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from handler.local.results import find_result, load_cog_mask, load_npy, validate_mask
from handler.products import make_products


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


# --- OUTPUTS: every output must be there; the COG as a mask ------------------------------------------------

ALL = ("npy", "cog", "stac")


def _put(s3_client, bucket, *keys):
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=key.encode())  # a size of its own for each


@pytest.mark.parametrize(
    "present",
    [
        ("a/x.npy",),
        ("a/x.npy", "a/x.mask.TIF", "a/x.thumb.png"),  # stopped before the Item
        ("a/x.mask.TIF", "a/x.thumb.png", "a/x.stac.json"),  # no .npy
    ],
)
def test_find_result_is_written_only_when_every_output_is_there(s3_client, make_bucket, present):
    bucket = make_bucket()
    _put(s3_client, bucket, *present)
    assert find_result(s3_client, bucket, "a/x.tif", formats=ALL).status == "none"


def test_find_result_lists_the_other_outputs_in_order(s3_client, make_bucket):
    bucket = make_bucket()
    _put(s3_client, bucket, "a/x.stac.json", "a/x.thumb.png", "a/x.mask.TIF", "a/x.npy")
    result = find_result(s3_client, bucket, "a/x.tif", formats=ALL)
    assert (result.status, result.key, result.size) == ("written", "a/x.npy", len("a/x.npy"))
    assert result.others == tuple((k, len(k)) for k in ("a/x.mask.TIF", "a/x.thumb.png", "a/x.stac.json"))


@pytest.mark.parametrize(
    ("formats", "mode", "key", "others"),
    [
        (("cog",), "mask", "masks/a/x.mask.TIF", ()),
        (("cog",), "score", "masks/a/x.score.TIF", ()),
        (("cog", "stac"), "mask-uint8", "masks/a/x.mask.TIF", ("masks/a/x.thumb.png", "masks/a/x.stac.json")),
    ],
)
def test_without_npy_the_cog_is_the_result(s3_client, make_bucket, formats, mode, key, others):
    inputs, outputs = make_bucket(), make_bucket()
    _put(s3_client, outputs, key, *others)
    result = find_result(
        s3_client, inputs, "a/x.tif", output_bucket=outputs, output_prefix="masks/", formats=formats, output_mode=mode
    )
    assert (result.status, result.bucket, result.key) == ("written", outputs, key)
    assert [k for k, _ in result.others] == list(others)


def test_an_error_marker_is_found_whatever_the_outputs(s3_client, make_bucket):
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="a/y.error.json", Body=json.dumps({"error": "E", "message": "m"}))
    result = find_result(s3_client, bucket, "a/y.tif", formats=ALL)
    assert (result.status, result.key, result.others) == ("rejected", "a/y.error.json", ())


def _geotiff(classes: np.ndarray, nodata: float | None = 255, dtype: str = "uint8") -> bytes:
    profile = dict(driver="GTiff", height=classes.shape[0], width=classes.shape[1], count=1, dtype=dtype)
    profile |= dict(nodata=nodata, crs="EPSG:32633", transform=from_origin(0, 0, 10, 10), tiled=True)
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(classes.astype(dtype), 1)
        return mem.read()


def test_load_cog_mask_gives_a_float_0_1_mask_with_nodata_as_0():
    classes = np.array([[0, 1, 255], [1, 255, 0]], np.uint8)
    mask = load_cog_mask(_geotiff(classes))
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, [[0, 1, 0], [1, 0, 0]])
    assert validate_mask(mask, (2, 3)) is None


def test_load_cog_mask_of_a_real_cog(make_runtime, make_raster, tmp_path):
    # GIVEN the COG make_products writes for a scene with invalid pixels
    runtime = make_runtime()
    src = make_raster(40, 30, nodata=0)
    with rasterio.open(src, "r+") as ds:
        data = ds.read()
        data[:, :6, :6] = 0
        ds.write(data)
    products = make_products(runtime.model, src, tmp_path, runtime.options, ("npy", "cog"))
    # WHEN it is read back as a mask
    mask = load_cog_mask(products.files["cog"].read_bytes())
    # THEN it is the .npy where the input is valid, and 0 where it is not
    npy = np.load(products.files["npy"])
    assert validate_mask(mask, (40, 30)) is None
    np.testing.assert_array_equal(mask[:6, :6], 0)
    np.testing.assert_array_equal(mask[6:], npy[6:])


@pytest.mark.parametrize("data", [b"", b"not a tiff at all", b"II*\x00garbage", b"\x89PNG\r\n\x1a\n" + bytes(64)])
def test_load_cog_mask_refuses_junk_with_value_error(data):
    with pytest.raises(ValueError):
        load_cog_mask(data)
