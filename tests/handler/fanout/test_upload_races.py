"""handler/fanout/coordinator.py against S3's NoSuchUpload: the upload completed (or aborted) by another shard.

moto answers a part or a completion for a finished upload with a 500, not S3's NoSuchUpload, so S3's answer is
put in its place here, on the one call under test; everything else is moto's real S3.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from botocore.exceptions import ClientError

from handler.fanout import parse_shard_message, run_shard
from handler.fanout.jobs import JobStore
from handler.objects import ObjectRef
from handler.outcome import OutcomeStatus
from handler.process import process_object
from model.options import PredictOptions
from model.predictor.predict import predict_file

KEY = "scenes/big.tif"


class NoSuchUpload:
    """``client`` whose ``method`` answers as S3 does once the upload is gone."""

    def __init__(self, client: Any, method: str) -> None:
        self.client, self.method, self.calls = client, method, 0

    def __getattr__(self, name: str) -> Any:
        if name != self.method:
            return getattr(self.client, name)

        def gone(**kwargs: Any) -> Any:
            self.calls += 1
            error = {"Error": {"Code": "NoSuchUpload", "Message": "The specified upload does not exist."}}
            raise ClientError(error, name)

        return gone


@pytest.fixture
def job(small_parts, make_runtime, make_bucket, s3_client, make_raster, monkeypatch, tmp_path):
    """A fanned-out upload with its stats phase done: ``(runtime, bucket, predict messages, expected .npy)``."""
    import handler.fanout.coordinator as coordinator

    sent: list[str] = []
    monkeypatch.setattr(
        coordinator, "sender_from_settings", lambda settings, queues=None: lambda m: sent.append(m.to_json())
    )
    runtime = make_runtime(fanout_threshold_seconds=0, fanout_max_shards=3)
    bucket = make_bucket()
    src = make_raster(300, 70)
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=src.read_bytes())
    assert process_object(ObjectRef(bucket, KEY), runtime).status is OutcomeStatus.FANNED_OUT
    for body in list(sent):
        run_shard(parse_shard_message(body), runtime)
    predict = [parse_shard_message(b) for b in sent if '"predict"' in b][:3]
    predict_file(runtime.model, src, tmp_path / "expected.npy", PredictOptions())
    return runtime, bucket, predict, (tmp_path / "expected.npy").read_bytes()


def with_client(runtime: Any, client: Any) -> Any:
    return dataclasses.replace(runtime, storage=dataclasses.replace(runtime.storage, client=client))


def test_a_part_for_an_upload_gone_meanwhile_is_dropped_quietly(job):
    runtime, bucket, predict, _ = job
    client = NoSuchUpload(runtime.storage.client, "upload_part")
    summary = run_shard(predict[0], with_client(runtime, client))
    assert client.calls == 1 and summary.status == "job already finished"
    # nothing recorded for that part: no later shard counts it as uploaded
    assert not JobStore(runtime.storage, bucket, predict[0].job).has_part(0)


def test_a_completion_that_another_shard_made_first_is_not_an_error(job, s3_client):
    runtime, bucket, predict, expected = job
    for message in predict[:-1]:
        run_shard(message, runtime)
    # the last part goes up; then its completion finds the upload already completed by a racing duplicate
    client = NoSuchUpload(runtime.storage.client, "complete_multipart_upload")
    summary = run_shard(predict[-1], with_client(runtime, client))
    assert client.calls == 1 and summary.status == "completed by another shard"
    # (the racing duplicate, in the real world: here the real client completes it)
    assert run_shard(predict[-1], runtime).status == "completed"
    assert s3_client.get_object(Bucket=bucket, Key="scenes/big.npy")["Body"].read() == expected
