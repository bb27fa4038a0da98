"""The result written beside the input: where it goes, what it records, when it is ours, and the error marker.

A ``<stem>.npy`` (or ``<stem>.error.json``) carries S3 user metadata naming the upload it came from (ETag,
version, the key's sha256), the model and the output mode: that identity makes a result reusable and tells
``a.TIFF``'s result from ``a.tif``'s. Used by :mod:`handler.process` and the fan-out alike.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from handler.access import check_allowed
from handler.errors import ObjectMissingError, TransientError
from handler.objects import ObjectInfo, ObjectRef, error_key, output_key, product_keys
from handler.outcome import Outcome, OutcomeStatus, seconds_since
from handler.runtime import Runtime
from handler.settings import Settings
from handler.storage import Storage, s3_uri
from model.errors import ConfigError, InputError
from model.options import DEFAULT_OUTPUT_FORMATS
from model.predictor.predict import PredictionResult

log = logging.getLogger(__name__)

PRODUCER = "rasterfn"
# S3 user metadata (x-amz-meta-*): ASCII, at most 2 KB for all keys and values together.
META_PRODUCER = "producer"
META_SOURCE_ETAG = "source-etag"
META_SOURCE_VERSION = "source-version-id"
# sha256 of the input's key: a.tif and a.TIFF both name a.npy; this says whose result it is (keys may not be ASCII).
META_SOURCE_KEY = "source-key-sha256"
META_MODEL_SHA256 = "model-sha256"
META_OUTPUT = "output"
META_SHAPE = "shape"
META_DTYPE = "dtype"
META_CRS = "crs"
META_TRANSFORM = "transform"
METADATA_LIMIT_BYTES = 2048
NO_CRS = "none"
UNVERSIONED = "null"  # S3's own version id for objects in buckets without versioning
WKT_HASH_PREFIX = "wkt-sha256:"


class OutputConflictError(InputError):
    """Another input (same stem, another suffix: ``a.tif`` / ``a.TIFF``) already owns the output key."""


@dataclass(frozen=True)
class PlannedArray:
    """The array a sharded job will assemble, described as a :class:`PredictionResult` is, before any pixel."""

    output: str
    shape: tuple[int, int]
    dtype: str
    crs: str | None
    transform: Sequence[float]


@dataclass(frozen=True)
class Target:
    """Where an input's results go: the ``.npy``, the ``.error.json``, and every output ``OUTPUTS`` asks for."""

    bucket: str
    key: str  # the .npy
    marker: str  # the .error.json
    # kind -> key of every output written, in write order (the STAC Item last); the .npy alone by default
    products: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.products:
            object.__setattr__(self, "products", {"npy": self.key})

    @property
    def uri(self) -> str:
        return s3_uri(self.bucket, self.key)

    @property
    def marker_uri(self) -> str:
        return s3_uri(self.bucket, self.marker)

    @property
    def primary(self) -> str:
        """The key that names the result in messages: the ``.npy``, else the COG."""
        return self.products.get("npy") or self.products.get("cog") or self.key


def target_for(
    info: ObjectInfo,
    output_bucket: str | None,
    output_prefix: str,
    formats: Sequence[str] = DEFAULT_OUTPUT_FORMATS,
    output_mode: str = "mask",
) -> Target:
    """The results' location: OUTPUT_BUCKET (or the input's bucket), the key's stem under OUTPUT_PREFIX (pure)."""
    return Target(
        bucket=output_bucket or info.bucket,
        key=output_key(info.key, output_prefix),
        marker=error_key(info.key, output_prefix),
        products=product_keys(info.key, formats, output_mode, output_prefix),
    )


def settings_target(info: ObjectInfo, settings: Settings) -> Target:
    """:func:`target_for` as the deployment's settings say."""
    return target_for(info, settings.output_bucket, settings.output_prefix, settings.outputs, settings.output_mode)


def refuse_to_overwrite_input(info: ObjectInfo, target: Target) -> None:
    # Unreachable with the filters (inputs never end in .npy / .error.json); kept as the last line of defence.
    if target.bucket == info.bucket and info.key in (target.key, target.marker, *target.products.values()):
        raise ConfigError(f"refusing to write over the input {info.uri}: check INPUT_SUFFIXES / OUTPUT_PREFIX")


def key_digest(key: str) -> str:
    """The hex sha256 of an object key: ASCII and short, for S3 metadata (pure)."""
    return hashlib.sha256(key.encode()).hexdigest()


def identity(info: ObjectInfo, model_sha256: str, output_mode: str) -> dict[str, str]:
    """What makes a result reusable: the same bytes, the same weights, the same output mode (pure)."""
    return {
        META_SOURCE_ETAG: info.etag,
        META_SOURCE_KEY: key_digest(info.key),
        META_MODEL_SHA256: model_sha256,
        META_OUTPUT: output_mode,
    }


def runtime_identity(info: ObjectInfo, runtime: Runtime) -> dict[str, str]:
    return identity(info, runtime.model.sha256, runtime.settings.output_mode)


def is_ours(metadata: Mapping[str, str]) -> bool:
    return metadata.get(META_PRODUCER) == PRODUCER


def matches(metadata: Mapping[str, str], expected: Mapping[str, str]) -> bool:
    """Whether an object's metadata records exactly ``expected`` and that we wrote it (pure)."""
    return is_ours(metadata) and all(metadata.get(k) == v for k, v in expected.items())


def refuse_foreign_output(info: ObjectInfo, target: Target, existing: ObjectInfo | None) -> None:
    """Refuse to replace a result of ours that another input key wrote (``a.TIFF`` after ``a.tif``)."""
    if existing is None or not is_ours(existing.metadata):
        return
    owner = existing.metadata.get(META_SOURCE_KEY)
    if owner is not None and owner != key_digest(info.key):
        raise OutputConflictError(
            f"{existing.uri} already holds the result of another input with the same name "
            f"and another suffix; rename {info.key} (outputs are named <stem>.npy)"
        )


def output_metadata(info: ObjectInfo, model_sha256: str, array: PlannedArray | PredictionResult) -> dict[str, str]:
    """S3 user metadata for a ``.npy``: provenance and georeferencing, ASCII, within S3's 2 KB (pure)."""
    metadata = {
        META_PRODUCER: PRODUCER,
        META_SOURCE_ETAG: info.etag,
        META_SOURCE_VERSION: info.version_id or UNVERSIONED,
        META_SOURCE_KEY: key_digest(info.key),
        META_MODEL_SHA256: model_sha256,
        META_OUTPUT: array.output,
        META_SHAPE: ",".join(str(n) for n in array.shape),
        META_DTYPE: array.dtype,
        META_TRANSFORM: ",".join(repr(float(v)) for v in array.transform),
    }
    metadata = {k: v for k, v in metadata.items() if v}
    room = METADATA_LIMIT_BYTES - _metadata_bytes(metadata) - len(META_CRS)
    metadata[META_CRS] = crs_for_metadata(array.crs, room)
    return metadata


def crs_for_metadata(crs: str | None, room: int) -> str:
    """``EPSG:xxxx`` as is; a WKT as is when it is ASCII and fits ``room`` bytes, else its sha256 (pure).

    >>> crs_for_metadata("EPSG:32633", 100), crs_for_metadata(None, 100)
    ('EPSG:32633', 'none')
    >>> crs_for_metadata('PROJCS["x"]' * 50, 100)[:11]
    'wkt-sha256:'
    """
    if not crs:
        return NO_CRS
    flat = " ".join(crs.split())  # header values cannot hold newlines
    if flat.isascii() and flat.isprintable() and len(flat) <= room:
        return flat
    return WKT_HASH_PREFIX + hashlib.sha256(crs.encode()).hexdigest()


def error_document(info: ObjectInfo, exc: Exception, model_sha256: str, function_version: str) -> dict[str, Any]:
    """The body of ``<stem>.error.json``: what was refused, why, and by which model and code (pure)."""
    return {
        "error": type(exc).__name__,
        "message": str(exc),
        "bucket": info.bucket,
        "key": info.key,
        "etag": info.etag,
        "version_id": info.version_id,
        "size": info.size,
        "model_sha256": model_sha256,
        "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "function_version": function_version,
    }


def write_marker(runtime: Runtime, info: ObjectInfo, target: Target, exc: InputError, started: float) -> Outcome:
    """Write ``<stem>.error.json`` for ``info`` (``rejected``, never retried)."""
    doc = error_document(info, exc, runtime.model.sha256, runtime.function_version)
    metadata = {META_PRODUCER: PRODUCER, **{k: v for k, v in runtime_identity(info, runtime).items() if v}}
    runtime.storage.put_json(target.bucket, target.marker, doc, metadata=metadata)
    log.warning("rejected %s: %s", info.uri, exc)
    return Outcome(
        OutcomeStatus.REJECTED,
        info.bucket,
        info.key,
        output_key=target.marker,
        output_bucket=target.bucket,
        detail=str(exc),
        seconds=seconds_since(started),
        bytes_in=info.size,
        error_type=type(exc).__name__,
    )


def reject_object(ref: ObjectRef, runtime: Runtime, exc: InputError) -> Outcome:
    """Write ``<stem>.error.json`` for ``ref`` without processing it (its processing crashed, or a shard failed)."""
    started = time.perf_counter()
    check_allowed([ref], runtime.settings.allowed_buckets)
    try:
        info = runtime.storage.locate(ref)
    except ObjectMissingError as exc_missing:
        return Outcome(
            OutcomeStatus.MISSING, ref.bucket, ref.key, detail=str(exc_missing), seconds=seconds_since(started)
        )
    settings = runtime.settings
    target = settings_target(info, settings)
    refuse_to_overwrite_input(info, target)
    return write_marker(runtime, info, target, exc, started)


def write_output(
    storage: Storage,
    info: ObjectInfo,
    bucket: str,
    key: str,
    path: Path,
    content_type: str,
    metadata: Mapping[str, str],
    existing: ObjectInfo | None,
) -> int:
    """Upload one output of ``info`` only over ``existing``, what the writer saw there (S3 conditional write).

    A 412 means another job wrote the key meanwhile: when a newer upload replaced our input, that job's result
    stands and ours is dropped (``ObjectMissingError``: ``missing``); otherwise ``TransientError``: retry, and
    the retry sees what is there now. Returns the bytes written.
    """
    try:
        return storage.upload_file(
            path,
            bucket,
            key,
            metadata=metadata,
            content_type=content_type,
            if_match=existing.etag if existing is not None else None,
            if_absent=existing is None,
        )
    except ObjectMissingError as exc:
        current = storage.head(info.bucket, info.key)
        if current is None or current.etag != info.etag or current.version_id != info.version_id:
            raise ObjectMissingError(f"{info.uri} was replaced by a newer upload; its result stands") from exc
        raise TransientError(f"{s3_uri(bucket, key)} changed while {info.uri} was processed") from exc


def remove_stale_marker(storage: Storage, target: Target, marker: ObjectInfo | None) -> None:
    # Only a marker this function wrote, and only the version we saw: never someone else's object.
    if marker is not None and is_ours(marker.metadata):
        storage.delete(target.bucket, target.marker, version_id=marker.version_id)
        log.info("removed stale %s", target.marker_uri)


def _metadata_bytes(metadata: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
