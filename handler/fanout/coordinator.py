"""One raster across parallel invocations: the coordinator, the two shard phases and the assembly.

1. **Coordinator** (:func:`fan_out_if_large`, called by :mod:`handler.process` before any download, on the
   header read where the object lies, :mod:`handler.remote`): from the header alone, tiles x
   ``FANOUT_SECONDS_PER_TILE``; at or below ``FANOUT_THRESHOLD_SECONDS`` (and within
   ``MAX_PIXELS``) it returns ``None`` and the invocation processes the raster itself. Above, it plans row
   bands (:mod:`model.shards`: each reads at most ``MAX_PIXELS``, the scene at most ``MAX_SCENE_PIXELS``),
   opens the ``.npy``'s multipart upload, records the job (:mod:`handler.fanout.jobs`) and sends one
   ``stats`` message per band.
2. **Stats shard**: counts its band's histograms; the one that finds all of them present reduces them to the
   whole raster's p90s and sends one ``predict`` message per band.
3. **Predict shard**: writes its band's rows (part 1 starts with the ``.npy`` header) to a temp file and
   uploads it as its part; the one that finds every part present completes the upload: the ``.npy`` appears
   at once, with the same metadata as a single invocation's.

Shards never download the input: each reads the job's exact source version where it lies, with ranged GETs
(:mod:`handler.remote`), only the blocks its rows and overlap rows touch. So ``MAX_INPUT_BYTES`` and the temp
disk bound only rasters processed in one invocation; a fan-out job's input is bounded by ``MAX_SCENE_PIXELS``
and the decode checks (:mod:`model.decode_limits`), which run on the header before any pixel is read.

An :class:`InputError` in any shard fails the job: ``failed.json``, the upload aborted, ``<stem>.error.json``
written; no ``.npy`` (a shard's unreadable rows are retried once first: a failed ranged GET reads the same).
Any other error raises, so the queue re-delivers the message. Hop depth: upload -> coordinator -> stats ->
predict, two hops of our own messages, far below Lambda's recursive-loop detection (it stops a chain after 16
invocations carrying the same trace); the messages are new sends, never a loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from handler.access import allowed_bucket_names, check_allowed
from handler.errors import ForbiddenObjectError, ObjectMissingError, TransientError
from handler.fanout.jobs import JobStore, _code
from handler.fanout.messages import ShardMessage
from handler.fanout.sender import sender_from_settings
from handler.objects import ObjectRef
from handler.outcome import Outcome, OutcomeStatus
from handler.outputs import PlannedArray, output_metadata, reject_object
from handler.remote import remote_source, url_lifetime_s
from handler.runtime import Runtime
from handler.storage import OUTPUT_CONTENT_TYPE, ObjectInfo, s3_errors, s3_uri
from model.decode_limits import check_layout
from model.errors import ConfigError, InputError, RasterReadError, RasterTooLargeError
from model.predict import band_statistics, plan_raster_shards, predict_band
from model.raster import RasterSource, check_header, open_raster, read_header
from model.remote import RemoteRaster
from model.shards import S3_MIN_PART_BYTES, RowBand, merge_percentiles, npy_header
from model.tiling import plan_tiles

log = logging.getLogger(__name__)

Send = Callable[[ShardMessage], None]
MIN_PART_BYTES = S3_MIN_PART_BYTES  # S3's; moto's can be lowered for tests


def job_id(info: ObjectInfo, model_sha256: str, output: str) -> str:
    """The job's id: the same upload, model and output mode always give the same job (pure)."""
    identity = "\n".join([info.bucket, info.key, info.etag, info.version_id or "", model_sha256, output])
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def pointer_name(bucket: str, key: str) -> str:
    """Where the latest job of input ``bucket/key`` is recorded (``<JOB_PREFIX><this>/latest.json``) (pure)."""
    return "by-key-" + hashlib.sha256(f"{bucket}\n{key}".encode()).hexdigest()[:32]


def estimate_seconds(tiles: int, seconds_per_tile: float) -> float:
    return tiles * seconds_per_tile


def shard_sender(settings) -> Send | None:
    """The deployment's shard sender, ``None`` when fan-out is off: :mod:`handler.process` asks before it reads."""
    return sender_from_settings(settings)


def fan_out_if_large(
    runtime: Runtime,
    info: ObjectInfo,
    target_bucket: str,
    target_key: str,
    marker_key: str,
    src: RasterSource,
    send: Send | None = None,
) -> Outcome | None:
    """Start (or re-join) a sharded job for a raster too large for one invocation; ``None`` when it is not
    (or when fan-out is off: neither ``FANOUT_QUEUE_URL`` nor ``K_SINK``). ``src`` is the object where it lies
    (:func:`handler.remote.remote_source`) or a local copy: only its header is read."""
    settings, model = runtime.settings, runtime.model
    send = send or sender_from_settings(settings)
    if send is None:
        return None
    with open_raster(src) as ds:
        header = read_header(ds, src)
    options = replace(runtime.options, max_pixels=settings.max_scene_pixels)
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

    jid = job_id(info, model.sha256, settings.output_mode)
    store = JobStore(runtime.storage.client, target_bucket, jid)
    job = store.get_json("job.json")
    if job is None:
        job = _open_job(runtime, store, info, header, shards, target_key, marker_key, seconds)
    log.info(
        "fan-out %s: %d x %d, %d tiles (~%.0f s in one invocation) -> %d shards, job %s",
        info.uri,
        header.height,
        header.width,
        plan.tiles,
        seconds,
        len(job["bands"]),
        s3_uri(target_bucket, store.key("job.json")),
    )
    # A re-delivered upload event re-joins the job; it sends the stats messages again only if the first
    # coordinator may have died before sending them all (no stats-sent.json yet).
    if not store.exists("stats-sent.json"):
        for index in range(len(job["bands"])):
            send(ShardMessage(target_bucket, jid, "stats", index))
        store.put_json("stats-sent.json", {"time": time.time()})
    return Outcome(
        OutcomeStatus.FANNED_OUT,
        info.bucket,
        info.key,
        output_key=target_key,
        output_bucket=target_bucket,
        detail=f"{len(job['bands'])} shards, job {jid}",
        pixels=header.pixels,
        bytes_in=info.size,
    )


def _open_job(runtime, store: JobStore, info: ObjectInfo, header, shards, target_key, marker_key, seconds) -> dict:
    array = PlannedArray(
        output=runtime.settings.output_mode,
        shape=(header.height, header.width),
        dtype=shards.dtype,
        crs=header.crs,
        transform=header.transform,
    )
    client = store.client
    with s3_errors(s3_uri(store.bucket, target_key), writing=True):
        upload_id = client.create_multipart_upload(
            Bucket=store.bucket,
            Key=target_key,
            Metadata=output_metadata(info, runtime.model.sha256, array),
            ContentType=OUTPUT_CONTENT_TYPE,
        )["UploadId"]
    job = {
        "source": {"bucket": info.bucket, "key": info.key, "etag": info.etag, "version_id": info.version_id},
        "source_size": info.size,
        "source_dtype": header.dtypes[runtime.model.card.bands[0] - 1],
        "target_key": target_key,
        "marker_key": marker_key,
        "upload_id": upload_id,
        "dtype": shards.dtype,
        "shape": [header.height, header.width],
        "bands": [asdict(band) for band in shards.bands],
        "estimated_seconds": seconds,
        "created": time.time(),
    }
    if store.put_json("job.json", job, if_absent=True):
        # ``rasterfn status s3://bucket/key`` finds the job from the input's key alone.
        pointer = JobStore(client, store.bucket, pointer_name(info.bucket, info.key))
        pointer.put_json("latest.json", {"job": store.job, "created": job["created"]})
        return job
    # A re-delivered coordinator message lost the race: adopt the winner's job, drop our upload.
    _abort(client, store.bucket, target_key, upload_id)
    return store.get_json("job.json")


def run_shard(
    message: ShardMessage, runtime: Runtime, send: Send | None = None, *, last_attempt: bool = False
) -> dict[str, Any]:
    """Do one shard message's work (idempotent); returns a small summary for the logs.

    ``last_attempt``: the queue will not deliver this message again (Lambda's last allowed receive), so an
    unreadable band fails the job now instead of waiting for a retry that never comes.
    """
    send = send or sender_from_settings(runtime.settings)
    if send is None:
        raise ConfigError("a shard message arrived but neither FANOUT_QUEUE_URL nor K_SINK is set")
    job, store = _load_job(message, runtime)
    summary = {"job": message.job, "phase": message.phase, "shard": message.index}
    if job is None or not 0 <= message.index < len(job["bands"]):
        return {**summary, "status": "unknown job or shard (expired?)"}
    if store.exists("failed.json") or store.exists("done.json"):
        return {**summary, "status": "job already finished"}
    band = RowBand(**job["bands"][message.index])
    try:
        if message.phase == "stats":
            return {**summary, "status": _stats_phase(runtime, store, job, band, send)}
        return {**summary, "status": _predict_phase(runtime, store, job, band)}
    except InputError as exc:
        if not last_attempt and _retry_read_once(store, message, exc):
            raise TransientError(f"shard {message.event_id}: {exc} (retried once before the file is judged)") from exc
        _fail(runtime, store, job, exc, marker=True)
        return {**summary, "status": "failed", "error": str(exc)}
    except ObjectMissingError as exc:  # the upload was replaced: its own event supersedes this job
        _fail(runtime, store, job, exc, marker=False)
        return {**summary, "status": "abandoned", "error": str(exc)}


def _retry_read_once(store: JobStore, message: ShardMessage, exc: InputError) -> bool:
    """Whether a shard's unreadable rows get one more try (through the queue) before the job fails.

    Rows are read over HTTP: a fetch that failed past GDAL's own retries (S3 throttling, a dropped connection)
    reaches us as libtiff's "read error", the same words as corrupt bytes. The first such failure of a shard is
    retried after the queue's back-off; the second is the file's. A conditional put decides which is first.
    """
    if type(exc) is not RasterReadError:
        return False
    return store.put_json(f"read-retried/{message.phase}-{message.index}.json", {"error": str(exc)}, if_absent=True)


def fail_shard_job(message: ShardMessage, runtime: Runtime, exc: InputError) -> dict[str, Any]:
    """End the job of a shard whose processing crashed the function (``<stem>.error.json``, no ``.npy``).

    Called when a shard message killed its worker process on its last allowed receive: retrying it cannot
    help, and without this the job would wait for that part until its objects expire.
    """
    job, store = _load_job(message, runtime)
    summary = {"job": message.job, "phase": message.phase, "shard": message.index}
    if job is None:
        return {**summary, "status": "unknown job or shard (expired?)"}
    _fail(runtime, store, job, exc, marker=True)
    return {**summary, "status": "failed", "error": str(exc)}


def _load_job(message: ShardMessage, runtime: Runtime) -> tuple[dict | None, JobStore]:
    """The message's ``job.json`` (``None`` when absent), after checking its buckets against ALLOWED_BUCKETS."""
    settings = runtime.settings
    allowed = settings.allowed_buckets
    # Job state lives in the output bucket: OUTPUT_BUCKET, or the input's bucket when that is unset.
    if allowed and message.bucket not in allowed_bucket_names(allowed) | {settings.output_bucket}:
        # Before any S3 call: a forged message must not make the function read a bucket it was not given.
        raise ForbiddenObjectError(f"shard message for bucket {message.bucket!r}, outside ALLOWED_BUCKETS")
    store = JobStore(runtime.storage.client, message.bucket, message.job)
    job = store.get_json("job.json")
    if job is not None:
        source = job["source"]
        check_allowed([ObjectRef(source["bucket"], source["key"])], allowed)
    return job, store


def _stats_phase(runtime: Runtime, store: JobStore, job: dict, band: RowBand, send: Send) -> str:
    count = len(job["bands"])
    if not store.exists(f"stats/{band.index}.npz"):
        with _source(runtime, job) as src:
            store.put_histograms(band.index, band_statistics(runtime.model, src, band, _options(runtime)))
    if store.count("stats") < count:
        return "stats counted"
    if store.exists("predict-sent.json"):  # a duplicate of a stats message, after the reduction
        return "stats reduced earlier"
    p90s = merge_percentiles(job["source_dtype"], (store.get_histograms(i) for i in range(count)))
    store.put_json("p90s.json", {"p90s": p90s}, if_absent=True)
    # Every stats shard that sees the last histogram before predict-sent.json exists sends: a duplicate send is
    # harmless (two racing shards), a lost one is not (a shard that dies here is redelivered and sends again).
    for index in range(count):
        send(ShardMessage(store.bucket, store.job, "predict", index))
    store.put_json("predict-sent.json", {"time": time.time()})
    return "stats reduced"


def _predict_phase(runtime: Runtime, store: JobStore, job: dict, band: RowBand) -> str:
    count = len(job["bands"])
    status = "part already uploaded"
    if not store.exists(f"parts/{band.index}.json"):
        p90s = store.get_json("p90s.json")["p90s"]
        etag = _upload_band(runtime, store, job, band, p90s)
        if etag is None:  # a duplicate of this shard finished the job while this one computed
            return "job already finished"
        store.put_json(f"parts/{band.index}.json", {"etag": etag, "time": time.time()})
        status = "part uploaded"
    if store.count("parts") < count:
        return status
    return _complete(store, job)


def _upload_band(runtime: Runtime, store: JobStore, job: dict, band: RowBand, p90s: list[float]) -> str | None:
    dtype = np.dtype(job["dtype"])
    with _source(runtime, job) as src, tempfile.TemporaryFile(dir=runtime.settings.tmp_dir) as part:
        if band.index == 0:
            part.write(npy_header(tuple(job["shape"]), dtype))

        def write(rows: np.ndarray) -> None:
            part.write(np.ascontiguousarray(rows, dtype=dtype).data)

        predict_band(runtime.model, src, band, p90s, write, _options(runtime))
        part.seek(0)
        if store.exists("done.json"):
            return None
        try:
            response = store.client.upload_part(
                Bucket=store.bucket,
                Key=job["target_key"],
                UploadId=job["upload_id"],
                PartNumber=band.part_number,
                Body=part,
            )
        except ClientError as exc:
            if _code(exc) == "NoSuchUpload":  # completed (or aborted) since: nothing left to add
                return None
            with s3_errors(s3_uri(store.bucket, job["target_key"]), writing=True):
                raise
    return response["ETag"]


def _complete(store: JobStore, job: dict) -> str:
    parts = [{"PartNumber": i + 1, "ETag": store.get_json(f"parts/{i}.json")["etag"]} for i in range(len(job["bands"]))]
    try:
        store.client.complete_multipart_upload(
            Bucket=store.bucket, Key=job["target_key"], UploadId=job["upload_id"], MultipartUpload={"Parts": parts}
        )
    except ClientError as exc:
        if _code(exc) == "NoSuchUpload":  # another shard completed it first (or the job was aborted)
            return "completed by another shard"
        with s3_errors(s3_uri(store.bucket, job["target_key"]), writing=True):
            raise
    store.put_json("done.json", {"time": time.time(), "output": s3_uri(store.bucket, job["target_key"])})
    log.info("fan-out job %s complete: %s", store.job, s3_uri(store.bucket, job["target_key"]))
    return "completed"


def _fail(runtime: Runtime, store: JobStore, job: dict, exc: Exception, *, marker: bool) -> None:
    if not store.put_json("failed.json", {"error": type(exc).__name__, "message": str(exc)}, if_absent=True):
        return
    _abort(store.client, store.bucket, job["target_key"], job["upload_id"])
    log.warning("fan-out job %s failed: %s", store.job, exc)
    if marker:
        source = job["source"]
        ref = ObjectRef(source["bucket"], source["key"], etag=source["etag"], version_id=source["version_id"])
        reject_object(ref, runtime, exc)  # the same <stem>.error.json a single invocation writes


def _abort(client: Any, bucket: str, key: str, upload_id: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if _code(exc) != "NoSuchUpload":
            with s3_errors(s3_uri(bucket, key), writing=True):
                raise


def _options(runtime: Runtime):
    return replace(runtime.options, max_pixels=runtime.settings.max_scene_pixels)


@contextlib.contextmanager
def _source(runtime: Runtime, job: dict) -> Iterator[RemoteRaster]:
    """The job's exact source version, read where it lies (ranged GETs of its rows' blocks, never downloaded)."""
    storage, source = runtime.storage, job["source"]
    ref = ObjectRef(source["bucket"], source["key"], etag=source["etag"], version_id=source["version_id"])
    info = storage.locate(ref)  # gone or replaced since the job started: ObjectMissingError, the job is abandoned
    with remote_source(storage, info, expires_s=url_lifetime_s(runtime.settings)) as src:
        yield src
