"""handler/fanout/finish.py: a sharded job's COG, quicklook and STAC Item, assembled from the shards' parts."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from rio_cogeo.cogeo import cog_validate

import handler.fanout.coordinator as coordinator
from handler.fanout import parse_shard_message, run_shard
from handler.fanout.jobs import JobStore
from handler.objects import JOB_PREFIX, ObjectRef
from handler.outcome import OutcomeStatus
from handler.process import process_object
from handler.products import make_products
from model.io.cog import MASK_NODATA
from tests.fixtures.aws import keys_in
from tests.fixtures.stac_schemas import validate_item

KEY = "scenes/big.tif"
OUTPUTS = {
    "npy": "scenes/big.npy",
    "cog": "scenes/big.mask.TIF",
    "thumbnail": "scenes/big.thumb.png",
    "stac": "scenes/big.stac.json",
}


def _ref(bucket: str) -> ObjectRef:
    return ObjectRef(bucket, KEY, event_name="ObjectCreated:Put")


def _get(s3_client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _sharded(fan_runtime, queue, make_bucket, s3_client, make_raster, tmp_path, *, twice=False):
    runtime = fan_runtime(outputs=("npy", "cog", "stac"))
    bucket = make_bucket(versioned=True)
    src = make_raster(300, 70, nodata=0, name="big.tif")
    with rasterio.open(src, "r+") as ds:  # a corner of invalid pixels, across two shards' rows
        data = ds.read()
        data[:, 80:130, :20] = 0
        ds.write(data)
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=src.read_bytes())
    assert process_object(_ref(bucket), runtime).status is OutcomeStatus.FANNED_OUT
    assert len(queue.messages) == 3
    queue.drain(runtime, twice=twice)
    return runtime, bucket, src


def test_a_sharded_scene_gets_the_cog_and_item_a_single_invocation_would_write(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path
):
    # GIVEN a scene sharded in three, with invalid pixels, and every output asked for
    runtime, bucket, src = _sharded(fan_runtime, queue, make_bucket, s3_client, make_raster, tmp_path)
    # THEN every output is there, the COG valid with the input's grid, its classes the .npy's, nodata where invalid
    assert {OUTPUTS[k] for k in OUTPUTS} <= keys_in(s3_client, bucket)
    cog = tmp_path / "got.tif"
    cog.write_bytes(_get(s3_client, bucket, OUTPUTS["cog"]))
    valid, errors, _ = cog_validate(str(cog))
    assert valid and not errors, errors
    local = tmp_path / "local"
    local.mkdir()
    single = make_products(runtime.model, src, local, runtime.options, ("npy", "cog", "stac"))
    with rasterio.open(cog) as got, rasterio.open(single.files["cog"]) as expected, rasterio.open(src) as source:
        assert (got.crs, got.transform, got.shape) == (source.crs, source.transform, source.shape)
        classes = got.read(1)
        assert np.array_equal(classes, expected.read(1))  # the single invocation's COG pixels, exactly
        invalid = (source.read_masks() == 0).any(axis=0)  # any band invalid: the pixel is
    npy = np.load(single.files["npy"])
    assert _get(s3_client, bucket, OUTPUTS["npy"]) == single.files["npy"].read_bytes()
    assert np.array_equal(classes == MASK_NODATA, invalid) and invalid.any()
    assert np.array_equal(classes[~invalid], npy[~invalid].astype(np.uint8))
    # AND the Item is valid, names the outputs beside it and the source, and is the last thing written
    item = json.loads(_get(s3_client, bucket, OUTPUTS["stac"]))
    validate_item(item)
    assert item["assets"]["mask"]["href"] == "./big.mask.TIF" and item["assets"]["npy"]["href"] == "./big.npy"
    assert item["assets"]["npy"]["file:size"] == len(_get(s3_client, bucket, OUTPUTS["npy"]))
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == ["./big.tif"]
    # AND each output records the upload; the upload's event again is a duplicate
    etag = s3_client.head_object(Bucket=bucket, Key=KEY)["ETag"].strip('"')
    for key in OUTPUTS.values():
        assert s3_client.head_object(Bucket=bucket, Key=key)["Metadata"]["source-etag"] == etag
    assert process_object(_ref(bucket), runtime).status is OutcomeStatus.DUPLICATE
    assert [entry["status"] for entry in queue.log].count("completed") == 1


def test_every_message_twice_still_gives_one_set_of_outputs(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path
):
    _, bucket, _ = _sharded(fan_runtime, queue, make_bucket, s3_client, make_raster, tmp_path, twice=True)
    versions = s3_client.list_object_versions(Bucket=bucket, Prefix="scenes/").get("Versions", [])
    assert sorted(v["Key"] for v in versions) == sorted([KEY, *OUTPUTS.values()])


def test_a_finisher_that_died_is_finished_by_the_redelivered_shard(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path, monkeypatch
):
    # GIVEN a job whose completing shard dies after the .npy is complete, before the COG is written
    calls = {"n": 0}
    real = coordinator.finish_products

    def dies_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the function's container died")
        return real(*args, **kwargs)

    monkeypatch.setattr(coordinator, "finish_products", dies_once)
    runtime = fan_runtime(outputs=("npy", "cog", "stac"))
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=make_raster(300, 70).read_bytes())
    process_object(_ref(bucket), runtime)
    last = None
    while queue.messages:
        body = queue.messages.popleft()
        try:
            run_shard(parse_shard_message(body), runtime, queue.send)
        except RuntimeError:
            last = body
    assert "scenes/big.npy" in keys_in(s3_client, bucket) and OUTPUTS["cog"] not in keys_in(s3_client, bucket)
    # WHEN its message is delivered again THEN the job is finished: every output written
    queue.messages.append(last)
    queue.drain(runtime)
    assert set(OUTPUTS.values()) <= keys_in(s3_client, bucket)
    store = JobStore.latest(runtime.storage, bucket, bucket, KEY)
    assert store is not None and store.is_done()


def test_the_npy_left_out_is_assembled_as_a_job_object(
    small_parts, queue, fan_runtime, make_bucket, s3_client, make_raster, tmp_path
):
    runtime = fan_runtime(outputs=("cog",))
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=make_raster(300, 70).read_bytes())
    process_object(_ref(bucket), runtime)
    queue.drain(runtime)
    keys = keys_in(s3_client, bucket)
    assert {k for k in keys if not k.startswith(JOB_PREFIX)} == {KEY, OUTPUTS["cog"]}
    cog = tmp_path / "got.tif"
    cog.write_bytes(_get(s3_client, bucket, OUTPUTS["cog"]))
    assert cog_validate(str(cog))[0]
