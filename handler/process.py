"""The one processing function, shared by Lambda and Knative: ``process_object(ref, runtime) -> Outcome``.

For one uploaded object:

1. skip what is not ours to process (:func:`handler.filters.skip_reason`) -> ``skipped``;
2. find the current object (HeadObject, falling back to the raw key); gone, or replaced by a newer upload
   -> ``missing`` (never retried: a newer upload has its own event);
3. idempotency: if ``<stem>.npy`` (or our ``<stem>.error.json``) already records this object's ETag, this
   model's sha256 and this output mode -> ``duplicate``; nothing is downloaded;
4. with fan-out on, read the header where the object lies (:mod:`handler.remote`) and hand a raster too large
   for one invocation to :mod:`handler.fanout` (never downloaded) -> ``fanned-out``; otherwise
   download exactly that version into a private temp dir (size limits checked before), segment it, upload
   ``<stem>.npy`` with metadata that keeps the georeferencing, then remove a stale error marker of ours
   -> ``written``;
5. an :class:`InputError` (not a raster, too big, too few bands, archived, past its deadline, or an output
   key another input already owns: ``a.TIFF`` after ``a.tif``) writes ``<stem>.error.json`` -> ``rejected``
   (not retried).

A reference outside ``ALLOWED_BUCKETS`` is refused before any S3 call. The ``.npy`` is written with an S3
conditional write on what step 3 saw (``If-None-Match: *`` / ``If-Match: <ETag>``), so a slow job on an old
version cannot overwrite the result of a newer one; out of disk or memory is a :class:`TransientError`.

:class:`TransientError` (S3 throttled, 5xx, connection) and :class:`ConfigError` (access denied, missing
output bucket) propagate: the event source retries, then dead-letters. Nothing is written until the result
is complete, and the user's input is never written or deleted.

Example:
    >>> outcome = process_object(ObjectRef("scenes", "a/b/scene.tif"), get_runtime())   # doctest: +SKIP
    >>> outcome.status, outcome.output_key
    (<OutcomeStatus.WRITTEN: 'written'>, 'a/b/scene.npy')
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from handler.access import check_allowed
from handler.errors import ObjectMissingError, TransientError
from handler.fanout.coordinator import fan_out_if_large, shard_sender
from handler.filters import skip_reason
from handler.objects import ObjectRef, error_key, output_key
from handler.outcome import Outcome, OutcomeStatus
from handler.remote import remote_source, url_lifetime_s
from handler.runtime import Runtime
from handler.storage import ObjectInfo, s3_uri
from model.errors import ConfigError, InputError
from model.predict import PredictionResult, predict_file

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
# Room for the output beside the input on the temp disk: a mask is at most ~1/2 of a compressed
# 10-band input (float32 per pixel vs 20 raw bytes per pixel).
OUTPUT_RESERVE_FRACTION = 0.5
OUTPUT_RESERVE_MIN_BYTES = 16 * 1024**2
# Out of disk or memory says nothing about the input: retried by the event source, never an error marker.
RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EDQUOT})


class OutputConflictError(InputError):
    """Another input (same stem, another suffix: ``a.tif`` / ``a.TIFF``) already owns the output key."""


def process_object(ref: ObjectRef, runtime: Runtime, *, interrupt: Callable[[], None] | None = None) -> Outcome:
    """Process one object end to end; see the module docstring for the statuses and what raises.

    ``interrupt`` is called between tiles and may raise to stop (a deadline, a client gone). A reference
    outside ``ALLOWED_BUCKETS`` raises :class:`~handler.errors.ForbiddenObjectError` before any S3 call.
    """
    started = time.perf_counter()
    settings = runtime.settings
    check_allowed([ref], settings.allowed_buckets)
    reason = skip_reason(ref, settings.input_suffixes)
    if reason is not None:
        return Outcome(OutcomeStatus.SKIPPED, ref.bucket, ref.key, detail=reason)
    try:
        info = runtime.storage.locate(ref)
    except ObjectMissingError as exc:
        return Outcome(OutcomeStatus.MISSING, ref.bucket, ref.key, detail=str(exc), seconds=_since(started))

    target = _target_for(info, settings.output_bucket, settings.output_prefix)
    _refuse_to_overwrite_input(info, target)
    try:
        # One HEAD of our marker serves the duplicate check and, after a success, the stale-marker cleanup.
        marker = runtime.storage.head(target.bucket, target.marker)
        done, existing = _find_previous_result(runtime, info, target, marker)
        if done is not None:
            return replace(done, seconds=_since(started))
        _refuse_foreign_output(info, target, existing)
        return _segment(runtime, info, target, marker, existing, started, interrupt)
    except ObjectMissingError as exc:  # deleted or replaced while we read it
        return Outcome(OutcomeStatus.MISSING, info.bucket, info.key, detail=str(exc), seconds=_since(started))
    except InputError as exc:
        return _reject(runtime, info, target, exc, started)


@dataclass(frozen=True)
class _Target:
    bucket: str
    key: str  # the .npy
    marker: str  # the .error.json


def reject_object(ref: ObjectRef, runtime: Runtime, exc: InputError) -> Outcome:
    """Write ``<stem>.error.json`` for ``ref`` without processing it (its processing crashed the worker)."""
    started = time.perf_counter()
    check_allowed([ref], runtime.settings.allowed_buckets)
    try:
        info = runtime.storage.locate(ref)
    except ObjectMissingError as exc_missing:
        return Outcome(OutcomeStatus.MISSING, ref.bucket, ref.key, detail=str(exc_missing), seconds=_since(started))
    settings = runtime.settings
    target = _target_for(info, settings.output_bucket, settings.output_prefix)
    _refuse_to_overwrite_input(info, target)
    return _reject(runtime, info, target, exc, started)


def _target_for(info: ObjectInfo, output_bucket: str | None, output_prefix: str) -> _Target:
    return _Target(
        bucket=output_bucket or info.bucket,
        key=output_key(info.key, output_prefix),
        marker=error_key(info.key, output_prefix),
    )


def _find_previous_result(
    runtime: Runtime, info: ObjectInfo, target: _Target, marker: ObjectInfo | None
) -> tuple[Outcome | None, ObjectInfo | None]:
    """(a ``duplicate`` outcome or None, the output object now at ``target.key`` or None)."""
    storage, expected = runtime.storage, _identity(info, runtime)
    if marker is not None and _matches(marker.metadata, expected):
        done = Outcome(
            OutcomeStatus.DUPLICATE,
            info.bucket,
            info.key,
            output_key=target.marker,
            output_bucket=target.bucket,
            detail=f"already rejected, see {s3_uri(target.bucket, target.marker)}",
        )
        return done, None
    existing = storage.head(target.bucket, target.key)
    if existing is None or not _matches(existing.metadata, expected):
        return None, existing
    # A crash between the upload and the marker's removal must not leave the marker forever.
    _remove_stale_marker(runtime, target, marker)
    done = Outcome(
        OutcomeStatus.DUPLICATE,
        info.bucket,
        info.key,
        output_key=target.key,
        output_bucket=target.bucket,
        detail=f"{s3_uri(target.bucket, target.key)} already holds this upload's result",
    )
    return done, existing


def _refuse_foreign_output(info: ObjectInfo, target: _Target, existing: ObjectInfo | None) -> None:
    """Refuse to replace a result of ours that another input key wrote (``a.TIFF`` after ``a.tif``)."""
    if existing is None or existing.metadata.get(META_PRODUCER) != PRODUCER:
        return
    owner = existing.metadata.get(META_SOURCE_KEY)
    if owner is not None and owner != key_digest(info.key):
        raise OutputConflictError(
            f"{s3_uri(target.bucket, target.key)} already holds the result of another input with the same name "
            f"and another suffix; rename {info.key} (outputs are named <stem>.npy)"
        )


def _segment(
    runtime: Runtime,
    info: ObjectInfo,
    target: _Target,
    marker: ObjectInfo | None,
    existing: ObjectInfo | None,
    started: float,
    interrupt: Callable[[], None] | None,
) -> Outcome:
    settings, storage = runtime.settings, runtime.storage
    send = shard_sender(settings)
    if send is not None:
        # Too much for one invocation? Decided from the header read where the object lies: a sharded job's input
        # is never downloaded (its shards read their rows remotely), so MAX_INPUT_BYTES bounds only what stays.
        with remote_source(storage, info, expires_s=url_lifetime_s(settings)) as remote:
            job = fan_out_if_large(runtime, info, target.bucket, target.key, target.marker, remote, send)
        if job is not None:
            return job
    reserve = max(OUTPUT_RESERVE_MIN_BYTES, int(info.size * OUTPUT_RESERVE_FRACTION))
    # A private (0700) directory per object: fixed names inside, nothing derived from the key, all removed.
    with tempfile.TemporaryDirectory(prefix="rasterfn-", dir=settings.tmp_dir) as workdir:
        src = storage.download(info, workdir, max_bytes=settings.max_input_bytes, reserve_bytes=reserve)
        dst = Path(workdir) / "output.npy"
        try:
            result = predict_file(runtime.model, src, dst, runtime.options, interrupt=interrupt)
        except InputError as exc:
            # The predictor names our temp file; the user knows the object by its key.
            raise exc.renamed(src.name, info.key) from exc
        except MemoryError as exc:
            raise TransientError(f"{info.uri}: out of memory, retry later") from exc
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                reason = os.strerror(exc.errno)
                raise TransientError(f"{info.uri}: {reason} on the function's side, retry later") from exc
            raise
        metadata = output_metadata(info, runtime.model.sha256, result)
        bytes_out = _write_output(runtime, info, target, dst, metadata, existing)
    _remove_stale_marker(runtime, target, marker)
    height, width = result.shape
    return Outcome(
        OutcomeStatus.WRITTEN,
        info.bucket,
        info.key,
        output_key=target.key,
        output_bucket=target.bucket,
        detail=f"{result.tiles} tiles, {result.positive_fraction:.1%} positive",
        seconds=_since(started),
        pixels=height * width,
        bytes_in=info.size,
        bytes_out=bytes_out,
        inference_seconds=result.seconds,
    )


def _write_output(
    runtime: Runtime,
    info: ObjectInfo,
    target: _Target,
    dst: Path,
    metadata: dict[str, str],
    existing: ObjectInfo | None,
) -> int:
    """Upload the ``.npy`` only over what this job saw at the start (S3 conditional write).

    A 412 means another job wrote the key meanwhile: when a newer upload replaced our input, that job's result
    stands and ours is dropped (``missing``); otherwise retry, and the retry sees what is there now.
    """
    try:
        return runtime.storage.upload_file(
            dst,
            target.bucket,
            target.key,
            metadata=metadata,
            if_match=existing.etag if existing is not None else None,
            if_absent=existing is None,
        )
    except ObjectMissingError as exc:
        current = runtime.storage.head(info.bucket, info.key)
        if current is None or current.etag != info.etag or current.version_id != info.version_id:
            raise ObjectMissingError(f"{info.uri} was replaced by a newer upload; its result stands") from exc
        raise TransientError(f"{s3_uri(target.bucket, target.key)} changed while {info.uri} was processed") from exc


def _reject(runtime: Runtime, info: ObjectInfo, target: _Target, exc: InputError, started: float) -> Outcome:
    doc = error_document(info, exc, runtime.model.sha256, runtime.function_version)
    metadata = {
        META_PRODUCER: PRODUCER,
        **{k: v for k, v in _identity(info, runtime).items() if v},
    }
    runtime.storage.put_json(target.bucket, target.marker, doc, metadata=metadata)
    log.warning("rejected %s: %s", info.uri, exc)
    return Outcome(
        OutcomeStatus.REJECTED,
        info.bucket,
        info.key,
        output_key=target.marker,
        output_bucket=target.bucket,
        detail=str(exc),
        seconds=_since(started),
        bytes_in=info.size,
        error_type=type(exc).__name__,
    )


def _remove_stale_marker(runtime: Runtime, target: _Target, marker: ObjectInfo | None) -> None:
    # Only a marker this function wrote, and only the version we saw: never someone else's object.
    if marker is not None and marker.metadata.get(META_PRODUCER) == PRODUCER:
        runtime.storage.delete(target.bucket, target.marker, version_id=marker.version_id)
        log.info("removed stale %s", s3_uri(target.bucket, target.marker))


def _refuse_to_overwrite_input(info: ObjectInfo, target: _Target) -> None:
    # Unreachable with the filters (inputs never end in .npy / .error.json); kept as the last line of defence.
    if target.bucket == info.bucket and info.key in (target.key, target.marker):
        raise ConfigError(f"refusing to write over the input {info.uri}: check INPUT_SUFFIXES / OUTPUT_PREFIX")


def _identity(info: ObjectInfo, runtime: Runtime) -> dict[str, str]:
    """What makes a result reusable: the same bytes, the same weights, the same output mode."""
    return {
        META_SOURCE_ETAG: info.etag,
        META_SOURCE_KEY: key_digest(info.key),
        META_MODEL_SHA256: runtime.model.sha256,
        META_OUTPUT: runtime.settings.output_mode,
    }


def key_digest(key: str) -> str:
    """The hex sha256 of an object key: ASCII and short, for S3 metadata (pure)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _matches(metadata: Mapping[str, str], expected: Mapping[str, str]) -> bool:
    return metadata.get(META_PRODUCER) == PRODUCER and all(metadata.get(k) == v for k, v in expected.items())


def output_metadata(info: ObjectInfo, model_sha256: str, result: PredictionResult) -> dict[str, str]:
    """S3 user metadata for a ``.npy``: provenance and georeferencing, ASCII, within S3's 2 KB (pure)."""
    metadata = {
        META_PRODUCER: PRODUCER,
        META_SOURCE_ETAG: info.etag,
        META_SOURCE_VERSION: info.version_id or UNVERSIONED,
        META_SOURCE_KEY: key_digest(info.key),
        META_MODEL_SHA256: model_sha256,
        META_OUTPUT: result.output,
        META_SHAPE: ",".join(str(n) for n in result.shape),
        META_DTYPE: result.dtype,
        META_TRANSFORM: ",".join(repr(float(v)) for v in result.transform),
    }
    metadata = {k: v for k, v in metadata.items() if v}
    room = METADATA_LIMIT_BYTES - _metadata_bytes(metadata) - len(META_CRS)
    metadata[META_CRS] = crs_for_metadata(result.crs, room)
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


def _metadata_bytes(metadata: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


def _since(started: float) -> float:
    return time.perf_counter() - started
