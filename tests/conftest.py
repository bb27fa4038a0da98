"""Registers the fixture modules in tests/fixtures/ (one per kind of thing they make) for every test."""

pytest_plugins = [
    # rasters first: models builds on it.
    "tests.fixtures.rasters",
    "tests.fixtures.models",
    "tests.fixtures.events",
    "tests.fixtures.aws",
    "tests.fixtures.runtimes",
]
