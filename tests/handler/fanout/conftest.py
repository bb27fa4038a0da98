"""Fixtures of the fan-out tests: small parts (multi-shard jobs on small test rasters), a corrupt raster."""

from __future__ import annotations

import moto.s3.models
import pytest

import handler.fanout.coordinator as coordinator


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
