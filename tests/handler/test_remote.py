"""handler/remote.py on moto's real HTTP server: one object version read where it lies, and what a failed read means."""

from __future__ import annotations

import traceback
from dataclasses import replace

import pytest

import model.predictor.predict as predict_module
from handler.errors import ObjectMissingError, TransientError
from handler.objects import ObjectRef
from handler.remote import remote_source, url_lifetime_s
from handler.settings import Settings
from handler.storage import Storage
from model.errors import RasterReadError, RasterTooLargeError, RemoteReadError
from model.io.raster import open_checked, open_raster, read_header
from model.predictor.bands import band_statistics
from model.predictor.shards import RowBand
from tests.fixtures.hostile_tiffs import giant_strip_file, huge_tile_file, sparse_file


@pytest.fixture
def storage(moto_endpoint) -> Storage:
    return Storage.from_defaults(max_attempts=1)


def located(storage: Storage, bucket: str, key: str = "in/scene.tif"):
    return storage.locate(ObjectRef(bucket, key))


def test_the_remote_header_is_the_local_one(storage, make_bucket, s3_client, make_raster):
    # GIVEN a tiled scene uploaded
    path = make_raster(300, 70, tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="in/scene.tif", Body=path.read_bytes())
    info = located(storage, bucket)
    # WHEN its header is read where it lies
    with remote_source(storage, info, expires_s=60) as src, open_checked(src, range(1, 11), 10**6) as (_, header):
        remote_header = header
    # THEN it is the local file's, named by the key, with the object's size for the ratio check
    with open_raster(path) as ds:
        local = read_header(ds, path)
    assert remote_header == replace(local, name="in/scene.tif") and remote_header.layout.file_bytes == info.size
    assert src.etag == info.etag and src.head == path.read_bytes()[:8]
    assert "Signature" not in repr(src) and src.url not in repr(src)


def test_a_versioned_objects_url_names_its_version(storage, make_bucket, upload_raster):
    bucket = make_bucket(versioned=True)
    version = upload_raster(bucket, "in/scene.tif")["VersionId"]
    with remote_source(storage, located(storage, bucket), expires_s=60) as src:
        assert f"versionId={version}" in src.url


def test_a_non_tiff_is_named_from_its_first_bytes_before_gdal_opens_it(storage, make_bucket, s3_client, monkeypatch):
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="in/scene.tif", Body=b"\x89PNG\r\n\x1a\n" + bytes(4096))
    monkeypatch.setattr("model.io.raster.rasterio.open", lambda *a, **k: pytest.fail("GDAL opened a PNG"))
    with (
        remote_source(storage, located(storage, bucket), expires_s=60) as src,
        pytest.raises(RasterReadError, match=r"^in/scene.tif: it is a PNG image, not a TIFF"),
        open_raster(src),
    ):
        pass


@pytest.mark.parametrize(
    ("write", "error", "match"),
    [
        (sparse_file, RasterTooLargeError, "MAX_COMPRESSION_RATIO"),
        (huge_tile_file, RasterReadError, "larger than the image"),
        (giant_strip_file, RasterTooLargeError, "MAX_BLOCK_BYTES"),
    ],
)
def test_a_shard_refuses_a_hostile_header_before_any_pixel(
    storage, make_bucket, s3_client, make_runtime, tmp_path, monkeypatch, write, error, match
):
    # GIVEN a crafted header where a shard reads it, and pixel reads that would fail the test
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="in/scene.tif", Body=write(tmp_path / "h.tif").read_bytes())
    monkeypatch.setattr(predict_module, "read_window", lambda *a, **k: pytest.fail("pixels were read"))
    band = RowBand(0, 0, 0, 1, 0, 64, 64)
    # WHEN a stats shard runs on it, THEN the decode checks refuse it from the header, as for a local file
    with pytest.raises(error, match=match), remote_source(storage, located(storage, bucket), expires_s=60) as src:
        band_statistics(make_runtime().model, src, band)


def test_a_corrupt_remote_raster_is_refused_without_its_url_in_the_error(
    storage, make_bucket, s3_client, make_raster, make_runtime
):
    # GIVEN a readable header over corrupt compressed blocks, read where it lies
    path = make_raster(300, 70, tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) * 9 // 10] = b"\xff" * (len(data) * 9 // 10 - len(data) // 2)
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="in/scene.tif", Body=bytes(data))
    band = RowBand(0, 0, 0, 6, 0, 300, 300)
    # WHEN a shard reads its rows, THEN the input error names the file, and nothing in it or its chain names the
    # presigned URL (a read credential, were the error logged with its traceback)
    with (
        pytest.raises(RasterReadError, match=r"^scene\.tif: its pixel data") as info,
        remote_source(storage, located(storage, bucket), expires_s=60) as src,
    ):
        band_statistics(make_runtime().model, src, band)
    chain = traceback.format_exception(info.value)  # what a log line with the traceback would show
    assert not any("X-Amz-Signature" in text or src.url in text for text in chain), chain


CORRUPT = RasterReadError("scene.tif: its pixel data is truncated or corrupt")
UNAVAILABLE = RemoteReadError("scene.tif: a ranged read failed (HTTP response code: 503)")


@pytest.mark.parametrize(
    ("replaced", "failure", "error", "match"),
    [
        (True, CORRUPT, ObjectMissingError, "replaced or deleted"),  # a 412, as libtiff reports it
        (True, UNAVAILABLE, ObjectMissingError, "replaced or deleted"),
        (False, UNAVAILABLE, TransientError, "retry later"),  # S3 answered 5xx past GDAL's retries
        (False, CORRUPT, RasterReadError, "corrupt"),  # the bytes are bad: the input error stands
    ],
)
def test_what_a_failed_read_means(storage, make_bucket, upload_raster, replaced, failure, error, match):
    # GIVEN an object read where it lies, WHEN a read fails (after a new upload or not), THEN one HEAD decides
    bucket = make_bucket()
    upload_raster(bucket, "in/scene.tif")
    with pytest.raises(error, match=match), remote_source(storage, located(storage, bucket), expires_s=60):
        if replaced:
            upload_raster(bucket, "in/scene.tif", seed=5)
        raise failure


def test_a_url_outlives_the_longest_shard():
    assert url_lifetime_s(Settings()) >= 15 * 60
    assert url_lifetime_s(Settings(inference_timeout_s=3600)) > 3600
