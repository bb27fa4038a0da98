"""One raster across parallel invocations: the coordinator, the two shard phases and the assembly.

The coordinator (:func:`fan_out_if_large`, from the header read where the object lies) plans row bands
(:mod:`model.predictor.shards`), opens the ``.npy``'s multipart upload, records the :class:`~handler.fanout.jobs.Job`
and sends one ``stats`` message per band. The stats shard that finds every histogram present sends the
``predict`` messages; the predict shard that finds every part present completes the upload. Shards read the
input where it lies (:mod:`handler.remote`), never download it. An :class:`InputError` in any shard fails
the job (``<stem>.error.json``, no ``.npy``); any other error raises, so the queue re-delivers the message.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from handler.access import allowed_bucket_names, check_allowed
from handler.errors import ForbiddenObjectError, ObjectMissingError, TransientError
from handler.fanout.finish import cog_part_writer, finish_products
from handler.fanout.jobs import Failure, Job, JobStore, SourceVersion, job_id
from handler.fanout.messages import ShardMessage
from handler.fanout.sender import Send, sender_from_settings
from handler.objects import ObjectInfo
from handler.outcome import Outcome, OutcomeStatus
from handler.outputs import PlannedArray, output_metadata, reject_object
from handler.remote import remote_source, url_lifetime_s
from handler.runtime import Runtime
from handler.storage import OUTPUT_CONTENT_TYPE, Upload
from model.errors import ConfigError, InputError, RasterReadError, RasterTooLargeError
from model.io.cog import part_transform
from model.io.decode_limits import check_layout
from model.io.raster import RasterHeader, RasterSource, check_header, open_raster, read_header
from model.io.remote import RemoteRaster
from model.predictor.bands import band_statistics, plan_raster_shards, predict_band
from model.predictor.shards import S3_MIN_PART_BYTES, RowBand, ShardPlan, merge_percentiles, npy_header
from model.predictor.tiling import plan_tiles

log = logging.getLogger(__name__)

MIN_PART_BYTES = S3_MIN_PART_BYTES  # S3's; moto's can be lowered for tests


@dataclass(frozen=True)
class ShardResult:
    """What one shard message's work came to, for the logs and the HTTP answer."""

    job: str
    phase: str
    shard: int
    status: str
    error: str | None = None

    def as_dict(self) -> dict[str, str | int]:
        fields = {"job": self.job, "phase": self.phase, "shard": self.shard, "status": self.status}
        return fields if self.error is None else {**fields, "error": self.error}


def estimate_seconds(tiles: int, seconds_per_tile: float) -> float:
    return tiles * seconds_per_tile


def shard_sender(runtime: Runtime) -> Send | None:
    """The deployment's shard sender, ``None`` when fan-out is off: :mod:`handler.process` asks before it reads."""
    return sender_from_settings(runtime.settings, runtime.queues)


def fan_out_if_large(
    runtime: Runtime,
    info: ObjectInfo,
    target_bucket: str,
    target_key: str,
    marker_key: str,
    src: RasterSource,
    send: Send | None = None,
    products: Mapping[str, str] | None = None,
) -> Outcome | None:
    """Start (or re-join) a sharded job for a raster too large for one invocation; ``None`` when it is not
    (or when fan-out is off: neither ``FANOUT_QUEUE_URL`` nor ``K_SINK``). ``src`` is the object where it lies
    (:func:`handler.remote.remote_source`) or a local copy: only its header is read. ``products`` (kind -> key,
    :attr:`handler.outputs.Target.products`) are the outputs to write; the ``.npy`` at ``target_key`` alone
    by default."""
    settings, model = runtime.settings, runtime.model
    send = send or shard_sender(runtime)
    if send is None:
        return None
    with open_raster(src) as ds:
        header = read_header(ds, src)
    options = _options(runtime)
    card = model.card
    plan = plan_tiles(header.height, header.width, card.tile_size, card.tile_overlap, card.size_multiple)
    seconds = estimate_seconds(plan.tiles, settings.fanout_seconds_per_tile)
    if seconds <= settings.fanout_threshold_seconds and header.pixels <= settings.max_pixels:
        return None
    check_header(header, card.bands, settings.max_scene_pixels)
    check_layout(header.layout, options.limits, header.name)  # refused here, before any shard is sent
    threshold = max(1, settings.fanout_threshold_seconds)
    wanted = min(settings.fanout_max_shards, math.ceil(seconds / threshold))
    try:
        shards = plan_raster_shards(
            model, header, wanted, options, max_band_pixels=settings.max_pixels, min_part_bytes=MIN_PART_BYTES
        )
    except ValueError as exc:
        raise RasterTooLargeError(f"{info.uri}: {exc} (MAX_PIXELS per shard)") from exc

    products = dict(products or {"npy": target_key})
    extras = {kind: key for kind, key in products.items() if kind != "npy"}
    jid = job_id(info, model.sha256, settings.output_mode, tuple(products))
    store = JobStore(runtime.storage, target_bucket, jid)
    npy_key = products.get("npy") or store.array_key()
    job = store.read_job() or _open_job(runtime, store, info, header, shards, npy_key, marker_key, seconds, extras)
    log.info(
        "fan-out %s: %d x %d, %d tiles (~%.0f s in one invocation) -> %d shards, job %s",
        info.uri,
        header.height,
        header.width,
        plan.tiles,
        seconds,
        job.shards,
        store.uri(),
    )
    # A re-delivered upload event re-joins the job; it sends the stats messages again only if the first
    # coordinator may have died before sending them all.
    if not store.stats_sent():
        for index in range(job.shards):
            send(ShardMessage(target_bucket, jid, "stats", index))
        store.mark_stats_sent()
    return Outcome(
        OutcomeStatus.FANNED_OUT,
        info.bucket,
        info.key,
        output_key=products.get("npy") or products.get("cog") or target_key,
        output_bucket=target_bucket,
        detail=f"{job.shards} shards, job {jid}",
        pixels=header.pixels,
        bytes_in=info.size,
    )


def _open_job(
    runtime: Runtime,
    store: JobStore,
    info: ObjectInfo,
    header: RasterHeader,
    shards: ShardPlan,
    target_key: str,
    marker_key: str,
    seconds: float,
    extras: Mapping[str, str],
) -> Job:
    """Open the ``.npy``'s multipart upload and record the job; of two racing coordinators, one job stands."""
    shape = (header.height, header.width)
    array = PlannedArray(runtime.settings.output_mode, shape, shards.dtype, header.crs, header.transform)
    metadata = output_metadata(info, runtime.model.sha256, array)
    upload = runtime.storage.create_multipart(
        store.bucket, target_key, metadata=metadata, content_type=OUTPUT_CONTENT_TYPE
    )
    job = Job(
        source=SourceVersion.of(info),
        source_size=info.size,
        source_dtype=header.dtypes[runtime.model.card.bands[0] - 1],
        target_key=target_key,
        marker_key=marker_key,
        upload_id=upload.upload_id,
        dtype=shards.dtype,
        shape=shape,
        bands=tuple(shards.bands),
        estimated_seconds=seconds,
        created=time.time(),
        products=dict(extras),
        output_mode=runtime.settings.output_mode,
        crs=header.crs,
        transform=tuple(header.transform),
    )
    if store.create_job(job):
        return job
    # A re-delivered coordinator message lost the race: adopt the winner's job, drop our upload.
    runtime.storage.abort_multipart(upload)
    return store.read_job()


def run_shard(
    message: ShardMessage, runtime: Runtime, send: Send | None = None, *, last_attempt: bool = False
) -> ShardResult:
    """Do one shard message's work (idempotent).

    ``last_attempt``: the queue will not deliver this message again (Lambda's last allowed receive), so an
    unreadable band fails the job now instead of waiting for a retry that never comes.
    """
    send = send or shard_sender(runtime)
    if send is None:
        raise ConfigError("a shard message arrived but neither FANOUT_QUEUE_URL nor K_SINK is set")
    job, store = _load_job(message, runtime)
    result = ShardResult(message.job, message.phase, message.index, "")
    if job is None or not 0 <= message.index < job.shards:
        return replace(result, status="unknown job or shard (expired?)")
    if store.is_failed() or store.is_done():
        return replace(result, status="job already finished")
    band = job.bands[message.index]
    try:
        if message.phase == "stats":
            return replace(result, status=_stats_phase(runtime, store, job, band, send))
        return replace(result, status=_predict_phase(runtime, store, job, band))
    except InputError as exc:
        if not last_attempt and _retry_read_once(store, message, exc):
            raise TransientError(f"shard {message.event_id}: {exc} (retried once before the file is judged)") from exc
        _fail(runtime, store, job, exc, marker=True)
        return replace(result, status="failed", error=str(exc))
    except ObjectMissingError as exc:  # the upload was replaced: its own event supersedes this job
        _fail(runtime, store, job, exc, marker=False)
        return replace(result, status="abandoned", error=str(exc))


def _retry_read_once(store: JobStore, message: ShardMessage, exc: InputError) -> bool:
    """Whether a shard's unreadable rows get one more try (through the queue) before the job fails.

    Rows are read over HTTP: a fetch that failed past GDAL's own retries (S3 throttling, a dropped connection)
    reaches us as libtiff's "read error", the same words as corrupt bytes. The first such failure of a shard is
    retried after the queue's back-off; the second is the file's. A conditional put decides which is first.
    """
    if type(exc) is not RasterReadError:
        return False
    return store.mark_read_retried(message.phase, message.index, str(exc))


def fail_shard_job(message: ShardMessage, runtime: Runtime, exc: InputError) -> ShardResult:
    """End the job of a shard whose processing crashed the function (``<stem>.error.json``, no ``.npy``).

    Called when a shard message killed its worker process on its last allowed receive: retrying it cannot
    help, and without this the job would wait for that part until its objects expire.
    """
    job, store = _load_job(message, runtime)
    result = ShardResult(message.job, message.phase, message.index, "")
    if job is None:
        return replace(result, status="unknown job or shard (expired?)")
    _fail(runtime, store, job, exc, marker=True)
    return replace(result, status="failed", error=str(exc))


def _load_job(message: ShardMessage, runtime: Runtime) -> tuple[Job | None, JobStore]:
    """The message's job (``None`` when absent), after checking its buckets against ALLOWED_BUCKETS."""
    settings = runtime.settings
    allowed = settings.allowed_buckets
    # Job state lives in the output bucket: OUTPUT_BUCKET, or the input's bucket when that is unset.
    if allowed and message.bucket not in allowed_bucket_names(allowed) | {settings.output_bucket}:
        # Before any S3 call: a forged message must not make the function read a bucket it was not given.
        raise ForbiddenObjectError(f"shard message for bucket {message.bucket!r}, outside ALLOWED_BUCKETS")
    store = JobStore(runtime.storage, message.bucket, message.job)
    job = store.read_job()
    if job is not None:
        check_allowed([job.source.ref()], allowed)
    return job, store


def _stats_phase(runtime: Runtime, store: JobStore, job: Job, band: RowBand, send: Send) -> str:
    if not store.has_histograms(band.index):
        with _source(runtime, job) as src:
            store.put_histograms(band.index, band_statistics(runtime.model, src, band, _options(runtime)))
    if store.histograms_done() < job.shards:
        return "stats counted"
    if store.predict_sent():  # a duplicate of a stats message, after the reduction
        return "stats reduced earlier"
    store.put_p90s(merge_percentiles(job.source_dtype, (store.get_histograms(i) for i in range(job.shards))))
    # Every stats shard that sees the last histogram before the predict messages are marked sent sends: a duplicate
    # send is harmless (two racing shards), a lost one is not (a shard that dies here is redelivered, sends again).
    for index in range(job.shards):
        send(ShardMessage(store.bucket, store.job, "predict", index))
    store.mark_predict_sent()
    return "stats reduced"


def _predict_phase(runtime: Runtime, store: JobStore, job: Job, band: RowBand) -> str:
    status = "part already uploaded"
    if not store.has_part(band.index):
        etag = _upload_band(runtime, store, job, band, store.p90s())
        if etag is None:  # a duplicate of this shard finished the job while this one computed
            return "job already finished"
        store.record_part(band.index, etag)
        status = "part uploaded"
    if store.parts_done() < job.shards:
        return status
    return _complete(runtime, store, job)


def _upload_band(runtime: Runtime, store: JobStore, job: Job, band: RowBand, p90s: list[float]) -> str | None:
    dtype = np.dtype(job.dtype)
    tmp_dir = runtime.settings.tmp_dir
    with (
        _source(runtime, job) as src,
        tempfile.TemporaryFile(dir=tmp_dir) as part,
        tempfile.TemporaryDirectory(prefix="rasterfn-shard-", dir=tmp_dir) as workdir,
    ):
        if band.index == 0:
            part.write(npy_header(job.shape, dtype))

        def write(rows: np.ndarray) -> None:
            part.write(np.ascontiguousarray(rows, dtype=dtype).data)

        cog_part = Path(workdir) / "part.tif"
        with _cog_part_sink(runtime, job, band, cog_part) as sink:
            predict_band(runtime.model, src, band, p90s, write, _options(runtime), sink=sink)
        part.seek(0)
        if store.is_done():
            return None
        if job.makes_cog:  # before the .npy's part: a recorded part means both are there
            store.put_cog_part(band.index, cog_part)
        # None when the upload was completed (or aborted) since: nothing left to add.
        return runtime.storage.upload_part(_upload(store, job), band.part_number, part)


def _cog_part_sink(runtime: Runtime, job: Job, band: RowBand, path: Path):
    """The band's rows as a GeoTIFF part of the COG (its own transform: the raster's, moved down to its rows)."""
    if not job.makes_cog:
        return contextlib.nullcontext(None)
    rows = band.row_stop - band.row_start
    transform = part_transform(job.transform, band.row_start)
    return cog_part_writer(path, (rows, job.shape[1]), job.output_mode, job.crs, transform, runtime.model.card)


def _complete(runtime: Runtime, store: JobStore, job: Job) -> str:
    upload = _upload(store, job)
    completed = runtime.storage.complete_multipart(upload, store.part_etags(job.shards))
    if not completed and (store.is_failed() or not job.makes_cog or store.is_done()):
        return "completed by another shard"  # (or the job was aborted)
    # The completing shard makes the COG, quicklook and Item; if it died doing so, a re-delivered shard that
    # finds the upload completed (and the job not done) makes them again: their writes are conditional.
    if job.makes_cog:
        finish_products(runtime, store, job)
    store.record_done(upload.uri)
    log.info("fan-out job %s complete: %s", store.job, upload.uri)
    return "completed"


def _fail(runtime: Runtime, store: JobStore, job: Job, exc: Exception, *, marker: bool) -> None:
    if not store.record_failure(Failure(type(exc).__name__, str(exc))):
        return
    runtime.storage.abort_multipart(_upload(store, job))
    log.warning("fan-out job %s failed: %s", store.job, exc)
    if marker:
        reject_object(job.source.ref(), runtime, exc)  # the same <stem>.error.json a single invocation writes


def _upload(store: JobStore, job: Job) -> Upload:
    return Upload(store.bucket, job.target_key, job.upload_id)


def _options(runtime: Runtime):
    return replace(runtime.options, max_pixels=runtime.settings.max_scene_pixels)


@contextlib.contextmanager
def _source(runtime: Runtime, job: Job) -> Iterator[RemoteRaster]:
    """The job's exact source version, read where it lies (ranged GETs of its rows' blocks, never downloaded)."""
    storage = runtime.storage
    info = storage.locate(job.source.ref())  # gone or replaced since the job started: ObjectMissingError, abandoned
    with remote_source(storage, info, expires_s=url_lifetime_s(runtime.settings)) as src:
        yield src
