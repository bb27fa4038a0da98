"""handler/products.py: one prediction into the .npy, the COG, the quicklook and the STAC Item, on local disk."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

import handler.products as products_module
from handler.products import (
    LOCAL_NAMES,
    Published,
    describe,
    file_sha256,
    make_products,
    relative_href,
)
from model.io.cog import MASK_NODATA, SCORE_STEPS, score_of
from model.options import PredictOptions
from model.predictor.predict import predict_file
from tests.fixtures.stac_schemas import validate_item

ALL = ("npy", "cog", "stac")

# Each scene the issue names: a UTM scene with nodata, a geographic one, a non-square odd-sized one.
SCENES = {
    "utm-nodata": dict(height=96, width=96, nodata=0),
    "geographic": dict(height=80, width=64, crs="EPSG:4326", transform=from_origin(12.0, 47.0, 0.0001, 0.0001)),
    "odd": dict(height=77, width=131),
}


def _with_invalid_corner(make_raster, name, **scene):
    path = make_raster(name=name, **scene)
    if scene.get("nodata") is not None:
        with rasterio.open(path, "r+") as ds:
            data = ds.read()
            data[:, :20, :30] = scene["nodata"]  # every band: these pixels are invalid
            ds.write(data)
    return path


@pytest.mark.parametrize("scene", list(SCENES))
def test_every_output_of_a_scene(make_runtime, make_raster, tmp_path, scene):
    # GIVEN a scene (some with invalid pixels) and the model
    runtime = make_runtime()
    src = _with_invalid_corner(make_raster, f"{scene}.tif", **SCENES[scene])
    work = tmp_path / "products"
    work.mkdir()
    # WHEN every output is made
    products = make_products(runtime.model, src, work, runtime.options, ALL)
    # THEN the .npy is exactly what the predictor alone writes
    alone = predict_file(runtime.model, src, tmp_path / "alone.npy", runtime.options)
    assert products.files["npy"].read_bytes() == (tmp_path / "alone.npy").read_bytes()
    npy = np.load(products.files["npy"])
    # AND the COG is valid, on the input's grid exactly, and holds the same classes, nodata where invalid
    cog = products.files["cog"]
    valid, errors, _ = cog_validate(str(cog))
    assert valid and not errors, errors
    with rasterio.open(src) as source, rasterio.open(cog) as out:
        assert out.crs == source.crs and out.transform == source.transform
        assert (out.height, out.width) == (source.height, source.width)
        classes = out.read(1)
        invalid = (source.read_masks() == 0).any(axis=0)  # any band invalid: the pixel is
        assert out.nodata == MASK_NODATA
    assert np.array_equal(classes == MASK_NODATA, invalid)
    assert np.array_equal(classes[~invalid], npy[~invalid].astype(np.uint8))
    assert (scene == "utm-nodata") == bool(invalid.any())
    # AND the quicklook is a PNG
    assert products.files["thumbnail"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert products.result.shape == alone.shape


def test_the_quicklook_takes_its_colours_from_the_statistics_pass(make_runtime, make_raster, tmp_path, monkeypatch):
    # GIVEN a predictor run whose quicklook may not read the input again
    runtime = make_runtime()

    def no_second_read(*args, **kwargs):
        raise AssertionError("the input was decoded again for the quicklook")

    monkeypatch.setattr(products_module, "write_quicklook", no_second_read)
    products = make_products(runtime.model, make_raster(96, 130), tmp_path, runtime.options, ALL)
    # THEN the quicklook is there all the same, a PNG the size of the raster (under 512 wide)
    with rasterio.open(products.files["thumbnail"]) as png:
        assert (png.count, png.height, png.width) == (4, 96, 130)


def test_npy_alone_makes_no_cog(make_runtime, make_raster, tmp_path):
    runtime = make_runtime()
    products = make_products(runtime.model, make_raster(64, 64), tmp_path, runtime.options, ("npy",))
    assert set(products.files) == {"npy"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [LOCAL_NAMES["npy"], "r.tif"]


def test_score_mode_gives_a_cog_of_the_scores(make_runtime, make_raster, tmp_path):
    runtime = make_runtime()
    options = PredictOptions(output="score")
    products = make_products(runtime.model, make_raster(64, 64), tmp_path, options, ("cog",))
    with rasterio.open(products.files["cog"]) as out:
        scores = score_of(out.read(1))
    # scaled to 254 steps of [0, 1]: each within half a step of the .npy's score (clipped to [0, 1])
    expected = np.clip(np.load(products.files["npy"]), 0, 1)
    assert np.abs(scores - expected).max() <= 0.5 / SCORE_STEPS + 1e-6


@pytest.mark.parametrize("scene", list(SCENES))
def test_the_item_is_valid_and_describes_the_files(make_runtime, make_raster, tmp_path, scene):
    # GIVEN every output of a scene, published beside each other
    runtime = make_runtime()
    src = _with_invalid_corner(make_raster, f"{scene}.tif", **SCENES[scene])
    products = make_products(runtime.model, src, tmp_path, runtime.options, ALL)
    published = [
        Published("npy", "./s.npy", products.files["npy"]),
        Published("cog", "./s.mask.TIF", products.files["cog"]),
        Published("thumbnail", "./s.thumb.png", products.files["thumbnail"]),
    ]
    when = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    # WHEN the Item is written
    path = describe(runtime.model, products.result, "s", published, "./s.tif", when, tmp_path / "i.json")
    item = json.loads(path.read_text())
    # THEN it is valid against STAC's core schema and every extension it declares, offline
    validate_item(item)
    # AND it names the files with their sizes and sha256, the source, and the model
    assets = item["assets"]
    assert {name: a["href"] for name, a in assets.items() if name != "model"} == {
        "npy": "./s.npy",
        "mask": "./s.mask.TIF",
        "thumbnail": "./s.thumb.png",
    }
    for name, kind in (("npy", "npy"), ("mask", "cog"), ("thumbnail", "thumbnail")):
        assert assets[name]["file:size"] == products.files[kind].stat().st_size
        assert assets[name]["file:checksum"] == "1220" + file_sha256(products.files[kind])
    assert "thumbnail" in assets["thumbnail"]["roles"]
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == ["./s.tif"]
    assert item["properties"]["mlm:name"] == runtime.model.card.name
    assert item["properties"]["processing:level"] == "L4"
    assert item["properties"]["datetime"].startswith("2026-12-07T06:00:00")
    # AND the projection fields are the input's grid
    with rasterio.open(src) as source:
        assert item["properties"]["proj:shape"] == [source.height, source.width]
        assert item["properties"]["proj:transform"] == list(source.transform)[:6]
        assert CRS.from_user_input(item["properties"]["proj:code"]) == source.crs


def test_relative_hrefs():
    assert relative_href("a/b/s.stac.json", "a/b/s.npy") == "./s.npy"
    assert relative_href("s.stac.json", "s.mask.TIF") == "./s.mask.TIF"
    assert relative_href("out/a/s.stac.json", "a/s.tif") == "../../a/s.tif"
