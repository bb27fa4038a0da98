"""The object reference every event is turned into, and the pure naming rules for what is written beside it.

Example:
    >>> ref = ObjectRef(bucket="scenes", key="a/b/scene.tif")
    >>> output_key(ref.key), error_key(ref.key), ref.uri
    ('a/b/scene.npy', 'a/b/scene.error.json', 's3://scenes/a/b/scene.tif')
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

OUTPUT_SUFFIX = ".npy"
ERROR_SUFFIX = ".error.json"
# The COG of the mask (or of the scores, OUTPUT_MODE=score). Upper case on purpose: S3's and MinIO's suffix
# filters are case-sensitive, so the notifications for ".tif" inputs never see it, while every GIS tool opens it.
COG_SUFFIXES = {"mask": ".mask.TIF", "mask-uint8": ".mask.TIF", "score": ".score.TIF"}
STAC_SUFFIX = ".stac.json"
THUMBNAIL_SUFFIX = ".thumb.png"
# Anything the function itself writes (compared lower-case): never an input, whatever the notification says.
OWN_OUTPUT_SUFFIXES = tuple(
    dict.fromkeys(
        s.lower() for s in (OUTPUT_SUFFIX, ERROR_SUFFIX, *COG_SUFFIXES.values(), STAC_SUFFIX, THUMBNAIL_SUFFIX)
    )
)
# Fan-out job state (handler/fanout) lives under this prefix of the output bucket; never an input.
JOB_PREFIX = ".rasterfn-jobs/"
# The extensions of the outputs that are no raster: never an input suffix (.tif is both, told apart by the above).
OWN_EXTENSIONS = (".npy", ".json", ".png")


@dataclass(frozen=True)
class ObjectRef:
    """One uploaded object an event points at, with its key already decoded."""

    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    event_name: str | None = None
    # The key exactly as the event carried it, when decoding was ambiguous: tried on a 404 of ``key``.
    raw_key: str | None = None
    source: str = "direct"

    @property
    def uri(self) -> str:
        return s3_uri(self.bucket, self.key)


@dataclass(frozen=True)
class ObjectInfo:
    """What HeadObject says about one object version. ``etag`` is without the quotes S3 puts around it."""

    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    last_modified: datetime | None = None

    @property
    def uri(self) -> str:
        return s3_uri(self.bucket, self.key)


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def normalize_etag(etag: str | None) -> str | None:
    """``'"abc"'`` and ``'abc'`` -> ``'abc'``: events carry ETags bare, HeadObject quoted (pure)."""
    if etag is None:
        return None
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"') or None


def normalise_suffixes(suffixes: Iterable[str]) -> tuple[str, ...]:
    """``["tif", " .TIFF"]`` -> ``(".tif", ".tiff")``: lower case, one dot each, empty entries dropped (pure)."""
    # Without the dot, "tif" would also accept "motif"; an empty entry would accept everything.
    return tuple("." + s.strip().lower().lstrip(".") for s in suffixes if s.strip().strip("."))


def stem_key(key: str) -> str:
    """The key without its last suffix: ``a/b/scene.tif`` -> ``a/b/scene``."""
    head, tail = posixpath.split(key)
    stem, _ = posixpath.splitext(tail)
    return posixpath.join(head, stem) if head else stem


def output_key(key: str, prefix: str = "") -> str:
    """Where the mask of ``key`` goes: its suffix replaced by ``.npy``, under an optional prefix."""
    return prefix + stem_key(key) + OUTPUT_SUFFIX


def product_keys(key: str, formats: Iterable[str], output_mode: str, prefix: str = "") -> dict[str, str]:
    """Every output of ``key`` by kind (``npy``, ``cog``, ``thumbnail``, ``stac``), in the order they are written:
    the STAC Item, which describes the others, last (pure).

    >>> product_keys("a/s.tif", ("npy", "cog", "stac"), "mask")
    {'npy': 'a/s.npy', 'cog': 'a/s.mask.TIF', 'thumbnail': 'a/s.thumb.png', 'stac': 'a/s.stac.json'}
    """
    stem, wanted = prefix + stem_key(key), set(formats)
    keys = {}
    if "npy" in wanted:
        keys["npy"] = stem + OUTPUT_SUFFIX
    if "cog" in wanted:
        keys["cog"] = stem + COG_SUFFIXES[output_mode]
    if "stac" in wanted:
        keys["thumbnail"] = stem + THUMBNAIL_SUFFIX
        keys["stac"] = stem + STAC_SUFFIX
    return keys


def error_key(key: str, prefix: str = "") -> str:
    """Where the error marker of ``key`` goes: ``<stem>.error.json``."""
    return prefix + stem_key(key) + ERROR_SUFFIX
