"""Registers the fixture modules in tests/fixtures/ (one per kind of thing they make) for every test."""

import os
from pathlib import Path

import pytest

IMAGE_TESTS = Path(__file__).parent / "image"

pytest_plugins = [
    # rasters first: models builds on it.
    "tests.fixtures.rasters",
    "tests.fixtures.models",
    "tests.fixtures.events",
    "tests.fixtures.aws",
    "tests.fixtures.runtimes",
]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # tests/image runs a built image: `make image-test` builds it and names it in RASTERFN_IMAGE.
    if collection_path == IMAGE_TESTS and not os.environ.get("RASTERFN_IMAGE"):
        return True
    return None
