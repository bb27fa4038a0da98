"""handler/process.py end to end on moto's S3 server with a tiny seeded U-Net and 64 x 64 rasters."""

from __future__ import annotations

import hashlib
import io
import json
from urllib.parse import unquote

import numpy as np
import pytest

from handler.errors import TransientError
from handler.objects import ObjectInfo, ObjectRef
from handler.outputs import output_metadata
from handler.process import process_object
from model.card import DEFAULT_CARD_PATH
from model.predictor.predict import predict_file
from tests.fixtures.aws import count_calls, keys_in
from tests.fixtures.events import CREATED, ref_for
from tests.fixtures.hostile_tiffs import complex_file
from tests.fixtures.paths import REPO_ROOT


def read_npy(s3_client, bucket: str, key: str) -> np.ndarray:
    return np.load(io.BytesIO(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()))


@pytest.fixture
def runtime(make_runtime):
    return make_runtime()


# --- the happy path


@pytest.mark.parametrize("key", ["scene.tif", "a/b c/scène +1 (copy).TIF", "x/100%+réel.tiff"])
def test_written_output_is_the_predictors_result_with_georeferencing(
    runtime, bucket, s3_client, upload_raster, make_raster, tmp_path, key
):
    # GIVEN an uploaded 64 x 64 GeoTIFF under an awkward key
    local = make_raster(64, 64, name="local.tif")
    put = upload_raster(bucket, key, body=local.read_bytes())
    # WHEN processed
    outcome = process_object(ref_for(bucket, key, put), runtime)
    # THEN the .npy beside it is exactly what the predictor makes of the same file
    stem = key.rsplit(".", 1)[0]
    assert (outcome.status, outcome.output_key, outcome.output_bucket) == ("written", f"{stem}.npy", bucket)
    expected = predict_file(runtime.model, local, tmp_path / "expected.npy", runtime.options)
    got = read_npy(s3_client, bucket, f"{stem}.npy")
    np.testing.assert_array_equal(got, np.load(tmp_path / "expected.npy"))
    assert got.shape == (64, 64) and got.dtype == np.float32
    # AND the metadata keeps provenance and georeferencing
    meta = s3_client.head_object(Bucket=bucket, Key=f"{stem}.npy")["Metadata"]
    assert meta["source-etag"] == put["ETag"].strip('"') and meta["source-version-id"] == "null"
    assert meta["model-sha256"] == runtime.model.sha256
    assert (meta["shape"], meta["dtype"], meta["crs"], meta["output"]) == (
        "64,64",
        "float32",
        "EPSG:32633",
        "mask",
    )
    assert tuple(float(v) for v in meta["transform"].split(",")) == expected.transform
    # AND the input is untouched, the counters add up, and no temp file is left
    assert s3_client.head_object(Bucket=bucket, Key=key)["ETag"] == put["ETag"]
    assert keys_in(s3_client, bucket) == {key, f"{stem}.npy"}
    assert outcome.pixels == 64 * 64 and outcome.bytes_in == local.stat().st_size and outcome.bytes_out > 64 * 64
    assert list((tmp_path / "work").iterdir()) == []


def test_versioned_bucket_records_the_version(make_runtime, make_bucket, s3_client, upload_raster):
    runtime = make_runtime()
    bucket = make_bucket(versioned=True)
    put = upload_raster(bucket, "v.tif")
    assert process_object(ref_for(bucket, "v.tif", put), runtime).status == "written"
    meta = s3_client.head_object(Bucket=bucket, Key="v.npy")["Metadata"]
    assert meta["source-version-id"] == put["VersionId"]


def test_event_without_etag_uses_the_current_object(runtime, bucket, s3_client, upload_raster):
    put = upload_raster(bucket, "direct.tif")
    outcome = process_object(ObjectRef(bucket, "direct.tif"), runtime)  # a direct invoke: no etag, no event
    assert outcome.status == "written"
    assert s3_client.head_object(Bucket=bucket, Key="direct.npy")["Metadata"]["source-etag"] == put["ETag"].strip('"')


def test_raw_key_fallback(runtime, bucket, s3_client, upload_raster):
    # GIVEN an object whose '+' the event decoder turned into a space
    upload_raster(bucket, "a+b.tif")
    outcome = process_object(ref_for(bucket, "a b.tif", raw_key="a+b.tif"), runtime)
    assert (outcome.status, outcome.input_key, outcome.output_key) == ("written", "a+b.tif", "a+b.npy")


def test_output_bucket_and_prefix_are_honoured(make_runtime, make_bucket, s3_client, upload_raster):
    src, out = make_bucket(), make_bucket()
    runtime = make_runtime(output_bucket=out, output_prefix="masks/")
    put = upload_raster(src, "in/scene.tif")
    outcome = process_object(ref_for(src, "in/scene.tif", put), runtime)
    assert (outcome.output_bucket, outcome.output_key) == (out, "masks/in/scene.npy")
    assert keys_in(s3_client, out) == {"masks/in/scene.npy"}
    assert keys_in(s3_client, src) == {"in/scene.tif"}
    # AND rejections go to the same place
    upload_raster(src, "in/bad.tif", body=b"\x89PNG\r\n\x1a\n not a tiff")
    assert process_object(ref_for(src, "in/bad.tif"), runtime).status == "rejected"
    assert keys_in(s3_client, out) == {"masks/in/scene.npy", "masks/in/bad.error.json"}


def test_score_output_mode(make_runtime, bucket, s3_client, upload_raster):
    runtime = make_runtime(output_mode="mask-uint8")
    upload_raster(bucket, "u.tif")
    assert process_object(ref_for(bucket, "u.tif"), runtime).status == "written"
    assert read_npy(s3_client, bucket, "u.npy").dtype == np.uint8


# --- idempotency


def test_second_delivery_is_a_duplicate_and_changes_nothing(runtime, bucket, s3_client, upload_raster):
    put = upload_raster(bucket, "dup.tif")
    ref = ref_for(bucket, "dup.tif", put)
    assert process_object(ref, runtime).status == "written"
    before = s3_client.head_object(Bucket=bucket, Key="dup.npy")
    gets = count_calls(runtime.storage.client, "GetObject")
    puts = count_calls(runtime.storage.client, "PutObject")
    # WHEN the same event arrives again
    outcome = process_object(ref, runtime)
    # THEN nothing is downloaded or written
    assert outcome.status == "duplicate" and outcome.output_key == "dup.npy"
    assert gets == [] and puts == []
    after = s3_client.head_object(Bucket=bucket, Key="dup.npy")
    assert (after["LastModified"], after["ETag"]) == (before["LastModified"], before["ETag"])


def test_new_upload_of_the_same_key_is_processed_again(runtime, bucket, s3_client, upload_raster):
    first = upload_raster(bucket, "re.tif", seed=1)
    assert process_object(ref_for(bucket, "re.tif", first), runtime).status == "written"
    second = upload_raster(bucket, "re.tif", seed=2)
    assert process_object(ref_for(bucket, "re.tif", second), runtime).status == "written"
    meta = s3_client.head_object(Bucket=bucket, Key="re.npy")["Metadata"]
    assert meta["source-etag"] == second["ETag"].strip('"')


def test_old_event_after_a_new_upload_is_skipped_as_replaced(runtime, bucket, s3_client, upload_raster):
    # GIVEN the event of a first upload arriving after a second upload of the same key
    first = upload_raster(bucket, "race.tif", seed=1)
    upload_raster(bucket, "race.tif", seed=2)
    outcome = process_object(ref_for(bucket, "race.tif", first), runtime)
    # THEN it writes nothing (the second upload's own event will), and it is not retried
    assert outcome.status == "missing" and "replaced" in outcome.detail
    assert keys_in(s3_client, bucket) == {"race.tif"}


def test_another_model_reprocesses(make_runtime, random_model_card, bucket, upload_raster):
    put = upload_raster(bucket, "m.tif")
    ref = ref_for(bucket, "m.tif", put)
    assert process_object(ref, make_runtime()).status == "written"
    other = random_model_card(seed=7, tile_size=64, tile_overlap=8, name="other", depth=2, start_filts=4)
    assert process_object(ref, make_runtime(model_card=other)).status == "written"


def test_another_output_mode_reprocesses(make_runtime, bucket, upload_raster):
    put = upload_raster(bucket, "o.tif")
    assert process_object(ref_for(bucket, "o.tif", put), make_runtime()).status == "written"
    assert process_object(ref_for(bucket, "o.tif", put), make_runtime(output_mode="score")).status == "written"


# --- every output (OUTPUTS=npy,cog,stac)

ALL_OUTPUTS = ("npy", "cog", "stac")
PRODUCTS = {"npy": "a/s.npy", "cog": "a/s.mask.TIF", "thumbnail": "a/s.thumb.png", "stac": "a/s.stac.json"}


def test_every_output_is_written_beside_the_input_the_item_last(make_runtime, bucket, s3_client, upload_raster):
    # GIVEN a deployment that writes every output
    runtime = make_runtime(outputs=ALL_OUTPUTS)
    put = upload_raster(bucket, "a/s.tif")
    writes = count_calls(runtime.storage.client, "PutObject")
    # WHEN an upload is processed
    outcome = process_object(ref_for(bucket, "a/s.tif", put), runtime)
    # THEN each output is beside it, in order, the STAC Item last, and the .npy is still the outcome's output
    assert (outcome.status, outcome.output_key) == ("written", "a/s.npy")
    assert keys_in(s3_client, bucket) == {"a/s.tif", *PRODUCTS.values()}
    assert [unquote(url.split(f"/{bucket}/", 1)[1].split("?")[0]) for url in writes] == list(PRODUCTS.values())
    # AND every one records the same upload and model, with its media type
    etag = put["ETag"].strip('"')
    types = {}
    for kind, key in PRODUCTS.items():
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert (head["Metadata"]["source-etag"], head["Metadata"]["model-sha256"]) == (etag, runtime.model.sha256)
        types[kind] = head["ContentType"]
    assert types == {
        "npy": "application/octet-stream",
        "cog": "image/tiff; application=geotiff; profile=cloud-optimized",
        "thumbnail": "image/png",
        "stac": "application/geo+json",
    }
    # AND the Item points at the objects as they are in S3 (relative hrefs, their sha256) and at the source
    item = json.loads(s3_client.get_object(Bucket=bucket, Key="a/s.stac.json")["Body"].read())
    for name, key in (("npy", "a/s.npy"), ("mask", "a/s.mask.TIF"), ("thumbnail", "a/s.thumb.png")):
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert item["assets"][name]["href"] == "./" + key.split("/")[-1]
        assert item["assets"][name]["file:checksum"] == "1220" + hashlib.sha256(body).hexdigest()
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == ["./s.tif"]
    assert item["id"] == "s"


def test_the_item_links_a_source_in_another_bucket_by_its_uri(make_runtime, make_bucket, s3_client, upload_raster):
    runtime = make_runtime(outputs=("cog", "stac"), output_bucket=(out := make_bucket()), output_prefix="m/")
    source = make_bucket()
    put = upload_raster(source, "s.tif")
    assert process_object(ref_for(source, "s.tif", put), runtime).output_key == "m/s.mask.TIF"
    assert keys_in(s3_client, out) == {"m/s.mask.TIF", "m/s.thumb.png", "m/s.stac.json"}
    item = json.loads(s3_client.get_object(Bucket=out, Key="m/s.stac.json")["Body"].read())
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == [f"s3://{source}/s.tif"]
    assert "npy" not in item["assets"]


def test_every_output_of_a_second_delivery_is_a_duplicate(make_runtime, bucket, upload_raster):
    runtime = make_runtime(outputs=ALL_OUTPUTS)
    ref = ref_for(bucket, "a/s.tif", upload_raster(bucket, "a/s.tif"))
    assert process_object(ref, runtime).status == "written"
    writes = count_calls(runtime.storage.client, "PutObject")
    assert process_object(ref, runtime).status == "duplicate"
    assert writes == []


def test_a_crash_between_two_outputs_redoes_them_all_for_one_version(
    make_runtime, bucket, s3_client, upload_raster, inject_s3_fault
):
    # GIVEN a first upload fully processed, then a second upload whose job fails writing the COG
    runtime = make_runtime(outputs=ALL_OUTPUTS)
    first = upload_raster(bucket, "a/s.tif", seed=1)
    assert process_object(ref_for(bucket, "a/s.tif", first), runtime).status == "written"
    second = upload_raster(bucket, "a/s.tif", seed=2)
    ref = ref_for(bucket, "a/s.tif", second)
    inject_s3_fault(runtime.storage.client, "PutObject", times=1, key_contains="s.mask.TIF")
    with pytest.raises(TransientError):
        process_object(ref, runtime)
    # (the .npy is the second upload's, the rest still the first's: the Item, written last, still describes
    # the first version's files)
    etag = {k: s3_client.head_object(Bucket=bucket, Key=v)["Metadata"]["source-etag"] for k, v in PRODUCTS.items()}
    assert etag["npy"] == second["ETag"].strip('"') and etag["stac"] == first["ETag"].strip('"')
    # WHEN the event is redelivered THEN it is no duplicate: every output is written again, all of one version
    assert process_object(ref, runtime).status == "written"
    for key in PRODUCTS.values():
        meta = s3_client.head_object(Bucket=bucket, Key=key)["Metadata"]
        assert meta["source-etag"] == second["ETag"].strip('"'), key


def test_an_output_of_another_input_with_the_same_stem_is_not_replaced(make_runtime, bucket, s3_client, upload_raster):
    runtime = make_runtime(outputs=ALL_OUTPUTS)
    assert process_object(ref_for(bucket, "a/s.tif", upload_raster(bucket, "a/s.tif")), runtime).status == "written"
    before = s3_client.head_object(Bucket=bucket, Key="a/s.mask.TIF")["ETag"]
    outcome = process_object(ref_for(bucket, "a/s.TIFF", upload_raster(bucket, "a/s.TIFF")), runtime)
    assert outcome.status == "rejected" and "another input" in outcome.detail
    assert s3_client.head_object(Bucket=bucket, Key="a/s.mask.TIF")["ETag"] == before


def test_a_rejected_input_writes_its_marker_and_no_output(make_runtime, bucket, s3_client, upload_raster):
    runtime = make_runtime(outputs=ALL_OUTPUTS)
    upload_raster(bucket, "a/s.tif", body=b"junk")
    assert process_object(ref_for(bucket, "a/s.tif"), runtime).status == "rejected"
    assert keys_in(s3_client, bucket) == {"a/s.tif", "a/s.error.json"}


# --- rejections


@pytest.mark.parametrize(
    ("body_kind", "error"),
    [
        ("png", "RasterReadError"),
        ("three-bands", "RasterBandsError"),
        ("empty", "RasterReadError"),
        ("complex", "RasterReadError"),
    ],
)
def test_bad_raster_writes_an_error_marker_and_no_output(
    runtime, bucket, s3_client, upload_raster, make_raster, tmp_path, body_kind, error
):
    body = {
        "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
        "three-bands": make_raster(64, 64, bands=3, name="rgb.tif").read_bytes(),
        "empty": b"",
        "complex": complex_file(tmp_path / "slc.tif").read_bytes(),
    }[body_kind]
    put = upload_raster(bucket, "dir/bad.tif", body=body)
    outcome = process_object(ref_for(bucket, "dir/bad.tif", put), runtime)
    assert (outcome.status, outcome.error_type, outcome.output_key) == (
        "rejected",
        error,
        "dir/bad.error.json",
    )
    assert keys_in(s3_client, bucket) == {"dir/bad.tif", "dir/bad.error.json"}
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key="dir/bad.error.json")["Body"].read())
    assert doc["error"] == error and doc["key"] == "dir/bad.tif" and doc["bucket"] == bucket
    assert doc["etag"] == put["ETag"].strip('"') and doc["model_sha256"] == runtime.model.sha256
    assert doc["time"].endswith("Z") and doc["function_version"].startswith("rasterfn ")
    # The message names the object, not our temp file
    assert "rasterfn-in-" not in doc["message"]
    assert list((tmp_path / "work").iterdir()) == []


def test_rejected_object_is_not_downloaded_again(runtime, bucket, upload_raster):
    put = upload_raster(bucket, "bad.tif", body=b"GIF89a nope")
    ref = ref_for(bucket, "bad.tif", put)
    assert process_object(ref, runtime).status == "rejected"
    gets = count_calls(runtime.storage.client, "GetObject")
    outcome = process_object(ref, runtime)
    assert outcome.status == "duplicate" and "already rejected" in outcome.detail
    assert gets == []


def test_too_large_object_is_rejected_without_download(make_runtime, bucket, s3_client, upload_raster):
    runtime = make_runtime(max_input_bytes=1000)
    put = upload_raster(bucket, "big.tif")
    gets = count_calls(runtime.storage.client, "GetObject")
    outcome = process_object(ref_for(bucket, "big.tif", put), runtime)
    assert (outcome.status, outcome.error_type) == ("rejected", "RasterTooLargeError")
    assert "MAX_INPUT_BYTES" in outcome.detail
    assert gets == []
    assert keys_in(s3_client, bucket) == {"big.tif", "big.error.json"}


def test_too_many_pixels_is_rejected_from_the_header(make_runtime, bucket, upload_raster):
    runtime = make_runtime(max_pixels=1000)
    outcome = process_object(ref_for(bucket, "wide.tif", upload_raster(bucket, "wide.tif")), runtime)
    assert (outcome.status, outcome.error_type) == ("rejected", "RasterTooLargeError")


def test_fixed_reupload_removes_the_stale_error_marker(runtime, bucket, s3_client, upload_raster):
    bad = upload_raster(bucket, "fix.tif", body=b"not a raster")
    assert process_object(ref_for(bucket, "fix.tif", bad), runtime).status == "rejected"
    good = upload_raster(bucket, "fix.tif")
    assert process_object(ref_for(bucket, "fix.tif", good), runtime).status == "written"
    assert keys_in(s3_client, bucket) == {"fix.tif", "fix.npy"}


def test_marker_left_by_a_failed_cleanup_is_removed_on_redelivery(
    runtime, bucket, s3_client, upload_raster, inject_s3_fault
):
    # GIVEN a rejected upload, fixed by a re-upload whose marker cleanup is throttled after the .npy is written
    upload_raster(bucket, "c.tif", body=b"broken")
    assert process_object(ref_for(bucket, "c.tif"), runtime).status == "rejected"
    good = upload_raster(bucket, "c.tif")
    inject_s3_fault(runtime.storage.client, "DeleteObject", times=1)
    with pytest.raises(TransientError):
        process_object(ref_for(bucket, "c.tif", good), runtime)
    assert keys_in(s3_client, bucket) == {"c.tif", "c.npy", "c.error.json"}
    # WHEN the event is redelivered THEN it is a duplicate, and the stale marker goes
    assert process_object(ref_for(bucket, "c.tif", good), runtime).status == "duplicate"
    assert keys_in(s3_client, bucket) == {"c.tif", "c.npy"}


def test_a_users_own_error_json_is_never_deleted(runtime, bucket, s3_client, upload_raster):
    s3_client.put_object(Bucket=bucket, Key="mine.error.json", Body=b"{}")  # not written by rasterfn
    upload_raster(bucket, "mine.tif")
    assert process_object(ref_for(bucket, "mine.tif"), runtime).status == "written"
    assert s3_client.get_object(Bucket=bucket, Key="mine.error.json")["Body"].read() == b"{}"


# --- skipped and missing


@pytest.mark.parametrize(
    "ref",
    [
        ObjectRef("b", "x.npy", event_name=CREATED),
        ObjectRef("b", "x.error.json", event_name=CREATED),
        ObjectRef("b", "notes.txt", event_name=CREATED),
        ObjectRef("b", "x.tif", event_name="ObjectRemoved:Delete"),
    ],
)
def test_not_ours_to_process_is_skipped_without_touching_s3(runtime, ref):
    heads = count_calls(runtime.storage.client, "HeadObject")
    outcome = process_object(ref, runtime)
    assert outcome.status == "skipped" and outcome.detail
    assert heads == []


def test_vanished_object_is_missing(runtime, bucket, s3_client):
    outcome = process_object(ref_for(bucket, "gone.tif"), runtime)
    assert outcome.status == "missing"
    assert keys_in(s3_client, bucket) == set()


# --- transient failures


def test_throttled_output_upload_raises_transient_and_a_retry_writes_it(
    runtime, bucket, s3_client, upload_raster, inject_s3_fault, tmp_path
):
    put = upload_raster(bucket, "t.tif")
    ref = ref_for(bucket, "t.tif", put)
    fault = inject_s3_fault(runtime.storage.client, "PutObject", times=1, key_contains="t.npy")
    # WHEN the first PutObject of the output is throttled THEN the event fails for retry, nothing written
    with pytest.raises(TransientError, match="SlowDown"):
        process_object(ref, runtime)
    assert fault["failed"] == 1
    assert keys_in(s3_client, bucket) == {"t.tif"}
    assert list((tmp_path / "work").iterdir()) == []
    # AND the redelivery writes it
    assert process_object(ref, runtime).status == "written"
    assert keys_in(s3_client, bucket) == {"t.tif", "t.npy"}


def test_throttled_error_marker_raises_transient(runtime, bucket, s3_client, upload_raster, inject_s3_fault):
    upload_raster(bucket, "b.tif", body=b"junk")
    inject_s3_fault(runtime.storage.client, "PutObject", times=1, status=500, code="InternalError")
    with pytest.raises(TransientError):
        process_object(ref_for(bucket, "b.tif"), runtime)
    assert process_object(ref_for(bucket, "b.tif"), runtime).status == "rejected"


# --- the real thing


DEMO_SCENE = REPO_ROOT / "data" / "test-1.tif"


@pytest.mark.slow
@pytest.mark.skipif(
    not (DEFAULT_CARD_PATH.exists() and DEMO_SCENE.exists()), reason="needs the demo weights and data/test-1.tif"
)
def test_demo_model_on_the_demo_scene(make_runtime, bucket, s3_client, upload_raster, tmp_path):
    # GIVEN the shipped demo model and the old service's test scene
    runtime = make_runtime(model_card=DEFAULT_CARD_PATH)
    put = upload_raster(bucket, "scenes/test-1.tif", body=DEMO_SCENE.read_bytes())
    # WHEN processed THEN the .npy equals the local prediction, with the scene's georeferencing
    outcome = process_object(ref_for(bucket, "scenes/test-1.tif", put), runtime)
    assert outcome.status == "written" and outcome.pixels == 512 * 512
    expected = predict_file(runtime.model, DEMO_SCENE, tmp_path / "local.npy", runtime.options)
    np.testing.assert_array_equal(read_npy(s3_client, bucket, "scenes/test-1.npy"), np.load(tmp_path / "local.npy"))
    meta = s3_client.head_object(Bucket=bucket, Key="scenes/test-1.npy")["Metadata"]
    info = ObjectInfo(bucket, "scenes/test-1.tif", DEMO_SCENE.stat().st_size, put["ETag"].strip('"'))
    assert meta == output_metadata(info, runtime.model.sha256, expected)
    assert meta["shape"] == "512,512"
