"""handler/storage.py on moto's real HTTP server: locate, exact-version download, upload, error mapping."""

from __future__ import annotations

import os
import stat
from collections import namedtuple

import pytest
from botocore.exceptions import ClientError

from handler import storage as storage_module
from handler.aws import make_s3_client
from handler.errors import ObjectMissingError, TransientError
from handler.objects import ObjectInfo, ObjectRef
from handler.s3_errors import translate_client_error
from handler.storage import Storage
from model.errors import ConfigError, InputError, RasterTooLargeError
from tests.fixtures.aws import count_calls


@pytest.fixture
def storage(moto_endpoint) -> Storage:
    # One attempt: injected faults surface at once instead of after botocore's backoff.
    return Storage.from_defaults(max_attempts=1)


def client_error(code: str, status: int, operation: str = "GetObject") -> ClientError:
    response = {"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, operation)


# --- error translation: one table


@pytest.mark.parametrize(
    ("code", "status", "writing", "expected"),
    [
        ("404", 404, False, ObjectMissingError),
        ("NoSuchKey", 404, False, ObjectMissingError),
        ("NoSuchVersion", 404, False, ObjectMissingError),
        ("NoSuchBucket", 404, True, ConfigError),
        ("PreconditionFailed", 412, False, ObjectMissingError),
        ("SlowDown", 503, False, TransientError),
        ("InternalError", 500, True, TransientError),
        ("Throttling", 400, False, TransientError),
        ("RequestTimeout", 400, False, TransientError),
        ("TooManyRequests", 429, False, TransientError),
        ("AccessDenied", 403, False, ConfigError),
        ("403", 403, True, ConfigError),
        ("InvalidObjectState", 403, False, InputError),
        ("InvalidArgument", 400, True, ConfigError),
    ],
)
def test_translate_client_error_maps_codes_to_the_error_tree(code, status, writing, expected):
    # GIVEN a botocore ClientError WHEN translated THEN it is the expected kind and names the object
    error = translate_client_error(client_error(code, status), "s3://b/k.tif", writing=writing)
    assert type(error) is expected
    assert "s3://b/k.tif" in str(error)


def test_archived_objects_are_input_errors_not_access_errors():
    # InvalidObjectState comes with 403: the code must win over the status.
    error = translate_client_error(client_error("InvalidObjectState", 403), "s3://b/k.tif")
    assert isinstance(error, InputError)
    assert "restore" in str(error)


# --- client construction


def test_client_uses_the_endpoint_from_the_environment_with_path_style(moto_endpoint):
    # GIVEN AWS_ENDPOINT_URL (set by moto_endpoint) WHEN a client is made without endpoint_url
    client = make_s3_client()
    # THEN boto3 picked it up itself, and a non-AWS endpoint gets path-style addressing
    assert client.meta.endpoint_url == moto_endpoint
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.config.retries["mode"] == "standard"


def test_client_on_aws_keeps_virtual_hosted_addressing(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    client = make_s3_client()
    assert client.meta.endpoint_url.endswith("amazonaws.com")
    assert (client.meta.config.s3 or {}).get("addressing_style") in (None, "auto")


def test_explicit_endpoint_wins_over_the_environment(moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert make_s3_client(moto_endpoint).meta.endpoint_url == moto_endpoint


def test_connection_failures_are_transient(monkeypatch):
    # GIVEN an endpoint nothing listens on WHEN we read THEN TransientError, not a botocore exception
    storage = Storage.from_defaults("http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(TransientError, match="retry later"):
        storage.head("bucket", "key.tif")


# --- locate


def test_locate_returns_the_current_object(storage, s3_client, make_bucket):
    bucket = make_bucket()
    put = s3_client.put_object(Bucket=bucket, Key="a/b c+d é.tif", Body=b"12345", Metadata={"x": "y"})
    info = storage.locate(ObjectRef(bucket, "a/b c+d é.tif", etag=put["ETag"].strip('"')))
    assert (info.key, info.size, info.etag, info.metadata) == (
        "a/b c+d é.tif",
        5,
        put["ETag"].strip('"'),
        {"x": "y"},
    )
    assert info.version_id is None


def test_locate_falls_back_to_the_raw_key(storage, s3_client, make_bucket):
    # GIVEN a key whose '+' was really a '+', but the event decoder turned it into a space
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="a+b.tif", Body=b"x")
    info = storage.locate(ObjectRef(bucket, "a b.tif", raw_key="a+b.tif"))
    assert info.key == "a+b.tif"


def test_locate_missing_object_raises_object_missing(storage, make_bucket):
    with pytest.raises(ObjectMissingError, match="no longer exists"):
        storage.locate(ObjectRef(make_bucket(), "gone.tif", raw_key="gone%20.tif"))


def test_locate_missing_bucket_raises_object_missing(storage):
    with pytest.raises(ObjectMissingError):
        storage.locate(ObjectRef("no-such-bucket-rasterfn", "gone.tif"))


def test_locate_refuses_an_etag_that_was_replaced(storage, s3_client, make_bucket):
    # GIVEN an event about the first upload, and a second upload of the same key since
    bucket = make_bucket()
    first = s3_client.put_object(Bucket=bucket, Key="k.tif", Body=b"first")
    s3_client.put_object(Bucket=bucket, Key="k.tif", Body=b"second")
    # WHEN the old event is handled THEN it is skipped as replaced (the new upload has its own event)
    with pytest.raises(ObjectMissingError, match="replaced"):
        storage.locate(ObjectRef(bucket, "k.tif", etag=first["ETag"].strip('"')))


def test_locate_refuses_a_version_that_was_replaced(storage, s3_client, make_bucket):
    bucket = make_bucket(versioned=True)
    first = s3_client.put_object(Bucket=bucket, Key="k.tif", Body=b"first")
    second = s3_client.put_object(Bucket=bucket, Key="k.tif", Body=b"second")
    with pytest.raises(ObjectMissingError, match="replaced"):
        storage.locate(ObjectRef(bucket, "k.tif", version_id=first["VersionId"]))
    info = storage.locate(ObjectRef(bucket, "k.tif", version_id=second["VersionId"]))
    assert info.version_id == second["VersionId"]


# --- download


def test_download_writes_a_private_file_not_named_after_the_key(storage, s3_client, make_bucket, tmp_path):
    # GIVEN a key that tries path traversal
    bucket = make_bucket()
    key = "../../etc/evil name.tif"
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"raster bytes")
    info = storage.locate(ObjectRef(bucket, key))
    # WHEN downloaded
    path = storage.download(info, tmp_path, max_bytes=1000)
    # THEN the bytes are right, the file is 0600, inside tmp_path, with a name of our own
    assert path.read_bytes() == b"raster bytes"
    assert path.parent == tmp_path
    assert path.name.startswith("rasterfn-in-") and "evil" not in path.name
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_download_gets_the_exact_version(storage, s3_client, make_bucket, tmp_path):
    bucket = make_bucket(versioned=True)
    first = s3_client.put_object(Bucket=bucket, Key="k.tif", Body=b"first")
    s3_client.put_object(Bucket=bucket, Key="k.tif", Body=b"second!")
    old = storage.head(bucket, "k.tif", version_id=first["VersionId"])
    assert storage.download(old, tmp_path, max_bytes=1000).read_bytes() == b"first"


def test_download_refuses_objects_over_the_limit_without_reading_them(storage, s3_client, make_bucket, tmp_path):
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="big.tif", Body=b"x" * 2048)
    info = storage.locate(ObjectRef(bucket, "big.tif"))
    gets = count_calls(storage.client, "GetObject")
    with pytest.raises(RasterTooLargeError, match="MAX_INPUT_BYTES"):
        storage.download(info, tmp_path, max_bytes=1024)
    assert gets == []
    assert list(tmp_path.iterdir()) == []


def test_download_refuses_objects_that_do_not_fit_the_temp_disk(storage, monkeypatch, tmp_path):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(storage_module.shutil, "disk_usage", lambda _: usage(100, 90, 10))
    info = ObjectInfo("bucket", "k.tif", size=5, etag="e")
    with pytest.raises(RasterTooLargeError, match="temporary space"):
        storage.download(info, tmp_path, max_bytes=1000, reserve_bytes=6)
    assert list(tmp_path.iterdir()) == []


def test_download_of_a_replaced_object_fails_cleanly(storage, s3_client, make_bucket, tmp_path):
    # GIVEN a HEAD of the first upload, then a second upload before the download
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="k.tif", Body=b"first")
    info = storage.locate(ObjectRef(bucket, "k.tif"))
    s3_client.put_object(Bucket=bucket, Key="k.tif", Body=b"other")
    # WHEN downloading THEN If-Match refuses to mix versions, and no temp file is left
    with pytest.raises(ObjectMissingError, match="replaced"):
        storage.download(info, tmp_path, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_download_throttled_is_transient_and_leaves_nothing(storage, s3_client, make_bucket, tmp_path, inject_s3_fault):
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="k.tif", Body=b"data")
    info = storage.locate(ObjectRef(bucket, "k.tif"))
    inject_s3_fault(storage.client, "GetObject", times=1)
    with pytest.raises(TransientError):
        storage.download(info, tmp_path, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


# --- upload and small writes


def test_upload_file_writes_bytes_metadata_and_content_type(storage, s3_client, make_bucket, tmp_path):
    bucket = make_bucket()
    src = tmp_path / "out.npy"
    src.write_bytes(b"\x93NUMPY fake")
    size = storage.upload_file(src, bucket, "a/ü.npy", metadata={"model-sha256": "ab" * 32})
    got = s3_client.get_object(Bucket=bucket, Key="a/ü.npy")
    assert got["Body"].read() == b"\x93NUMPY fake"
    assert size == src.stat().st_size
    assert got["Metadata"] == {"model-sha256": "ab" * 32}
    assert got["ContentType"] == "application/octet-stream"


def test_upload_file_multipart_above_the_threshold(moto_endpoint, s3_client, make_bucket, tmp_path):
    # GIVEN a tiny multipart threshold (S3's minimum part is 5 MiB)
    from boto3.s3.transfer import TransferConfig

    mb = 1024**2
    storage = Storage(make_s3_client(), TransferConfig(multipart_threshold=5 * mb, multipart_chunksize=5 * mb))
    bucket = make_bucket()
    src = tmp_path / "big.npy"
    src.write_bytes(os.urandom(11 * mb))
    parts = count_calls(storage.client, "UploadPart")
    storage.upload_file(src, bucket, "big.npy", metadata={"k": "v"})
    head = s3_client.head_object(Bucket=bucket, Key="big.npy")
    assert len(parts) == 3
    assert head["ContentLength"] == 11 * mb and head["ETag"].strip('"').endswith("-3")
    assert head["Metadata"] == {"k": "v"}


def test_upload_to_a_missing_bucket_is_a_config_error(storage, tmp_path):
    src = tmp_path / "out.npy"
    src.write_bytes(b"x")
    with pytest.raises(ConfigError):
        storage.upload_file(src, "no-such-output-bucket", "out.npy", metadata={})


def test_upload_throttled_is_transient(storage, make_bucket, tmp_path, inject_s3_fault):
    bucket = make_bucket()
    src = tmp_path / "out.npy"
    src.write_bytes(b"x")
    inject_s3_fault(storage.client, "PutObject", times=1, status=503, code="SlowDown")
    with pytest.raises(TransientError, match="SlowDown"):
        storage.upload_file(src, bucket, "out.npy", metadata={})


def test_default_retries_absorb_a_single_throttle(moto_endpoint, s3_client, make_bucket, tmp_path, inject_s3_fault):
    # GIVEN the production retry settings and one 503 on the upload
    storage = Storage.from_defaults()
    bucket = make_bucket()
    src = tmp_path / "out.npy"
    src.write_bytes(b"x")
    fault = inject_s3_fault(storage.client, "PutObject", times=1)
    # WHEN uploading THEN botocore retried by itself and the object is there
    storage.upload_file(src, bucket, "out.npy", metadata={})
    assert fault["failed"] == 1
    assert s3_client.get_object(Bucket=bucket, Key="out.npy")["Body"].read() == b"x"


def test_put_json_and_delete(storage, s3_client, make_bucket):
    bucket = make_bucket()
    storage.put_json(bucket, "a.error.json", {"error": "é"}, metadata={"producer": "rasterfn"})
    got = s3_client.get_object(Bucket=bucket, Key="a.error.json")
    assert got["ContentType"] == "application/json"
    assert got["Body"].read().decode().strip().startswith("{")
    storage.delete(bucket, "a.error.json")
    assert storage.head(bucket, "a.error.json") is None


def test_head_missing_returns_none(storage, make_bucket):
    assert storage.head(make_bucket(), "nothing.npy") is None


def test_object_info_uri():
    assert ObjectInfo("b", "a/k.tif", 1, "e").uri == "s3://b/a/k.tif"


@pytest.fixture
def ranged_storage(moto_endpoint) -> Storage:
    """Ranged, parallel downloads from 1 KiB on (the production threshold is 64 MiB)."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=1024, multipart_chunksize=1024, max_concurrency=4)
    return Storage(make_s3_client(max_attempts=1), config)


def test_ranged_download_reassembles_the_object(ranged_storage, s3_client, make_bucket, tmp_path):
    bucket = make_bucket()
    body = os.urandom(5000)
    s3_client.put_object(Bucket=bucket, Key="k.tif", Body=body)
    ranges = count_calls(ranged_storage.client, "GetObject")
    path = ranged_storage.download(ranged_storage.locate(ObjectRef(bucket, "k.tif")), tmp_path, max_bytes=10**6)
    assert path.read_bytes() == body
    assert len(ranges) == 5


def test_ranged_download_of_a_replaced_object_fails_cleanly(ranged_storage, s3_client, make_bucket, tmp_path):
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="k.tif", Body=os.urandom(3000))
    info = ranged_storage.locate(ObjectRef(bucket, "k.tif"))
    s3_client.put_object(Bucket=bucket, Key="k.tif", Body=os.urandom(3000))
    with pytest.raises(ObjectMissingError, match="replaced"):
        ranged_storage.download(info, tmp_path, max_bytes=10**6)
    assert list(tmp_path.iterdir()) == []


def test_locate_checks_the_etag_when_the_bucket_has_no_versions(storage, s3_client, make_bucket):
    # An event may carry a version id while the object has none (versioning suspended): the ETag decides
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="k.tif", Body=b"now")
    with pytest.raises(ObjectMissingError, match="replaced"):
        storage.locate(ObjectRef(bucket, "k.tif", version_id="v-old", etag="0" * 32))


# --- conditional writes (issue 9): a result is written only over what the job saw at its start


def _small_and_multipart_storages() -> list[Storage]:
    from boto3.s3.transfer import TransferConfig

    mb = 1024**2
    return [
        Storage(make_s3_client()),
        Storage(make_s3_client(), TransferConfig(multipart_threshold=5 * mb, multipart_chunksize=5 * mb)),
    ]


@pytest.mark.parametrize("kind", [0, 1], ids=["put", "multipart"])
def test_conditional_upload_writes_only_over_what_was_seen(moto_endpoint, s3_client, make_bucket, tmp_path, kind):
    storage = _small_and_multipart_storages()[kind]
    bucket = make_bucket()
    src = tmp_path / "out.npy"
    src.write_bytes(os.urandom(11 * 1024**2 if kind else 100))
    sent: dict[str, dict[str, str]] = {}
    storage.client.meta.events.register(
        "before-send.s3", lambda request, **_: sent.__setitem__(request.method + request.url, dict(request.headers))
    )
    # GIVEN nothing there: if_absent writes
    storage.upload_file(src, bucket, "out.npy", metadata={"k": "v"}, if_absent=True)
    first = s3_client.head_object(Bucket=bucket, Key="out.npy")
    assert first["ContentLength"] == src.stat().st_size and first["Metadata"] == {"k": "v"}
    # WHEN something is there THEN if_absent refuses
    with pytest.raises(ObjectMissingError, match="not overwritten"):
        storage.upload_file(src, bucket, "out.npy", metadata={}, if_absent=True)
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # no parts left behind
    # AND an If-Match on a stale ETag refuses (moto checks it on PutObject only: for the multipart
    # completion, the header S3 checks is asserted below)
    if not kind:
        with pytest.raises(ObjectMissingError, match="not overwritten"):
            storage.upload_file(src, bucket, "out.npy", metadata={}, if_match="0" * 32)
    sent.clear()
    storage.upload_file(src, bucket, "out.npy", metadata={"k": "2"}, if_match=first["ETag"].strip('"'))
    assert s3_client.head_object(Bucket=bucket, Key="out.npy")["Metadata"] == {"k": "2"}
    final = [headers for url, headers in sent.items() if url.startswith("P") and "partNumber" not in url]
    assert final[-1]["If-Match"] == first["ETag"].encode()


def test_read_range_reads_exactly_the_version_seen(storage, s3_client, make_bucket):
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="in/a.tif", Body=b"II*\x00" + bytes(range(200)))
    info = storage.locate(ObjectRef(bucket, "in/a.tif"))
    assert storage.read_range(info, 0, 8) == b"II*\x00\x00\x01\x02\x03"
    assert storage.read_range(info, 200, 100) == bytes(range(196, 200))  # fewer at the end
    assert storage.read_range(info, 204, 8) == b""
    s3_client.put_object(Bucket=bucket, Key="in/a.tif", Body=b"MM\x00*")
    with pytest.raises(ObjectMissingError, match="replaced"):
        storage.read_range(info, 0, 8)  # If-Match on the ETag seen: never the new upload's bytes


@pytest.mark.parametrize("versioned", [False, True])
def test_presigned_get_pins_the_version_and_names_the_etag(storage, s3_client, make_bucket, versioned):
    bucket = make_bucket(versioned=versioned)
    s3_client.put_object(Bucket=bucket, Key="in/a b.tif", Body=b"II*\x00")
    info = storage.locate(ObjectRef(bucket, "in/a b.tif"))
    url = storage.presigned_get(info, 60)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    assert info.etag in url  # two versions of one key presigned in the same second get two URLs
    assert (f"versionId={info.version_id}" in url) is versioned
