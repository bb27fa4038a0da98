"""Fixtures of the fan-out tests: small parts (multi-shard jobs on small test rasters), a corrupt raster, the
function's queue in order, and a runtime that shards everything."""

from __future__ import annotations

from collections import deque

import moto.s3.models
import pytest

import handler.fanout.coordinator as coordinator
from handler.errors import TransientError
from handler.fanout import ShardMessage, parse_shard_message, run_shard


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of any size (moto and the planner): multi-shard jobs on small test rasters."""
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1)
    monkeypatch.setattr(coordinator, "MIN_PART_BYTES", 1)


@pytest.fixture
def corrupt_raster_body(make_raster) -> bytes:
    """A tiled, compressed 300 x 70 raster whose later blocks are overwritten: the header still reads, and the
    coordinator plans a job whose last shards cannot read their rows."""
    data = bytearray(make_raster(300, 70, tiled=True, blockxsize=64, blockysize=64, compress="deflate").read_bytes())
    start, stop = len(data) // 2, len(data) * 9 // 10
    data[start:stop] = b"\xff" * (stop - start)
    return bytes(data)


class Queue:
    """The function's queue, in order, with what each delivery answered."""

    def __init__(self) -> None:
        self.messages: deque[str] = deque()
        self.log: list[dict] = []

    def send(self, message: ShardMessage) -> None:
        self.messages.append(message.to_json())

    def drain(self, runtime, *, twice: bool = False) -> None:
        while self.messages:
            body = self.messages.popleft()
            for _ in range(2 if twice else 1):
                try:
                    self.log.append(run_shard(parse_shard_message(body), runtime, self.send).as_dict())
                except TransientError as exc:  # the queue delivers it again after the visibility timeout
                    self.log.append({"status": "retried", "error": str(exc)})
                    self.messages.append(body)
                    break


@pytest.fixture
def queue(monkeypatch) -> Queue:
    q = Queue()
    monkeypatch.setattr(coordinator, "sender_from_settings", lambda settings, queues=None: q.send)
    return q


@pytest.fixture
def fan_runtime(make_runtime):
    def make(**settings):
        return make_runtime(fanout_threshold_seconds=0, fanout_max_shards=3, **settings)

    return make
