"""The outputs of one prediction, made on local disk: the ``.npy``, the COG and its quicklook, the STAC Item.

:func:`make_products` runs the predictor once and streams its rows into the ``.npy`` and (for ``cog`` or
``stac``) a Cloud Optimized GeoTIFF; with ``stac`` a PNG quicklook follows. :func:`describe` writes the STAC
Item once the files' names beside the input are known. The event path (:mod:`handler.process`),
``rasterfn predict`` and the HTTP adapter all call these; where the files go is theirs to say.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from handler.objects import ObjectInfo, stem_key
from handler.outputs import PlannedArray
from handler.runtime import PACKAGE_VERSION
from model.card import ModelCard
from model.io.cog import CogWriter
from model.io.quicklook import TrueColourSampler, true_colour_bands, write_quicklook, write_quicklook_of
from model.io.raster import RasterHeader
from model.io.stac import AssetFacts, ItemFacts, build_item
from model.network.engines.base import InferenceModel
from model.options import PredictOptions
from model.predictor.predict import PredictionResult, SinkFactory, predict_file

NPY_MEDIA_TYPE = "application/octet-stream"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
PNG_MEDIA_TYPE = "image/png"
STAC_MEDIA_TYPE = "application/geo+json"
MEDIA_TYPES = {"npy": NPY_MEDIA_TYPE, "cog": COG_MEDIA_TYPE, "thumbnail": PNG_MEDIA_TYPE, "stac": STAC_MEDIA_TYPE}
# Fixed names inside a private work directory: nothing derived from an object key reaches the filesystem.
LOCAL_NAMES = {"npy": "output.npy", "cog": "output.tif", "thumbnail": "thumbnail.png", "stac": "item.json"}
COG_KIND = {"mask": "mask", "mask-uint8": "mask", "score": "score"}
HASH_CHUNK = 4 * 1024**2
DEFAULT_CLASS_NAME = "positive"  # a card without "class_name": the mask's class 1 is what scores above the threshold


@dataclass(frozen=True)
class Products:
    """What :func:`make_products` made: the prediction's summary and the local file of each output kind."""

    result: PredictionResult
    files: Mapping[str, Path] = field(default_factory=dict)  # npy, cog, thumbnail: in the order they are written


def make_products(
    model: InferenceModel,
    src: Path,
    workdir: Path,
    options: PredictOptions,
    formats: Collection[str],
    *,
    interrupt: Callable[[], None] | None = None,
) -> Products:
    """Predict ``src`` once into every file ``formats`` needs, under ``workdir`` with fixed names.

    The ``.npy`` is always made (the old service's contract, and what ``npy`` uploads); ``cog`` and ``stac``
    add the COG, ``stac`` the quicklook (the mask from the COG's overviews, the true-colour pixels picked while
    the statistics pass decodes the input).
    """
    files = {"npy": workdir / LOCAL_NAMES["npy"]}
    sinks, samplers = [], []
    if "cog" in formats or "stac" in formats:
        files["cog"] = workdir / LOCAL_NAMES["cog"]
        sinks.append(cog_sink(files["cog"], model.card, options.output, workdir))
    rgb_bands = true_colour_bands(model.card)

    def sample_true_colour(header: RasterHeader) -> TrueColourSampler:
        dtype = np.dtype(header.dtypes[model.card.bands[0] - 1])  # the bands' type, as pass 1 reads them
        sampler = TrueColourSampler((header.height, header.width), model.card.bands, rgb_bands, dtype)
        samplers.append(sampler)
        return sampler

    observers = [sample_true_colour] if "stac" in formats else []
    result = predict_file(model, src, files["npy"], options, interrupt=interrupt, sinks=sinks, observers=observers)
    if "stac" in formats:
        files["thumbnail"] = workdir / LOCAL_NAMES["thumbnail"]
        if samplers and samplers[0].complete:  # picked while the statistics pass decoded: no second decode
            write_quicklook_of(files["cog"], samplers[0].rgb, files["thumbnail"])
        else:
            write_quicklook(files["cog"], src, rgb_bands, files["thumbnail"])
    return Products(result, files)


def cog_sink(path: Path, card: ModelCard, output_mode: str, tmp_dir: Path) -> SinkFactory:
    """The predictor's sink that writes the COG of the mask (or scores, ``output_mode`` score) at ``path``."""

    def open_cog(header: RasterHeader) -> CogWriter:
        return CogWriter(
            path,
            (header.height, header.width),
            COG_KIND[output_mode],
            header.crs,
            header.transform,
            card.threshold,
            tmp_dir=tmp_dir,
        )

    return open_cog


@dataclass(frozen=True)
class Published:
    """One output as the Item describes it: its href relative to the Item, and the local file it was made from
    (sha256 and size are read from it), or its size alone when there is none (a fan-out's assembled ``.npy``)."""

    kind: str
    href: str
    path: Path | None = None
    size: int | None = None


def describe(
    model: InferenceModel,
    result: PredictionResult | PlannedArray,
    item_id: str,
    published: Collection[Published],
    source_href: str,
    when: datetime,
    dst: Path,
) -> Path:
    """Write the STAC Item of ``published`` outputs (sizes and sha256 from their local files) to ``dst``."""
    card = model.card
    assets = {
        _ASSET_NAMES[p.kind]: AssetFacts(
            href=p.href,
            media_type=MEDIA_TYPES[p.kind],
            roles=_ASSET_ROLES[p.kind],
            title=_ASSET_TITLES[p.kind],
            size=p.path.stat().st_size if p.path is not None else p.size,
            sha256=file_sha256(p.path) if p.path is not None else None,
            kind=COG_KIND[result.output] if p.kind == "cog" else None,
        )
        for p in published
    }
    facts = ItemFacts(
        item_id=item_id,
        shape=result.shape,
        crs=result.crs,
        transform=tuple(result.transform),
        datetime=when,
        source_href=source_href,
        assets=assets,
        model_name=card.name,
        model_version=str(card.extra.get("version", "")),
        model_sha256=model.sha256,
        class_name=str(card.extra.get("class_name", DEFAULT_CLASS_NAME)),
        threshold=card.threshold,
        bands=tuple(card.extra.get("band_names") or (f"band{b}" for b in card.bands)),
        tile_size=card.tile_size,
        software_version=PACKAGE_VERSION,
    )
    dst.write_text(json.dumps(build_item(facts), indent=2) + "\n")
    return dst


_ASSET_NAMES = {"npy": "npy", "cog": "mask", "thumbnail": "thumbnail"}
_ASSET_ROLES = {"npy": ("data",), "cog": ("data",), "thumbnail": ("thumbnail", "overview")}
_ASSET_TITLES = {
    "npy": "Mask as a NumPy array (the old service's output)",
    "cog": "Mask (Cloud Optimized GeoTIFF)",
    "thumbnail": "Quicklook: the mask over true colour",
}


def describe_upload(
    model: InferenceModel,
    result: PredictionResult | PlannedArray,
    source: ObjectInfo,
    output_bucket: str,
    item_key: str,
    published: Collection[Published],
    dst: Path,
) -> Path:
    """:func:`describe` for the outputs of an upload: named by its key's stem, linked to it, dated by it."""
    return describe(
        model,
        result,
        item_id=posixpath.basename(stem_key(source.key)),
        published=published,
        source_href=source_href(source, output_bucket, item_key),
        when=source.last_modified or datetime.now(UTC),
        dst=dst,
    )


def source_href(source: ObjectInfo, output_bucket: str, item_key: str) -> str:
    """The input as the Item links it: relative beside it in the same bucket, else its ``s3://`` URI (pure)."""
    return relative_href(item_key, source.key) if output_bucket == source.bucket else source.uri


def relative_href(from_key: str, to_key: str) -> str:
    """``to_key`` as a relative href from the object ``from_key`` beside it (pure).

    >>> relative_href("a/b/s.stac.json", "a/b/s.mask.TIF"), relative_href("out/a/s.stac.json", "a/s.tif")
    ('./s.mask.TIF', '../../a/s.tif')
    """
    rel = posixpath.relpath(to_key, posixpath.dirname(from_key) or ".")
    return rel if rel.startswith("../") else "./" + rel


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
