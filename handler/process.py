"""The one processing function, shared by Lambda and Knative: ``process_object(ref, runtime) -> Outcome``.

The flow, top to bottom: skip what is not ours, locate the current object, stop at a result (or marker) that
already records this upload, fan out a raster too large for one invocation, else download, predict and write
``<stem>.npy`` beside the input (:mod:`handler.outputs`). An :class:`InputError` writes ``<stem>.error.json``;
a :class:`TransientError` or :class:`ConfigError` propagates to the event source, which retries.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from handler.access import check_allowed
from handler.errors import ObjectMissingError, TransientError
from handler.fanout.coordinator import fan_out_if_large, shard_sender
from handler.filters import skip_reason
from handler.objects import ObjectInfo, ObjectRef
from handler.outcome import Outcome, OutcomeStatus, seconds_since
from handler.outputs import (
    Target,
    matches,
    output_metadata,
    refuse_foreign_output,
    refuse_to_overwrite_input,
    remove_stale_marker,
    runtime_identity,
    settings_target,
    write_marker,
    write_output,
)
from handler.products import (
    LOCAL_NAMES,
    MEDIA_TYPES,
    Products,
    Published,
    describe_upload,
    make_products,
    relative_href,
)
from handler.remote import remote_source, url_lifetime_s
from handler.runtime import Runtime
from handler.storage import s3_uri
from model.errors import InputError

# Room for the output beside the input on the temp disk: a mask is at most ~1/2 of a compressed
# 10-band input (float32 per pixel vs 20 raw bytes per pixel).
OUTPUT_RESERVE_FRACTION = 0.5
OUTPUT_RESERVE_MIN_BYTES = 16 * 1024**2
# Out of disk or memory says nothing about the input: retried by the event source, never an error marker.
RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EDQUOT})


def process_object(ref: ObjectRef, runtime: Runtime, *, interrupt: Callable[[], None] | None = None) -> Outcome:
    """Process one object end to end: ``skipped``, ``missing`` (gone or replaced by a newer upload, whose own
    event counts), ``duplicate``, ``fanned-out``, ``written`` or ``rejected`` (an :class:`InputError`).

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
        return Outcome(OutcomeStatus.MISSING, ref.bucket, ref.key, detail=str(exc), seconds=seconds_since(started))

    target = settings_target(info, settings)
    refuse_to_overwrite_input(info, target)
    try:
        # One HEAD of our marker serves the duplicate check and, after a success, the stale-marker cleanup.
        marker = runtime.storage.head(target.bucket, target.marker)
        done, existing = _find_previous_result(runtime, info, target, marker)
        if done is not None:
            return replace(done, seconds=seconds_since(started))
        for found in existing.values():
            refuse_foreign_output(info, target, found)
        return _segment(runtime, info, target, marker, existing, started, interrupt)
    except ObjectMissingError as exc:  # deleted or replaced while we read it
        return Outcome(OutcomeStatus.MISSING, info.bucket, info.key, detail=str(exc), seconds=seconds_since(started))
    except InputError as exc:
        return write_marker(runtime, info, target, exc, started)


def _find_previous_result(
    runtime: Runtime, info: ObjectInfo, target: Target, marker: ObjectInfo | None
) -> tuple[Outcome | None, dict[str, ObjectInfo | None]]:
    """(a ``duplicate`` outcome or None, the object now at each output key, by kind, or None where there is none).

    A result is this upload's only when EVERY output records it: a retry after a crash between two writes, or
    after a newer upload's job wrote some of them, redoes them all, so no output outlives the others' version.
    """
    storage, expected = runtime.storage, runtime_identity(info, runtime)
    if marker is not None and matches(marker.metadata, expected):
        done = Outcome(
            OutcomeStatus.DUPLICATE,
            info.bucket,
            info.key,
            output_key=target.marker,
            output_bucket=target.bucket,
            detail=f"already rejected, see {target.marker_uri}",
        )
        return done, {}
    existing = {kind: storage.head(target.bucket, key) for kind, key in target.products.items()}
    if not all(found is not None and matches(found.metadata, expected) for found in existing.values()):
        return None, existing
    # A crash between the upload and the marker's removal must not leave the marker forever.
    remove_stale_marker(runtime.storage, target, marker)
    done = Outcome(
        OutcomeStatus.DUPLICATE,
        info.bucket,
        info.key,
        output_key=target.primary,
        output_bucket=target.bucket,
        detail=f"{s3_uri(target.bucket, target.primary)} already holds this upload's result",
    )
    return done, existing


def _segment(
    runtime: Runtime,
    info: ObjectInfo,
    target: Target,
    marker: ObjectInfo | None,
    existing: ObjectInfo | None,
    started: float,
    interrupt: Callable[[], None] | None,
) -> Outcome:
    settings, storage = runtime.settings, runtime.storage
    send = shard_sender(runtime)
    if send is not None:
        # Too much for one invocation? Decided from the header read where the object lies: a sharded job's input
        # is never downloaded (its shards read their rows remotely), so MAX_INPUT_BYTES bounds only what stays.
        with remote_source(storage, info, expires_s=url_lifetime_s(settings)) as remote:
            job = fan_out_if_large(
                runtime, info, target.bucket, target.key, target.marker, remote, send, products=target.products
            )
        if job is not None:
            return job
    reserve = max(OUTPUT_RESERVE_MIN_BYTES, int(info.size * OUTPUT_RESERVE_FRACTION))
    # A private (0700) directory per object: fixed names inside, nothing derived from the key, all removed.
    with tempfile.TemporaryDirectory(prefix="rasterfn-", dir=settings.tmp_dir) as workdir:
        src = storage.download(info, workdir, max_bytes=settings.max_input_bytes, reserve_bytes=reserve)
        try:
            products = make_products(
                runtime.model, src, Path(workdir), runtime.options, settings.outputs, interrupt=interrupt
            )
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
        result = products.result
        metadata = output_metadata(info, runtime.model.sha256, result)
        bytes_out = _publish(runtime, info, target, products, metadata, existing, Path(workdir))
    remove_stale_marker(runtime.storage, target, marker)
    height, width = result.shape
    return Outcome(
        OutcomeStatus.WRITTEN,
        info.bucket,
        info.key,
        output_key=target.primary,
        output_bucket=target.bucket,
        detail=f"{result.tiles} tiles, {result.positive_fraction:.1%} positive",
        seconds=seconds_since(started),
        pixels=height * width,
        bytes_in=info.size,
        bytes_out=bytes_out,
        inference_seconds=result.seconds,
    )


def _publish(
    runtime: Runtime,
    info: ObjectInfo,
    target: Target,
    products: Products,
    metadata: dict[str, str],
    existing: dict[str, ObjectInfo | None],
    workdir: Path,
) -> int:
    """Upload each output over what this job saw at the start, the STAC Item (which describes them) last."""

    def put(kind: str, path: Path) -> int:
        key, media_type = target.products[kind], MEDIA_TYPES[kind]
        return write_output(runtime.storage, info, target.bucket, key, path, media_type, metadata, existing.get(kind))

    written, published = 0, []
    item_key = target.products.get("stac")
    for kind, key in target.products.items():
        if kind != "stac":
            path = products.files[kind]
            written += put(kind, path)
            published.append(Published(kind, relative_href(item_key or key, key), path))
    if item_key is not None:
        dst = workdir / LOCAL_NAMES["stac"]
        item = describe_upload(runtime.model, products.result, info, target.bucket, item_key, published, dst)
        written += put("stac", item)
    return written
