"""``rasterfn demo``: the whole AWS pipeline on this machine, offline, in one process.

moto's server on 127.0.0.1 plays S3 and SQS with the topology Terraform creates (:mod:`handler.local.moto_stack`);
a local event-source mapping (:mod:`handler.local.local_esm`) feeds the queue's messages to the very
``lambda_handler`` the container runs. The demo uploads ``data/test-1.tif`` (and any files given), prints one
line per stage of each object (uploaded -> notified -> processing -> written), downloads and checks every
``.npy``, and prints a summary. Exit code 0 only when every output is a valid mask and the DLQ is empty.

Nothing can reach AWS: the process gets fake credentials and an endpoint on 127.0.0.1 before the handler is
imported, and the demo refuses to run unless every client (the handler's included) points there.

Example:
    $ rasterfn demo                     # data/test-1.tif -> scenes/test-1.npy
    $ rasterfn demo my.tif --serve      # then: aws --endpoint-url ... s3 cp x.tif s3://rasterfn-demo/uploads/
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import rasterio
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from rasterio.errors import RasterioError

from handler.events import parse_sqs_body
from handler.local.local_esm import EsmConfig, Handler, Invocation, LocalEventSourceMapping
from handler.local.moto_stack import (
    DEFAULT_SUFFIXES,
    MotoServer,
    Stack,
    StackSpec,
    client,
    create_stack,
    local_aws_environ,
    patched_environ,
    queue_depth,
    verify_clients_local,
)
from handler.local.paths import SAMPLE_RASTER
from handler.local.results import find_result, load_cog_mask, load_npy, validate_mask
from handler.runtime import get_runtime
from handler.settings import ENV_ALLOWED_BUCKETS, ENV_OUTPUTS, Settings, parse_outputs
from model.errors import ConfigError, InputError
from model.options import DEFAULT_OUTPUT_FORMATS

SAMPLE_PREFIX = "scenes/"
UPLOAD_PREFIX = "uploads/"
UPLOAD_WORKERS = 8
POLL_INTERVAL_S = 0.2
DLQ_CHECK_INTERVAL_S = 1.0
UPLOAD_WAIT_S = 30.0

# The handler's environment in this process (and only this process). Logs and metrics stay quiet unless the
# user asks otherwise: the demo's own progress lines are the output.
HANDLER_ENV = {
    "POWERTOOLS_TRACE_DISABLED": "1",
    "POWERTOOLS_METRICS_NAMESPACE": "rasterfn",
    "POWERTOOLS_SERVICE_NAME": "rasterfn",
    "OUTPUT_MODE": "mask",  # the demo validates masks
    "OUTPUT_BUCKET": None,  # outputs beside the inputs, in the demo bucket
    "OUTPUT_PREFIX": None,
    "MODEL_URI": None,  # the local model card; a real s3:// URI is not in the local S3
}
HANDLER_ENV_DEFAULTS = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}


@dataclass(frozen=True)
class Upload:
    path: Path
    key: str
    size: int
    shape: tuple[int, int] | None  # None: rasterio cannot read it (the function will reject it)


@dataclass
class Track:
    """The timeline of one object (mutable, guarded by :class:`Tracker`'s lock)."""

    key: str
    uploaded: float | None = None
    notified: float | None = None
    processing: float | None = None
    done: float | None = None
    status: str = "pending"  # pending | written | rejected | failed | none
    output_key: str | None = None
    output_size: int | None = None
    handler_s: float | None = None
    detail: str = ""
    receives: int = 0


@dataclass(frozen=True)
class Check:
    """A downloaded output and what the demo thinks of it."""

    key: str
    output_key: str | None
    shape: tuple[int, ...] | None
    dtype: str | None
    mask_fraction: float | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class Tracker:
    """Turns ESM callbacks and uploads into progress lines; thread-safe (callbacks come from the ESM)."""

    s3: Any
    bucket: str
    out: TextIO = sys.stdout
    formats: tuple[str, ...] = DEFAULT_OUTPUT_FORMATS  # what the handler writes for each upload (OUTPUTS)
    t0: float = field(default_factory=time.time)
    tracks: dict[str, Track] = field(default_factory=dict)
    invocations: int = 0
    uploading: set[str] = field(default_factory=set)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def track(self, key: str) -> Track:
        with self._lock:
            return self.tracks.setdefault(key, Track(key))

    def uploads_started(self, keys: list[str]) -> None:
        with self._lock:
            self.uploading.update(keys)

    def uploaded(self, upload: Upload, started: float, finished: float) -> None:
        with self._lock:
            self.uploading.discard(upload.key)
            self._changed.notify_all()
            t = self.track(upload.key)
            t.uploaded = started
            self._line(started, upload.key, "uploaded", f"{_mb(upload.size)} in {finished - started:.2f} s")

    def upload_failed(self, upload: Upload, exc: Exception) -> None:
        with self._lock:
            self.uploading.discard(upload.key)
            t = self.track(upload.key)
            t.status, t.detail = "failed", f"upload failed: {exc}"
            self._changed.notify_all()
            self._line(time.time(), upload.key, "failed", t.detail)

    def on_receive(self, event: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            self.invocations += 1
            for record in event["Records"]:
                sent = int(record["attributes"].get("SentTimestamp", now * 1000)) / 1000
                receives = int(record["attributes"].get("ApproximateReceiveCount", 1))
                try:
                    refs = parse_sqs_body(record["body"])
                except InputError as exc:
                    self._line(now, "(message)", "notified", f"unparseable body: {exc}")
                    continue
                if not refs:
                    self._line(now, "(s3:TestEvent)", "notified", "S3's test message for the new notification")
                for ref in refs:
                    # moto notifies before PutObject returns: let the "uploaded" line come first.
                    self._changed.wait_for(lambda key=ref.key: key not in self.uploading, UPLOAD_WAIT_S)
                    t = self.track(ref.key)
                    t.notified, t.processing, t.receives = sent, now, receives
                    t.status, t.done = "pending", None
                    queued = f"sent at {sent - self.t0:+.2f}s, {now - sent:.2f} s in the queue"
                    self._line(now, ref.key, "notified", f"SQS message {record['messageId'][:8]} ({queued})")
                    self._line(now, ref.key, "processing", f"receive #{receives}, batch of {len(event['Records'])}")

    def on_result(self, invocation: Invocation) -> None:
        since = datetime.fromtimestamp(invocation.started_at, UTC)
        failed = set(invocation.failed_ids)
        for record in invocation.event["Records"]:
            try:
                refs = parse_sqs_body(record["body"])
            except InputError:
                continue
            for ref in refs:
                result = find_result(self.s3, ref.bucket, ref.key, since=since, formats=self.formats)
                now = time.time()
                with self._lock:
                    t = self.track(ref.key)
                    t.handler_s, t.done = invocation.seconds, now
                    t.output_key, t.output_size, t.detail = result.key, result.size, result.detail
                    if result.status != "none":
                        t.status = result.status
                        what = f"{result.key} {_mb(result.size or 0)}"
                        what += f" ({result.detail})" if result.detail else ""
                    elif record["messageId"] in failed:
                        t.status = "failed"
                        what = invocation.error or "reported as failed: back in the queue after its visibility timeout"
                    else:
                        t.status, what = "none", "acknowledged, nothing written (skipped)"
                    self._line(now, ref.key, t.status, f"{what} [{invocation.seconds:.2f} s in the handler]")
                    for key, size in result.others:
                        self._line(now, ref.key, t.status, f"{key} {_mb(size)}")
                    self._changed.notify_all()

    def wait(self, keys: list[str], timeout: float, dlq_depth: Any) -> bool:
        """Wait until every key has a result; False on timeout or when something was dead-lettered."""
        deadline = time.monotonic() + timeout
        next_dlq_check = time.monotonic() + DLQ_CHECK_INTERVAL_S
        while True:
            with self._lock:
                if all(self.track(k).status != "pending" for k in keys):
                    return True
                now = time.monotonic()
                if now >= deadline:
                    return False
                self._changed.wait(min(POLL_INTERVAL_S, deadline - now))
            if time.monotonic() >= next_dlq_check:  # outside the lock: the ESM's callbacks need it
                next_dlq_check = time.monotonic() + DLQ_CHECK_INTERVAL_S
                if dlq_depth() > 0:
                    self._line(time.time(), "(dlq)", "dead-lettered", "a message reached the DLQ")
                    return False

    def _line(self, at: float, key: str, stage: str, what: str) -> None:
        print(f"  {at - self.t0:+7.2f}s  {key:<34} {stage:<10} {what}", file=self.out, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    files = [Path(f) for f in getattr(args, "files", [])]
    timeout = float(getattr(args, "timeout", 180.0))
    serve = bool(getattr(args, "serve", False))
    outputs = getattr(args, "outputs", None)
    formats = parse_outputs(outputs) if outputs else None
    return Demo(plan_uploads(files), outputs=formats).run(timeout=timeout, serve=serve)


def plan_uploads(
    files: list[Path], sample: Path = SAMPLE_RASTER, suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
) -> list[Upload]:
    """The objects to upload: the sample under ``scenes/``, each file under ``uploads/<name>``.

    Refused before anything starts: a missing file, a suffix the bucket notification ignores (it would
    never produce an output), two files with the same name.
    """
    if not sample.is_file():
        raise ConfigError(f"the demo raster {sample} is missing (it ships with the repository)")
    planned = [(sample, SAMPLE_PREFIX + sample.name)]
    seen: dict[str, Path] = {}
    for path in files:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        if not path.name.endswith(suffixes):
            raise InputError(
                f"{path}: only keys ending in {' or '.join(suffixes)} trigger the function "
                "(S3 suffix filters are case-sensitive)"
            )
        if path.name in seen:
            raise InputError(f"{path} and {seen[path.name]} would both be uploads/{path.name}")
        seen[path.name] = path
        planned.append((path, UPLOAD_PREFIX + path.name))
    return [Upload(path, key, path.stat().st_size, raster_shape(path)) for path, key in planned]


def raster_shape(path: Path) -> tuple[int, int] | None:
    """(height, width) from the raster's header; None when rasterio cannot open it."""
    try:
        with rasterio.open(path) as src:
            return (src.height, src.width)
    except RasterioError:
        return None


class Demo:
    """One run: stack up, handler in, uploads, waiting, checks, summary (and, with ``serve``, watching)."""

    def __init__(
        self,
        uploads: list[Upload],
        *,
        out: TextIO | None = None,
        spec: StackSpec | None = None,
        load_handler: Callable[[str], Handler] | None = None,
        outputs: tuple[str, ...] | None = None,
    ) -> None:
        self.uploads = uploads
        self.outputs = outputs  # OUTPUTS for the handler; None: the environment's (default npy)
        self.load_handler = load_handler if load_handler is not None else load_lambda_handler
        self.out = out if out is not None else sys.stdout
        self.spec = spec if spec is not None else StackSpec()

    def run(self, *, timeout: float, serve: bool = False) -> int:
        t_start = time.perf_counter()
        with MotoServer() as server:
            url = server.endpoint_url
            # As Terraform does: the function filters on the suffixes the notifications use.
            env = {
                **local_aws_environ(url, self.spec.region),
                **HANDLER_ENV,
                "INPUT_SUFFIXES": ",".join(self.spec.suffixes),
            }
            env.update({k: v for k, v in HANDLER_ENV_DEFAULTS.items() if k not in os.environ})
            # Fail closed, as a deployment does: the handler may touch the demo's bucket alone unless told more.
            if not os.environ.get(ENV_ALLOWED_BUCKETS, "").strip():
                env[ENV_ALLOWED_BUCKETS] = self.spec.bucket
            if self.outputs is not None:
                env[ENV_OUTPUTS] = ",".join(self.outputs)
            with patched_environ(env):
                verify_clients_local(url, self.spec.region)
                stack = create_stack(url, self.spec)
                self._say(
                    f"rasterfn demo: moto S3 + SQS on {url} | bucket {stack.bucket} -> queue "
                    f"{self.spec.queue_name} (DLQ after {self.spec.max_receive_count} receives)"
                )
                t0 = time.perf_counter()
                handler = self.load_handler(url)
                init_s = time.perf_counter() - t0
                if _is_true(os.environ.get("POWERTOOLS_METRICS_DISABLED")):
                    handler = _without_prints(handler)
                self._say(f"init: lambda_handler imported, model loaded once in {init_s:.2f} s")
                return self._run_pipeline(stack, handler, init_s, t_start, timeout=timeout, serve=serve)

    def _run_pipeline(
        self, stack: Stack, handler: Any, init_s: float, t_start: float, *, timeout: float, serve: bool
    ) -> int:
        s3 = client("s3", stack.endpoint_url, stack.region)
        sqs = client("sqs", stack.endpoint_url, stack.region)
        tracker = Tracker(s3, stack.bucket, out=self.out, formats=Settings.from_env().outputs)
        esm = LocalEventSourceMapping(
            sqs,
            EsmConfig(stack.queue_url, stack.queue_arn, region=stack.region),
            handler,
            on_receive=tracker.on_receive,
            on_result=tracker.on_result,
        )
        with esm:
            self._upload_all(s3, stack.bucket, tracker)
            finished = tracker.wait([u.key for u in self.uploads], timeout, lambda: queue_depth(sqs, stack.dlq_url))
            checks = [self._check(s3, stack.bucket, u, tracker.track(u.key)) for u in self.uploads]
            dlq = queue_depth(sqs, stack.dlq_url)
            self._say(
                render_summary(
                    self.uploads,
                    tracker,
                    checks,
                    dlq=dlq,
                    init_s=init_s,
                    wall_s=time.perf_counter() - t_start,
                )
            )
            if not finished:
                self._say(f"gave up waiting after {timeout:.0f} s (--timeout)")
            code = 0 if finished and dlq == 0 and all(c.ok for c in checks) else 1
            if serve:
                self._serve(stack)
        return code

    def _upload_all(self, s3: Any, bucket: str, tracker: Tracker) -> None:
        tracker.uploads_started([u.key for u in self.uploads])

        def put(upload: Upload) -> None:
            started = time.time()
            try:
                s3.upload_file(str(upload.path), bucket, upload.key)
            except (BotoCoreError, ClientError, S3UploadFailedError, OSError) as exc:
                tracker.upload_failed(upload, exc)
            else:
                tracker.uploaded(upload, started, time.time())

        # All at once, as a burst of users would: the queue absorbs it.
        with ThreadPoolExecutor(max_workers=min(UPLOAD_WORKERS, len(self.uploads))) as pool:
            list(pool.map(put, self.uploads))

    def _check(self, s3: Any, bucket: str, upload: Upload, track: Track) -> Check:
        if track.status != "written" or track.output_key is None:
            problem = {"pending": "no output yet", "none": "nothing written"}.get(track.status, track.status)
            return Check(upload.key, track.output_key, None, None, None, f"{problem} {track.detail}".strip())
        try:
            body = s3.get_object(Bucket=bucket, Key=track.output_key)["Body"].read()
            array = load_npy(body) if track.output_key.endswith(".npy") else load_cog_mask(body)
        except ValueError as exc:
            return Check(upload.key, track.output_key, None, None, None, f"not a loadable mask: {exc}")
        problem = validate_mask(array, upload.shape)
        fraction = float(array.mean()) if problem is None and array.size else None
        return Check(upload.key, track.output_key, tuple(array.shape), str(array.dtype), fraction, problem)

    def _serve(self, stack: Stack) -> None:
        url = stack.endpoint_url
        self._say(
            "\nServing until Ctrl-C. Endpoint: "
            f"{url} (region {stack.region}, bucket {stack.bucket}). Drop your own rasters:\n"
            f"  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION={stack.region} "
            f"aws --endpoint-url {url} s3 cp scene.tif s3://{stack.bucket}/{UPLOAD_PREFIX}\n"
            f"Each output appears beside its upload (s3://{stack.bucket}/{UPLOAD_PREFIX}scene.npy):"
        )
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            self._say("stopping")

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def render_summary(
    uploads: list[Upload], tracker: Tracker, checks: list[Check], *, dlq: int, init_s: float, wall_s: float
) -> str:
    """The summary table (pure but for reading the tracker's timelines)."""
    header = ("input", "output", "shape", "dtype", "mask", "upload->out", "handler", "check")
    rows = [header]
    for upload, check in zip(uploads, checks, strict=True):
        t = tracker.track(upload.key)
        latency = t.done - t.uploaded if t.done and t.uploaded else None
        rows.append(
            (
                upload.key,
                check.output_key or "-",
                "x".join(map(str, check.shape)) if check.shape else "-",
                check.dtype or "-",
                f"{check.mask_fraction:.1%}" if check.mask_fraction is not None else "-",
                f"{latency:.2f} s" if latency is not None else "-",
                f"{t.handler_s:.2f} s" if t.handler_s is not None else "-",
                "ok" if check.ok else f"FAIL: {check.problem}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["", "summary:"]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    valid = sum(c.ok for c in checks)
    lines.append(
        f"{valid}/{len(checks)} outputs valid | DLQ depth: {dlq} | model init: {init_s:.2f} s (once) | "
        f"invocations: {tracker.invocations} | wall: {wall_s:.1f} s"
    )
    lines.append("demo OK" if valid == len(checks) and dlq == 0 else "demo FAILED")
    return "\n".join(lines)


def load_lambda_handler(endpoint_url: str) -> Handler:
    """Import ``lambda_handler`` (Lambda's INIT phase: the model loads here, once), then refuse to go on
    unless its S3 client talks to ``endpoint_url``."""
    # Imported here, not at the top: importing it is Lambda's INIT, which must see the demo's environment.
    from handler.lambda_function import lambda_handler

    actual = get_runtime().storage.client.meta.endpoint_url.rstrip("/")
    if actual != endpoint_url.rstrip("/"):
        raise ConfigError(
            f"refusing to run: the handler's S3 client uses {actual}, not the local {endpoint_url} "
            "(was the handler imported before the demo set up its environment?)"
        )
    return lambda_handler


def _without_prints(handler: Handler) -> Handler:
    """The handler with its ``print`` output dropped: powertools prints its cold-start EMF metric even when
    metrics are disabled. Its logger (and the demo's own lines) write to streams bound earlier: unaffected."""

    def quiet(event: dict[str, Any], context: Any) -> Any:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message="No application metrics to publish")
            return handler(event, context)

    return quiet


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _mb(size: int) -> str:
    return f"{size / 1024**2:.2f} MB" if size >= 10_000 else f"{size} B"
