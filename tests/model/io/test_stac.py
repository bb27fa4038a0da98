"""The STAC Item: valid offline against the core schema and every extension it declares; footprint in WGS84,
the grid exactly, the mask's classes and nodata, checksums as multihashes, the model as MLM fields."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import jsonschema
import pytest
from rasterio.warp import transform as transform_points

from model.io.stac import EXTENSIONS, AssetFacts, ItemFacts, build_item, multihash
from tests.fixtures.stac_schemas import MissingSchemaError, require_schemas, schema_path, validate_item

UTM_TRANSFORM = (10.0, 0.0, 399_960.0, 0.0, -10.0, 5_300_040.0)
BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
# A Lambert azimuthal equal-area CRS centred on an arbitrary point: no EPSG code.
CUSTOM_WKT = (
    'PROJCS["custom LAEA",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Lambert_Azimuthal_Equal_Area"],'
    'PARAMETER["latitude_of_center",47.3],PARAMETER["longitude_of_center",13.1],PARAMETER["false_easting",0],'
    'PARAMETER["false_northing",0],UNIT["metre",1]]'
)


def facts(**changes) -> ItemFacts:
    base = ItemFacts(
        item_id="scene-1",
        shape=(1300, 1100),
        crs="EPSG:32633",
        transform=UTM_TRANSFORM,
        datetime=datetime(2026, 12, 7, 6, 0, tzinfo=UTC),
        source_href="s3://bucket/in/scene-1.tif",
        assets={
            "mask": AssetFacts(
                "scene-1.mask.tif",
                "image/tiff; application=geotiff; profile=cloud-optimized",
                ("data",),
                "tree canopy mask",
                size=1234,
                sha256="ab" * 32,
                kind="mask",
            ),
            "npy": AssetFacts("scene-1.npy", "application/x-npy", ("data",), size=99, sha256="CD" * 32),
            "thumbnail": AssetFacts("scene-1.png", "image/png", ("thumbnail",)),
        },
        model_name="rasterfn-demo-canopy",
        model_version="1.0.0",
        model_sha256="bd" * 32,
        class_name="tree canopy",
        threshold=0.5,
        bands=BANDS,
        tile_size=512,
        software_version="0.1.0",
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(autouse=True)
def _schemas():
    require_schemas()


def test_utm_item_is_valid_and_its_footprint_covers_the_raster():
    item = build_item(facts())
    validate_item(item)
    json.dumps(item, allow_nan=False)  # JSON-ready
    assert item["stac_version"] == "1.1.0" and item["id"] == "scene-1"
    assert item["properties"]["datetime"] == "2026-12-07T06:00:00Z"
    # The corners of the raster, reprojected: inside the bbox, and the polygon is densified along each edge.
    xs, ys = [399_960.0, 399_960.0 + 11_000.0], [5_300_040.0, 5_300_040.0 - 13_000.0]
    lons, lats = transform_points("EPSG:32633", "EPSG:4326", [xs[0], xs[1], xs[0], xs[1]], [ys[0], ys[0], ys[1], ys[1]])
    west, south, east, north = item["bbox"]
    assert west <= min(lons) < max(lons) <= east and south <= min(lats) < max(lats) <= north
    assert west == pytest.approx(min(lons), abs=1e-6) and north == pytest.approx(max(lats), abs=1e-6)
    ring = item["geometry"]["coordinates"][0]
    assert item["geometry"]["type"] == "Polygon" and len(ring) > 5 and ring[0] == ring[-1]


def test_projection_fields_are_the_grid_exactly():
    properties = build_item(facts())["properties"]
    assert properties["proj:code"] == "EPSG:32633"
    assert properties["proj:shape"] == [1300, 1100]
    assert properties["proj:transform"] == list(UTM_TRANSFORM)


def test_geographic_crs_passes_through():
    transform = (0.0001, 0.0, 12.0, 0.0, -0.0001, 46.0)
    item = build_item(facts(crs="EPSG:4326", transform=transform, shape=(700, 600)))
    validate_item(item)
    assert item["bbox"] == pytest.approx([12.0, 46.0 - 0.07, 12.06, 46.0])
    assert item["properties"]["proj:code"] == "EPSG:4326"


def test_a_footprint_across_the_antimeridian_is_cut_and_its_bbox_wraps():
    # UTM zone 60 at 63 N, 200 km from the central meridian (177 E) eastwards: about 177 E to 179 W.
    item = build_item(
        facts(crs="EPSG:32660", shape=(20_000, 20_000), transform=(10.0, 0.0, 500_000.0, 0.0, -10.0, 7_100_000.0))
    )
    validate_item(item)
    assert item["geometry"]["type"] == "MultiPolygon"
    west, south, east, north = item["bbox"]
    assert 176.9 < west < 177.1 and -179.5 < east < -178 and west > east and 62 < south < north < 64.1


def test_no_crs_gives_null_geometry_and_no_bbox():
    item = build_item(facts(crs=None, transform=(1.0, 0.0, 0.0, 0.0, -1.0, 1300.0)))
    validate_item(item)
    assert item["geometry"] is None and "bbox" not in item
    assert item["properties"]["proj:code"] is None


def test_a_crs_without_epsg_code_is_given_as_wkt2():
    item = build_item(facts(crs=CUSTOM_WKT, transform=(10.0, 0.0, -5000.0, 0.0, -10.0, 5000.0)))
    validate_item(item)
    assert "proj:code" not in item["properties"]
    assert item["properties"]["proj:wkt2"].startswith("PROJCRS[")
    west, south, east, north = item["bbox"]
    assert west < 13.1 < east and south < 47.3 < north  # the CRS's centre lies inside the raster


def test_mask_asset_declares_classes_nodata_and_checksums():
    item = build_item(facts())
    mask = item["assets"]["mask"]
    assert {c["value"]: c["name"] for c in mask["classification:classes"]} == {
        0: "background",
        1: "tree-canopy",
        255: "nodata",
    }
    assert mask["raster:bands"] == [{"data_type": "uint8", "nodata": 255, "sampling": "area"}]
    assert mask["file:size"] == 1234 and mask["file:checksum"] == "1220" + "ab" * 32
    assert item["assets"]["npy"]["file:checksum"] == "1220" + "cd" * 32  # lower case, as multihash hex is
    assert "file:size" not in item["assets"]["thumbnail"] and item["assets"]["thumbnail"]["roles"] == ["thumbnail"]


def test_score_asset_declares_its_scale_and_nodata():
    score = AssetFacts("s.tif", "image/tiff; application=geotiff", ("data",), kind="score")
    item = build_item(facts(assets={"score": score}))
    validate_item(item)
    (band,) = item["assets"]["score"]["raster:bands"]
    assert band["data_type"] == "uint8" and band["nodata"] == 255
    assert band["scale"] == pytest.approx(1 / 254) and band["offset"] == 0.0


def test_model_is_described_with_mlm_fields_and_a_model_asset():
    item = build_item(facts(model_href="s3://models/demo.pt"))
    validate_item(item)
    properties = item["properties"]
    assert properties["mlm:name"] == "rasterfn-demo-canopy"
    assert properties["mlm:architecture"] == "U-Net"
    assert properties["mlm:tasks"] == ["semantic-segmentation"]
    (model_input,) = properties["mlm:input"]
    assert model_input["bands"] == list(BANDS) and model_input["input"]["shape"] == [-1, 10, 512, 512]
    (output,) = properties["mlm:output"]
    assert [c["value"] for c in output["classification:classes"]] == [0, 1]
    model = item["assets"]["model"]
    assert model["href"] == "s3://models/demo.pt" and model["roles"] == ["mlm:model"]
    assert model["file:checksum"] == "1220" + "bd" * 32 and "1.0.0" in model["title"]
    assert properties["processing:level"] == "L4" and properties["processing:software"] == {"rasterfn": "0.1.0"}


def test_a_model_asset_given_by_the_caller_replaces_the_default_one():
    given = AssetFacts("s3://models/demo.xml", "application/xml", ("mlm:model",))
    item = build_item(facts(assets={"weights": given}))
    assert "model" not in item["assets"] and item["assets"]["weights"]["href"] == "s3://models/demo.xml"


def test_source_is_a_derived_from_link():
    links = build_item(facts())["links"]
    assert [(link["rel"], link["href"]) for link in links] == [("derived_from", "s3://bucket/in/scene-1.tif")]


def test_a_naive_datetime_is_taken_as_utc():
    item = build_item(facts(datetime=datetime(2026, 1, 2, 3, 4, 5)))
    assert item["properties"]["datetime"] == "2026-01-02T03:04:05Z"


def test_every_declared_extension_has_an_offline_schema():
    assert set(build_item(facts())["stac_extensions"]) == set(EXTENSIONS)
    for url in EXTENSIONS:
        assert schema_path(url).is_file(), url


def test_bad_facts_are_refused():
    with pytest.raises(ValueError, match="sha256"):
        multihash("abc")
    with pytest.raises(ValueError, match="kind"):
        build_item(facts(assets={"x": AssetFacts("x", "image/png", ("data",), kind="probability")}))


def test_the_validator_fails_on_a_violation_and_on_a_schema_it_does_not_have():
    item = build_item(facts())
    broken = json.loads(json.dumps(item))
    broken["properties"]["processing:level"] = 4
    with pytest.raises(jsonschema.ValidationError, match="processing"):
        validate_item(broken)
    broken = json.loads(json.dumps(item))
    del broken["properties"]["mlm:architecture"]
    with pytest.raises(jsonschema.ValidationError, match="mlm:architecture"):
        validate_item(broken)
    unknown = {**item, "stac_extensions": [*item["stac_extensions"], "https://example.com/v9/schema.json"]}
    with pytest.raises(MissingSchemaError, match=r"example\.com"):
        validate_item(unknown)
