"""Where the Knative function runs inference: in-process (tests, tools) or a pool of worker processes.

The app asks a *backend* for three things, from a worker thread: ``predict(job, cancelled)`` for
``POST /inference``, ``process(job, cancelled)`` for each object of an event and ``shard(job, cancelled)`` for a
fan-out shard message (:mod:`handler.fanout`). ``cancelled`` says whether
the client has gone; the job's deadline is ``INFERENCE_TIMEOUT_S``.

- :class:`InProcessBackend` runs them over a :class:`~handler.runtime.Runtime` in this process.
- :class:`WorkerPool` runs them in ``MAX_CONCURRENT_INFERENCES`` worker processes
  (:class:`handler.isolation.Worker`), each holding the model once. A worker that dies (a native crash in
  GDAL or torch, the OOM killer) is replaced; the request it was serving is answered 422, and an event's
  object gets its ``<stem>.error.json`` (written by the replacement). The server itself never goes down.
  The pool is the app's runtime source too (``state`` / ``wait``), so readiness means "workers loaded".

Example:
    >>> pool = WorkerPool(get_settings())                 # doctest: +SKIP
    >>> pool.start(); create_app(settings, pool)          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from handler.errors import DeadlineError, TransientError, WorkerCrashedError
from handler.fanout import ShardResult
from handler.isolation import (
    START_TIMEOUT_S,
    FailShardJob,
    Job,
    PredictJob,
    ProcessJob,
    RejectJob,
    ShardJob,
    Worker,
    run_job,
)
from handler.outcome import Outcome
from handler.runtime import Runtime
from handler.settings import Settings
from model.predictor.predict import PredictionResult

logger = logging.getLogger(__name__)

Cancelled = Callable[[], bool]


class InProcessBackend:
    """Runs jobs in the calling thread over one runtime: no crash isolation (tests, local tools)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def predict(self, job: PredictJob, cancelled: Cancelled) -> PredictionResult:
        return run_job(self.runtime, job, cancelled)

    def process(self, job: ProcessJob, cancelled: Cancelled) -> Outcome:
        return run_job(self.runtime, job, cancelled)

    def shard(self, job: ShardJob, cancelled: Cancelled) -> ShardResult:
        return run_job(self.runtime, job, cancelled)


class WorkerPool:
    """``size`` worker processes; a job takes an idle one, a dead one is replaced before the next job."""

    def __init__(self, settings: Settings, size: int | None = None, *, init: Callable[[], None] | None = None):
        self.settings = settings
        self.size = size or settings.max_concurrent_inferences
        self._init = init
        self._idle: queue.Queue[Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.replaced = 0  # workers started to replace dead ones (a metric for tests and logs)

    # --- the runtime-source protocol of handler.http.app

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._start_all, name="rasterfn-workers-start", daemon=True)
                self._thread.start()

    def state(self) -> tuple[bool, str]:
        if self._thread is None:
            return False, "not started"
        if self._error is not None:
            return False, f"workers failed to start: {self._error}"
        if not self._ready.is_set():
            return False, "loading model in the worker processes"
        return True, f"ready: {self.size} worker process(es)"

    def failed(self) -> BaseException | None:
        return self._error

    def wait(self) -> WorkerPool:
        self.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        while True:
            try:
                self._idle.get_nowait().stop()
            except queue.Empty:
                return

    # --- the backend

    def predict(self, job: PredictJob, cancelled: Cancelled) -> PredictionResult:
        return self._run(job, cancelled)

    def process(self, job: ProcessJob, cancelled: Cancelled) -> Outcome:
        try:
            return self._run(job, cancelled)
        except WorkerCrashedError as exc:
            # The object killed its worker: the replacement refuses it with an error marker, so the event
            # source does not send it again (and again).
            logger.error("%s crashed its worker: %s", job.ref.uri, exc)
            return self._run(RejectJob(job.ref, str(exc)), lambda: False)

    def shard(self, job: ShardJob, cancelled: Cancelled) -> ShardResult:
        try:
            return self._run(job, cancelled)
        except (WorkerCrashedError, DeadlineError) as exc:
            # The shard killed its worker, or outran INFERENCE_TIMEOUT_S and was killed: a redelivery would do
            # the same. A worker ends the job instead (failed.json, <stem>.error.json), as an input error does.
            logger.error("shard %s: %s", job.message.event_id, exc)
            return self._run(FailShardJob(job.message, exc), lambda: False)

    def _run(self, job: Job, cancelled: Cancelled) -> Any:
        # The app's slots admit at most ``size`` jobs at once, so a worker is free or being replaced.
        try:
            worker = self._idle.get(timeout=START_TIMEOUT_S)
        except queue.Empty as exc:
            raise TransientError(f"no worker process available: {self._error or 'still starting'}") from exc
        try:
            return worker.run(job, cancelled)
        finally:
            if worker.alive():
                self._idle.put(worker)
            else:
                self._replace(worker)

    def _replace(self, dead: Worker) -> None:
        # In the background: the request that killed the worker is answered at once, not after a model load.
        logger.warning("worker %s died (exit code %s): starting a new one", dead.pid, dead.process.exitcode)
        dead.stop()
        self.replaced += 1
        threading.Thread(target=self._add_worker, name="rasterfn-worker-replace", daemon=True).start()

    def _add_worker(self) -> None:
        try:
            self._idle.put(self._new_worker())
        except BaseException as exc:  # readiness reports it; Kubernetes restarts the pod
            logger.error("a replacement worker failed to start: %s", exc)
            self._error = exc

    def _new_worker(self) -> Worker:
        worker = Worker(self.settings, init=self._init)
        info = worker.wait_ready()
        logger.info(
            "worker %s ready: model %s (sha256 %s) on %s",
            worker.pid,
            info["model"],
            info["sha256"][:12],
            info.get("engine", "?"),
        )
        return worker

    def _start_all(self) -> None:
        try:
            for _ in range(self.size):
                self._idle.put(self._new_worker())
        except BaseException as exc:
            logger.error("workers failed to start: %s", exc)
            self._error = exc
            self.stop()
        finally:
            self._ready.set()


def backend_of(loaded: Any) -> Any:
    """The backend for what the app's runtime source loaded: a pool as it is, a Runtime in process."""
    return InProcessBackend(loaded) if isinstance(loaded, Runtime) else loaded
