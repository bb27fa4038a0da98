"""handler/outputs.py's pure parts: the result's metadata (ASCII, within S3's limit) and the error document."""

from __future__ import annotations

import pytest

from handler.objects import ObjectInfo
from handler.outputs import (
    METADATA_LIMIT_BYTES,
    PlannedArray,
    crs_for_metadata,
    error_document,
    output_metadata,
)
from model.predictor.predict import PredictionResult


def make_result(crs: str | None) -> PredictionResult:
    return PredictionResult(
        out_path=None,  # type: ignore[arg-type]
        shape=(10980, 10980),
        dtype="float32",
        output="mask",
        crs=crs,
        transform=(10.0, 0.0, 399960.0, 0.0, -10.0, 5300040.0),
        tiles=1,
        valid_pixels=1,
        positive_fraction=0.5,
        seconds=1.0,
    )


@pytest.mark.parametrize(
    ("crs", "expected_prefix"),
    [
        ("EPSG:32633", "EPSG:32633"),
        (None, "none"),
        ('LOCAL_CS["x",UNIT["metre",1]]', 'LOCAL_CS["x"'),
        ('PROJCS["' + "x" * 3000 + '"]', "wkt-sha256:"),
        ('PROJCS["Réseau"]', "wkt-sha256:"),
    ],
)
def test_output_metadata_is_ascii_and_fits_s3s_limit(crs, expected_prefix):
    info = ObjectInfo("b", "k.tif", 1, "d41d8cd98f00b204e9800998ecf8427e-12", "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
    meta = output_metadata(info, "ab" * 32, make_result(crs))
    assert meta["crs"].startswith(expected_prefix)
    assert all(k.isascii() and v.isascii() and v.isprintable() for k, v in meta.items())
    assert sum(len(k) + len(v) for k, v in meta.items()) <= METADATA_LIMIT_BYTES
    assert meta["shape"] == "10980,10980" and meta["transform"].startswith("10.0,0.0,399960.0")


def test_crs_hash_is_stable():
    wkt = 'PROJCS["' + "y" * 3000 + '"]'
    assert crs_for_metadata(wkt, 100) == crs_for_metadata(wkt, 100)
    assert crs_for_metadata(wkt, 100) != crs_for_metadata(wkt + " ", 100)


def test_error_document_fields():
    info = ObjectInfo("b", "a/k.tif", 5, "etag", "v1")
    doc = error_document(info, ValueError("bad"), "ab" * 32, "rasterfn 1.0")
    assert set(doc) == {
        "error",
        "message",
        "bucket",
        "key",
        "etag",
        "version_id",
        "size",
        "model_sha256",
        "time",
        "function_version",
    }
    assert (doc["error"], doc["message"], doc["version_id"]) == ("ValueError", "bad", "v1")


def test_a_planned_array_gets_the_metadata_of_a_computed_one():
    # GIVEN a computed result and the same array planned before any pixel (a sharded job)
    info = ObjectInfo("b", "k.tif", 1, "etag", "v1")
    result = make_result("EPSG:32633")
    planned = PlannedArray(result.output, result.shape, result.dtype, result.crs, result.transform)
    # WHEN described THEN the .npy records the same metadata either way
    assert output_metadata(info, "ab" * 32, planned) == output_metadata(info, "ab" * 32, result)
