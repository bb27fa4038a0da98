"""handler/objects.py: the object reference and the pure naming rules for what is written beside it."""

from __future__ import annotations

import pytest

from handler.objects import (
    ObjectRef,
    error_key,
    normalise_suffixes,
    normalize_etag,
    output_key,
    s3_uri,
    stem_key,
)


@pytest.mark.parametrize(
    ("key", "stem"),
    [("a/b/scene.tif", "a/b/scene"), ("scene.TIFF", "scene"), ("a.b/c", "a.b/c"), ("x.tar.gz", "x.tar")],
)
def test_the_stem_drops_only_the_last_suffix_of_the_name(key, stem):
    assert stem_key(key) == stem


def test_outputs_are_named_after_the_stem_under_the_prefix():
    assert output_key("a/scene.tif") == "a/scene.npy"
    assert error_key("a/scene.tif", "masks/") == "masks/a/scene.error.json"
    # a.tif and a.TIFF name the same output: the metadata says whose it is (handler/outputs.py)
    assert output_key("a.tif") == output_key("a.TIFF")


def test_a_reference_names_its_object_as_a_uri():
    assert ObjectRef("scenes", "a/b.tif").uri == s3_uri("scenes", "a/b.tif") == "s3://scenes/a/b.tif"


@pytest.mark.parametrize(("raw", "expected"), [('"abc"', "abc"), ("abc", "abc"), ('W/"abc"', "abc"), (None, None)])
def test_normalize_etag(raw, expected):
    assert normalize_etag(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(["tif", " .TIFF "], (".tif", ".tiff")), (["", ".", "jp2"], (".jp2",)), ([], ())],
)
def test_normalise_suffixes(raw, expected):
    assert normalise_suffixes(raw) == expected
