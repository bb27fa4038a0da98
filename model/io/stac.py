"""The STAC Item that describes a prediction: where it lies, what its assets are, which model made it.

:func:`build_item` is pure: facts in (:class:`ItemFacts`), a JSON-ready STAC 1.1.0 Item dict out, built with
pystac. The footprint is the raster's outline, densified and reprojected to WGS84 (a raster without a CRS has
``geometry: null`` and no bbox, which STAC allows). Extensions: projection (the raster grid exactly), file
(sizes and multihash checksums), classification and raster (the mask's classes and nodata), processing
(level, software) and MLM (the model: name, architecture, task, input bands and tile shape, output classes,
and its weights as the ``mlm:model`` asset). Every extension URL is one whose schema the tests validate
against offline (tests/fixtures/stac_schemas.py).

Example:
    >>> item = build_item(facts)                    # doctest: +SKIP
    >>> json.dumps(item)                            # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pystac
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_geom

from model.io.cog import MASK_NODATA, SCORE_NODATA, SCORE_STEPS

STAC_VERSION = "1.1.0"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
# Classification 1.1.0: what MLM 1.5's own schema references for mlm:output's classes.
CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
# Raster 1.1.0's raster:bands, not STAC 1.1's bands: MLM 1.5 finds the model's input band names there.
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
EXTENSIONS = (PROJECTION, FILE, CLASSIFICATION, RASTER, PROCESSING, MLM)

WGS84 = "EPSG:4326"
EDGE_POINTS = 21  # per footprint edge: a reprojected straight edge bends (UTM to WGS84 near a zone's border)
DEGREE_DIGITS = 7  # about 1 cm
MULTIHASH_SHA256 = "1220"  # multihash prefix: sha2-256 (0x12), 32 bytes (0x20)
GEOTIFF = "image/tiff; application=geotiff"
PROCESSING_LEVEL = "L4"  # model output derived from lower-level data (as in Sentinel-2 L2A -> classes)
MODEL_ARTIFACT = "torch.save"  # the card's weights file: a torch state dict


@dataclass(frozen=True)
class AssetFacts:
    """One file of the result. ``kind`` "mask" or "score" says it is the class (or score) raster."""

    href: str
    media_type: str
    roles: tuple[str, ...]
    title: str | None = None
    size: int | None = None  # -> file:size
    sha256: str | None = None  # hex -> file:checksum, as a multihash
    kind: str | None = None  # "mask" | "score" | None


@dataclass(frozen=True)
class ItemFacts:
    """What the Item says; the raster's grid as :class:`model.io.raster.RasterHeader` holds it.

    ``model_href`` locates the weights (the MLM ``model`` asset); None names them by digest
    (``urn:sha256:<hex>``). An asset of ``assets`` with the ``mlm:model`` role replaces that asset.
    """

    item_id: str
    shape: tuple[int, int]
    crs: str | None
    transform: tuple[float, ...]
    datetime: datetime
    source_href: str  # the input raster: a derived_from link (not an asset: assets are this Item's own data)
    assets: Mapping[str, AssetFacts]  # e.g. "mask" (COG), "npy", "thumbnail"
    model_name: str
    model_version: str
    model_sha256: str
    class_name: str
    threshold: float
    bands: tuple[str, ...]  # the card's input band names, for mlm:input
    tile_size: int
    software_version: str
    model_href: str | None = None


def build_item(facts: ItemFacts) -> dict[str, Any]:
    """A JSON-ready STAC Item dict for ``facts`` (pure)."""
    outline = footprint(facts.shape, facts.crs, facts.transform)
    item = pystac.Item(
        id=facts.item_id,
        geometry=_rounded(outline) if outline else None,
        bbox=bounding_box(outline) if outline else None,
        datetime=_utc(facts.datetime),
        properties={
            **projection_fields(facts.shape, facts.crs, facts.transform),
            "processing:level": PROCESSING_LEVEL,
            "processing:software": {"rasterfn": facts.software_version},
            **mlm_fields(facts),
        },
        stac_extensions=list(EXTENSIONS),
    )
    item.add_link(pystac.Link("derived_from", facts.source_href, media_type=GEOTIFF, title="input raster"))
    for key, asset in facts.assets.items():
        item.add_asset(key, _asset(asset, facts.class_name))
    if not any("mlm:model" in asset.roles for asset in facts.assets.values()):
        item.add_asset("model", _model_asset(facts))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def footprint(shape: tuple[int, int], crs: str | None, transform: tuple[float, ...]) -> dict[str, Any] | None:
    """The raster's outline as a GeoJSON Polygon in WGS84 (lon, lat), edges densified; None without a CRS.

    A footprint across the antimeridian comes back cut into a MultiPolygon (GeoJSON's rule).
    """
    if crs is None:
        return None
    height, width = shape
    grid = Affine(*transform[:6])
    steps = [i / (EDGE_POINTS - 1) for i in range(EDGE_POINTS - 1)]
    # Counter-clockwise in a north-up raster (RFC 7946): top-left, down the left edge, along the bottom, ...
    pixel_ring = (
        [(0.0, s * height) for s in steps]
        + [(s * width, float(height)) for s in steps]
        + [(float(width), (1 - s) * height) for s in steps]
        + [((1 - s) * width, 0.0) for s in steps]
    )
    ring = [grid @ point for point in pixel_ring]
    ring.append(ring[0])
    polygon = {"type": "Polygon", "coordinates": [ring]}
    if CRS.from_user_input(crs) != CRS.from_user_input(WGS84):
        polygon = transform_geom(crs, WGS84, polygon)
    if any(not math.isfinite(v) for v in _points_flat(polygon["coordinates"])):
        raise ValueError("the raster's footprint does not reproject to WGS84 (a CRS beyond its valid area?)")
    return polygon


def bounding_box(geometry: Mapping[str, Any]) -> list[float]:
    """[west, south, east, north] of a GeoJSON geometry's coordinates, rounded outwards (so it still holds the
    rounded geometry). A footprint cut at the antimeridian has west > east (RFC 7946, section 5.2)."""
    points = list(_points(geometry["coordinates"]))
    lons, lats = [p[0] for p in points], [p[1] for p in points]
    west, east = min(lons), max(lons)
    if east - west > 180:  # the two halves of a cut footprint: from the eastern one's west to the western one's east
        west, east = min(lon for lon in lons if lon > 0), max(lon for lon in lons if lon < 0)
    scale = 10**DEGREE_DIGITS
    down, up = (lambda v: math.floor(v * scale) / scale), (lambda v: math.ceil(v * scale) / scale)
    return [down(west), down(min(lats)), up(east), up(max(lats))]


def projection_fields(shape: tuple[int, int], crs: str | None, transform: tuple[float, ...]) -> dict[str, Any]:
    """The projection extension's fields: the code (or WKT2 when the CRS has no EPSG code), shape, transform."""
    fields: dict[str, Any] = {"proj:shape": list(shape), "proj:transform": [float(v) for v in transform[:6]]}
    if crs is None:
        fields["proj:code"] = None  # the extension's way to say: not georeferenced
        return fields
    parsed = CRS.from_user_input(crs)
    epsg = parsed.to_epsg()
    if epsg:
        fields["proj:code"] = f"EPSG:{epsg}"
    else:
        fields["proj:wkt2"] = parsed.to_wkt(version="WKT2_2019")
    return fields


def mask_classes(class_name: str) -> list[dict[str, Any]]:
    """The mask's classes. Classification 1.1.0 has no nodata flag: 255 is a class named "nodata" (its
    ``nodata: true`` is 2.0's field, ignored by 1.1.0) and the asset's raster:bands declares it nodata."""
    return [
        {"value": 0, "name": "background", "description": f"not {class_name}"},
        {"value": 1, "name": _slug(class_name), "description": class_name, "color_hint": "00C800"},
        {"value": MASK_NODATA, "name": "nodata", "description": "invalid input pixel", "nodata": True},
    ]


def mlm_fields(facts: ItemFacts) -> dict[str, Any]:
    """The MLM extension's Item fields: the model, its input (bands, tile) and its output (the class)."""
    tile = facts.tile_size
    return {
        "mlm:name": facts.model_name,
        "mlm:architecture": "U-Net",
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:input": [
            {
                "name": "bands",
                "bands": list(facts.bands),
                "input": {
                    "shape": [-1, len(facts.bands), tile, tile],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "float32",
                },
                "description": "each band divided by its whole-raster 90th percentile (p90)",
            }
        ],
        "mlm:output": [
            {
                "name": facts.class_name,
                "tasks": ["semantic-segmentation"],
                "result": {
                    "shape": [-1, 1, tile, tile],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
                "description": f"score of {facts.class_name}; the mask is score > {facts.threshold:g}",
                "classification:classes": mask_classes(facts.class_name)[:2],
            }
        ],
    }


def multihash(sha256_hex: str) -> str:
    """A hex sha256 digest as the file extension's multihash."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256_hex):
        raise ValueError(f"not a sha256 hex digest: {sha256_hex!r}")
    return MULTIHASH_SHA256 + sha256_hex.lower()


def _asset(facts: AssetFacts, class_name: str) -> pystac.Asset:
    extra: dict[str, Any] = {}
    if facts.size is not None:
        extra["file:size"] = int(facts.size)
    if facts.sha256 is not None:
        extra["file:checksum"] = multihash(facts.sha256)
    if facts.kind == "mask":
        extra["classification:classes"] = mask_classes(class_name)
        extra["raster:bands"] = [{"data_type": "uint8", "nodata": MASK_NODATA, "sampling": "area"}]
    elif facts.kind == "score":
        extra["raster:bands"] = [
            {"data_type": "uint8", "nodata": SCORE_NODATA, "scale": 1 / SCORE_STEPS, "offset": 0.0, "sampling": "area"}
        ]
    elif facts.kind is not None:
        raise ValueError(f"asset kind must be 'mask', 'score' or None, not {facts.kind!r}")
    return pystac.Asset(
        facts.href, title=facts.title, media_type=facts.media_type, roles=list(facts.roles), extra_fields=extra
    )


def _model_asset(facts: ItemFacts) -> pystac.Asset:
    # MLM wants the model's input band names on the model asset (raster:bands' names, see RASTER).
    return pystac.Asset(
        facts.model_href or f"urn:sha256:{facts.model_sha256.lower()}",
        title=f"{facts.model_name} {facts.model_version} weights",
        media_type="application/octet-stream; application=pytorch",
        roles=["mlm:model"],
        extra_fields={
            "mlm:artifact_type": MODEL_ARTIFACT,
            "file:checksum": multihash(facts.model_sha256),
            "raster:bands": [{"name": name} for name in facts.bands],
        },
    )


def _utc(moment: datetime) -> datetime:
    """An aware datetime in UTC; a naive one is taken as UTC already (what our clocks give)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_-]+", "-", name.strip()).strip("-") or "class-1"


def _rounded(geometry: dict[str, Any]) -> dict[str, Any]:
    def walk(value: Any) -> Any:
        if isinstance(value, list | tuple):
            if value and all(isinstance(v, float | int) for v in value):
                return [round(float(v), DEGREE_DIGITS) for v in value]
            return [walk(v) for v in value]
        return value

    return {"type": geometry["type"], "coordinates": walk(geometry["coordinates"])}


def _points(coordinates: Any) -> Any:
    if coordinates and isinstance(coordinates[0], float | int):
        yield coordinates
        return
    for part in coordinates:
        yield from _points(part)


def _points_flat(coordinates: Any) -> Any:
    for point in _points(coordinates):
        yield from point
