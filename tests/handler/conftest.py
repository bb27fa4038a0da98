"""Fixtures the service layer's tests share."""

from __future__ import annotations

import pytest


@pytest.fixture
def bucket(make_bucket) -> str:
    """A new, empty bucket on moto."""
    return make_bucket()
