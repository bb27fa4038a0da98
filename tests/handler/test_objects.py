"""handler/objects.py: the object reference and the pure naming rules for what is written beside it."""

from __future__ import annotations

import pytest

from handler.objects import (
    OWN_OUTPUT_SUFFIXES,
    ObjectRef,
    error_key,
    normalise_suffixes,
    normalize_etag,
    output_key,
    product_keys,
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


@pytest.mark.parametrize(
    ("formats", "mode", "prefix", "expected"),
    [
        (("npy",), "mask", "", {"npy": "a/s.npy"}),
        (("cog",), "mask", "", {"cog": "a/s.mask.TIF"}),
        (("cog",), "mask-uint8", "", {"cog": "a/s.mask.TIF"}),
        (("cog",), "score", "", {"cog": "a/s.score.TIF"}),
        (("npy", "stac"), "mask", "", {"npy": "a/s.npy", "thumbnail": "a/s.thumb.png", "stac": "a/s.stac.json"}),
        (
            ("stac", "cog", "npy"),  # the order given does not matter: the Item is always last
            "score",
            "out/",
            {
                "npy": "out/a/s.npy",
                "cog": "out/a/s.score.TIF",
                "thumbnail": "out/a/s.thumb.png",
                "stac": "out/a/s.stac.json",
            },
        ),
    ],
)
def test_product_keys_name_every_output_in_writing_order(formats, mode, prefix, expected):
    keys = product_keys("a/s.tif", formats, mode, prefix)
    assert keys == expected
    assert list(keys.items()) == list(expected.items())  # in order: the Item, which describes the others, last


def test_product_keys_share_the_npy_name_and_the_stem():
    keys = product_keys("a/b.c/scene.TIFF", ("npy", "cog", "stac"), "mask")
    assert keys["npy"] == output_key("a/b.c/scene.TIFF")
    assert all(key.startswith("a/b.c/scene.") for key in keys.values())


def test_every_output_name_is_an_own_output_suffix():
    for mode in ("mask", "mask-uint8", "score"):
        for key in product_keys("s.tif", ("npy", "cog", "stac"), mode).values():
            assert key.lower().endswith(OWN_OUTPUT_SUFFIXES), key
    assert error_key("s.tif").endswith(OWN_OUTPUT_SUFFIXES)
    assert all(suffix == suffix.lower() for suffix in OWN_OUTPUT_SUFFIXES)
