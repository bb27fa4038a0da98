"""Fixtures of the fan-out tests: small parts, so that multi-shard jobs run on small test rasters."""

from __future__ import annotations

import moto.s3.models
import pytest

import handler.fanout.coordinator as coordinator


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of any size (moto and the planner): multi-shard jobs on small test rasters."""
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1)
    monkeypatch.setattr(coordinator, "MIN_PART_BYTES", 1)
