"""Run one input's processing where a crash in native code cannot take the service down: a worker process.

GDAL, PROJ and torch are C and C++: a hostile file can make them abort (``std::bad_alloc``), segfault or be
OOM-killed, and a Python ``try`` catches none of that. A :class:`Worker` is a ``spawn``-context child process
that builds its own :class:`~handler.runtime.Runtime` (the model, loaded once per worker) and then runs
:class:`PredictJob` / :class:`ProcessJob` / :class:`ShardJob` (and the two crash follow-ups, :class:`RejectJob`
and :class:`FailShardJob`) messages sent over a pipe, one at a time. When
the child dies mid-job, :meth:`Worker.run` raises :class:`~handler.errors.WorkerCrashedError` (an input error:
the input that killed it is refused) and the caller starts a new worker.

Jobs carry a wall-clock deadline: the child checks it between tiles (``predict_file``'s ``interrupt``) and
raises :class:`~handler.errors.DeadlineError`; a child that does not answer within :data:`KILL_GRACE_S` after
the deadline, or after a cancellation, is killed. Used by the Knative pool (:mod:`handler.http.workers`)
and by Lambda on a message's last allowed receive (:func:`run_isolated`).

Example:
    >>> worker = Worker(settings)                                        # doctest: +SKIP
    >>> outcome = worker.run(ProcessJob(ObjectRef("scenes", "a.tif")))   # doctest: +SKIP
    >>> worker.stop()                                                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from handler.errors import CancelledError, DeadlineError, TransientError, WorkerCrashedError
from handler.fanout import ShardMessage, fail_shard_job, run_shard
from handler.objects import ObjectRef
from handler.outputs import reject_object
from handler.process import process_object
from handler.products import cog_sink
from handler.runtime import build_runtime
from handler.settings import Settings
from model.errors import ConfigError, InputError, RasterfnError
from model.predictor.predict import predict_file

log = logging.getLogger(__name__)

# Seconds a worker may take to answer once its deadline passed or it was cancelled: one tile's worth.
KILL_GRACE_S = 30.0
POLL_S = 0.1
START_TIMEOUT_S = 600.0  # a first download of large weights
CANCEL = "cancel"


@dataclass(frozen=True)
class PredictJob:
    """``POST /inference``: segment the file at ``src`` into ``dst`` (both in the caller's private temp dir)."""

    src: Path
    dst: Path
    output: str
    max_pixels: int
    shown_name: str  # the client's name for the file, for error messages
    deadline: float | None = None  # time.time() by which it must be done
    cog: Path | None = None  # also write the COG of the mask (or scores) here


@dataclass(frozen=True)
class ProcessJob:
    """An event's object: :func:`handler.process.process_object`."""

    ref: ObjectRef
    deadline: float | None = None


@dataclass(frozen=True)
class RejectJob:
    """Write the error marker of an object whose processing crashed a worker."""

    ref: ObjectRef
    message: str


@dataclass(frozen=True)
class ShardJob:
    """One band of a sharded raster: :func:`handler.fanout.run_shard`."""

    message: ShardMessage
    deadline: float | None = None
    last_attempt: bool = False  # the queue will not deliver it again: no retry of unreadable rows


@dataclass(frozen=True)
class FailShardJob:
    """End the job of a shard that crashed or outran its worker: :func:`handler.fanout.fail_shard_job`."""

    message: ShardMessage
    error: InputError  # WorkerCrashedError or DeadlineError: what the job's marker says


Job = PredictJob | ProcessJob | RejectJob | ShardJob | FailShardJob


def make_interrupt(deadline: float | None, timeout_s: int, cancelled: Callable[[], bool]) -> Callable[[], None]:
    """The hook ``predict_file`` calls between tiles: raises when the deadline passed or the job was cancelled."""

    def interrupt() -> None:
        if cancelled():
            raise CancelledError("the request was abandoned; inference stopped")
        if deadline is not None and time.time() > deadline:
            raise DeadlineError(f"processing did not finish within {timeout_s} s (INFERENCE_TIMEOUT_S)")

    return interrupt


def run_job(runtime: Any, job: Job, cancelled: Callable[[], bool] = lambda: False) -> Any:
    """Run ``job`` in this process over ``runtime`` (what a worker does; also the in-process backend)."""
    timeout_s = runtime.settings.inference_timeout_s
    if isinstance(job, RejectJob):
        return reject_object(job.ref, runtime, WorkerCrashedError(job.message))
    if isinstance(job, FailShardJob):
        return fail_shard_job(job.message, runtime, job.error)
    if isinstance(job, ShardJob):
        # No between-tiles interrupt in a band's passes: a shard past its deadline is killed (Worker.run).
        return run_shard(job.message, runtime, last_attempt=job.last_attempt)
    interrupt = make_interrupt(job.deadline, timeout_s, cancelled)
    if isinstance(job, ProcessJob):
        return process_object(job.ref, runtime, interrupt=interrupt)
    options = replace(runtime.options, output=job.output, max_pixels=job.max_pixels, progress=False)
    try:
        sinks = [] if job.cog is None else [cog_sink(job.cog, runtime.model.card, job.output, job.cog.parent)]
        return predict_file(runtime.model, job.src, job.dst, options, interrupt=interrupt, sinks=sinks)
    except InputError as exc:
        # The predictor names our temp file; the client knows its upload by the name it sent.
        raise exc.renamed(job.src.name, job.shown_name) from exc


class Worker:
    """One child process holding a loaded model; :meth:`run` sends it a job and waits for the answer."""

    def __init__(self, settings: Settings, *, init: Callable[[], None] | None = None) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process that holds torch's threads
        # One pipe, no semaphores or shared memory: Lambda has no /dev/shm.
        self._conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child_conn, settings, init), name="rasterfn-worker", daemon=True
        )
        self.process.start()
        child_conn.close()
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Block until the child has loaded its model; raise what loading raised, or :class:`ConfigError`."""
        kind, payload = self._receive(time.monotonic() + timeout, lambda: False, "start-up")
        if kind != "ready":
            self.stop()
            raise payload if isinstance(payload, BaseException) else ConfigError(f"worker failed to start: {payload}")
        self.info = payload
        return payload

    def run(self, job: Job, cancelled: Callable[[], bool] = lambda: False) -> Any:
        """Run ``job`` in the child; its result, or what it raised. A dead child: :class:`WorkerCrashedError`."""
        self._conn.send(job)
        limit = getattr(job, "deadline", None)
        hard_limit = time.monotonic() + (limit - time.time()) + KILL_GRACE_S if limit is not None else None
        kind, payload = self._receive(hard_limit, cancelled, "job")
        if kind == "error":
            raise payload
        return payload

    def _receive(self, hard_limit: float | None, cancelled: Callable[[], bool], what: str) -> tuple[str, Any]:
        cancel_at: float | None = None
        while True:
            if self._conn.poll(POLL_S):
                try:
                    return self._conn.recv()
                except (EOFError, OSError):
                    break  # the child died while (or instead of) answering
            if not self.process.is_alive():
                break
            now = time.monotonic()
            if cancel_at is None and cancelled():
                self._conn.send(CANCEL)  # the child sees it at its next between-tiles check
                cancel_at = now
            if cancel_at is not None and now > cancel_at + KILL_GRACE_S:
                self.kill()
                raise CancelledError("the request was abandoned; its worker did not stop and was replaced")
            if hard_limit is not None and now > hard_limit:
                self.kill()
                raise DeadlineError("processing did not finish in time (INFERENCE_TIMEOUT_S); its worker was replaced")
        self.process.join(timeout=5)
        raise WorkerCrashedError(f"processing crashed its worker process ({describe_exit(self.process.exitcode)})")

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join(timeout=5)

    def stop(self) -> None:
        """Ask the child to exit, then make sure it did."""
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.kill()
        self._conn.close()

    def alive(self) -> bool:
        return self.process.is_alive()


def run_isolated(settings: Settings, job: Job, *, init: Callable[[], None] | None = None) -> Any:
    """Run one job in a fresh worker process and stop it (Lambda, on a message's last allowed receive)."""
    worker = Worker(settings, init=init)
    try:
        worker.wait_ready()
        return worker.run(job)
    finally:
        worker.stop()


def describe_exit(code: int | None) -> str:
    """``-6`` -> ``'killed by SIGABRT'`` (pure).

    >>> describe_exit(-11), describe_exit(3), describe_exit(None)
    ('killed by SIGSEGV', 'exit code 3', 'no exit code')
    """
    if code is None:
        return "no exit code"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _worker_main(conn: Any, settings: Settings, init: Callable[[], None] | None) -> None:
    """The child: build the runtime, answer "ready", then run jobs until told to stop (``None``).

    Anything the parent sends while a job runs is a cancellation (:data:`CANCEL`): the job's ``interrupt``
    sees it waiting in the pipe; one that arrives after the job ended is dropped before the next job.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops us
    try:
        if init is not None:
            init()
        runtime = build_runtime(settings)
    except BaseException as exc:
        conn.send(("failed", _picklable(exc)))
        return
    model = runtime.model
    conn.send(("ready", {"model": model.card.name, "sha256": model.sha256, "engine": model.engine}))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if job is None:
            return
        if job == CANCEL:
            continue
        try:
            result = run_job(runtime, job, conn.poll)
            conn.send(("ok", result))
        except Exception as exc:
            conn.send(("error", _picklable(exc)))


def _picklable(exc: BaseException) -> BaseException:
    """Our errors cross the pipe as they are; anything else as a RasterfnError with its text (no traceback)."""
    if isinstance(exc, RasterfnError):
        return exc
    if isinstance(exc, MemoryError):
        return TransientError("out of memory in the worker, retry later")
    return RasterfnError(f"{type(exc).__name__}: {exc}")
