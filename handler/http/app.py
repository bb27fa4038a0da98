"""The Knative function's HTTP routes, as a Starlette app that :mod:`handler.knative` delegates ``handle`` to.

Routes (func-python itself answers ``/health/liveness`` and ``/health/readiness`` before they reach here):

- ``POST /inference``: the old Flask API. A multipart ``file`` field or a raw ``image/tiff`` /
  ``application/octet-stream`` body; ``?output=mask|mask-uint8|score``. Answers the ``.npy`` as an attachment.
- ``POST /``: bucket events (MinIO webhook, S3 notification, CloudEvents binary or structured), processed by
  exactly the code Lambda runs (``parse_event`` -> ``skip_reason`` -> ``process_object``); answers a JSON
  summary, and a binary-mode CloudEvent when the request was one. A CloudEvent of type ``dev.rasterfn.shard``
  is a fan-out shard message (:mod:`handler.fanout`), run as Lambda runs one from its queue.
- ``GET /healthz``: the old API's health check (200 once the model is loaded, 503 before).
- ``GET /metrics``: Prometheus text format.

Errors are JSON ``{"error": ..., "detail": ...}``: 400 no file / bad event / too many records or parts, 401 bad
token, 403 a bucket outside ``ALLOWED_BUCKETS``, 408 a stalled upload, 413 too large (checked while streaming),
415 wrong Content-Type, 422 unreadable raster (or one that crashed its worker process), 503 busy or transient
(with ``Retry-After``, so MinIO retries), 504 past ``INFERENCE_TIMEOUT_S``, 500 anything else (logged with a
request id; no traceback is sent).

Inference runs in the backend of :mod:`handler.http.workers` (worker processes when deployed), with a deadline
checked between tiles and the connection watched meanwhile: a client that goes away stops its inference. An
upload holds an admission place while it is received (:meth:`InferenceSlots.admit`).

Example:
    >>> from starlette.testclient import TestClient
    >>> app = create_app(Settings(), runtime_source)          # doctest: +SKIP
    >>> TestClient(app).get("/healthz").json()["status"]      # doctest: +SKIP
    'ok'
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from handler.access import check_allowed
from handler.errors import (
    BusyError,
    CancelledError,
    TransientError,
    UploadError,
    UploadTimeoutError,
)
from handler.events import MAX_EVENT_BYTES, check_record_count, cloudevent_mode, parse_event
from handler.fanout import ShardMessage, shard_from_cloudevent
from handler.http.auth import BEARER_CHALLENGE, bearer_refusal
from handler.http.errors import error_response, map_error
from handler.http.metrics import Metrics, create_metrics, method_label, record_outcome, render_metrics
from handler.http.replies import cloudevent_reply
from handler.http.slots import InferenceSlots
from handler.http.uploads import check_content_length, receive_upload
from handler.http.workers import backend_of
from handler.isolation import PredictJob, ProcessJob, ShardJob
from handler.objects import COG_SUFFIXES, ObjectRef
from handler.outcome import Outcome, summarise
from handler.products import COG_MEDIA_TYPE
from handler.settings import OUTPUT_MODES, Settings
from model.errors import ConfigError, InputError, RasterTooLargeError
from model.predictor.predict import PredictionResult

logger = logging.getLogger(__name__)

NPY_MEDIA_TYPE = "application/octet-stream"
COG_FORMATS = ("cog", "tif", "tiff")


def wants_cog(accept: str, format_param: str | None) -> bool:
    """Whether ``POST /inference`` answers the COG: ``?format=cog``, or an Accept naming ``image/tiff`` (pure).

    The old API's clients send no Accept (or ``*/*``) and keep getting the ``.npy``.

    >>> wants_cog("*/*", None), wants_cog("image/tiff; application=geotiff", None), wants_cog("", "cog")
    (False, True, True)
    """
    if format_param is not None:
        return format_param.lower() in COG_FORMATS
    media = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "image/tiff" in media


TRANSIENT_RETRY_AFTER_S = 10
LOADING_RETRY_AFTER_S = 5


class RuntimeSource(Protocol):
    """Where the app gets the loaded runtime (settings, model, storage); see ``knative.RuntimeLoader``."""

    def state(self) -> tuple[bool, str]:
        """(ready, message), without blocking."""
        ...

    def wait(self) -> Any:
        """The loaded :class:`handler.runtime.Runtime`; blocks while it loads, raises what loading raised."""
        ...


def create_app(
    settings: Settings,
    runtime: RuntimeSource,
    *,
    metrics: Metrics | None = None,
    slots: InferenceSlots | None = None,
) -> Starlette:
    """The Starlette app serving every route above; ``settings`` gives the limits and the tokens.

    Refuses (:class:`ConfigError`) to serve the event route to anyone without ``WEBHOOK_TOKEN``, unless
    ``ALLOW_UNAUTHENTICATED_EVENTS`` says so (local use). ``runtime`` may load a
    :class:`~handler.runtime.Runtime` (inference in process) or be a :class:`~handler.http.workers.WorkerPool`.
    """
    if not settings.webhook_token and not settings.allow_unauthenticated_events:
        raise ConfigError(
            "WEBHOOK_TOKEN is not set: the event route would accept events from anyone. Set it (and the same "
            "token in the bucket's webhook), or ALLOW_UNAUTHENTICATED_EVENTS=true for local use only"
        )
    return _App(settings, runtime, metrics or create_metrics(), slots).starlette


class _App:
    def __init__(
        self, settings: Settings, runtime: RuntimeSource, metrics: Metrics, slots: InferenceSlots | None
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.metrics = metrics
        self.slots = slots or InferenceSlots(settings.max_concurrent_inferences, settings.max_queued_requests)
        metrics.in_flight.set_function(lambda: self.slots.in_flight)
        metrics.queued.set_function(lambda: self.slots.waiting)
        routes = [
            Route("/inference", self._instrument("/inference", self.inference), methods=["POST"]),
            Route("/", self._instrument("/", self.event), methods=["POST"]),
            Route("/healthz", self._instrument("/healthz", self.healthz), methods=["GET"]),
            Route("/metrics", self._instrument("/metrics", self.metrics_route), methods=["GET"]),
        ]
        self.starlette = Starlette(routes=routes, exception_handlers={HTTPException: self._http_exception})
        self.starlette.state.slots = self.slots
        self.starlette.state.metrics = metrics

    # --- routes

    async def inference(self, request: Request) -> Response:
        if (denied := self._check_token(request, self.settings.inference_token, "INFERENCE_TOKEN")) is not None:
            return denied
        output = request.query_params.get("output", self.settings.output_mode)
        if output not in OUTPUT_MODES:
            raise UploadError(f"output must be one of {', '.join(OUTPUT_MODES)}, got {output!r}")
        answer_format = request.query_params.get("format")
        if answer_format is not None and answer_format.lower() not in ("npy", *COG_FORMATS):
            raise UploadError(f"format must be npy or cog, got {answer_format!r}")
        answer_cog = wants_cog(request.headers.get("accept", ""), answer_format)
        workdir = Path(tempfile.mkdtemp(prefix="rasterfn-http-", dir=self.settings.tmp_dir))  # mode 0700
        try:
            # Admitted before the body is read: a slow upload holds a queue place, so uploads are bounded too.
            async with self.slots.admit():
                upload = await receive_upload(
                    request.headers, self._counted(request, "/inference"), workdir, self.settings.max_input_bytes
                )
                backend = await self._backend()
                job = PredictJob(
                    src=upload.path,
                    dst=workdir / "output.npy",
                    output=output,
                    max_pixels=min(self.settings.max_pixels, self.settings.max_inference_pixels),
                    shown_name=upload.name,
                    deadline=self._deadline(),
                    cog=workdir / "output.tif" if answer_cog else None,
                )
                async with self.slots.run():
                    result: PredictionResult = await self._until_disconnect(request, backend.predict, job)
            self.metrics.inference_seconds.observe(result.seconds)
            # The input is not needed for sending: free its disk space now, the output after the response.
            upload.path.unlink(missing_ok=True)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        logger.info("inference %s: %dx%d %s in %.2f s", upload.stem, *result.shape, result.output, result.seconds)
        cleanup = BackgroundTask(shutil.rmtree, workdir, ignore_errors=True)
        if job.cog is not None:
            name = upload.stem + COG_SUFFIXES[output]
            return FileResponse(job.cog, media_type=COG_MEDIA_TYPE, filename=name, background=cleanup)
        return FileResponse(job.dst, media_type=NPY_MEDIA_TYPE, filename=f"{upload.stem}.npy", background=cleanup)

    async def event(self, request: Request) -> Response:
        if (denied := self._check_token(request, self.settings.webhook_token, "WEBHOOK_TOKEN")) is not None:
            return denied
        body = await self._read_body(request, "/", MAX_EVENT_BYTES)
        headers = {k.lower(): v for k, v in request.headers.items()}
        if (message := shard_from_cloudevent(body, headers)) is not None:
            return await self._shard(request, message)
        refs = check_record_count(parse_event(body, headers), self.settings.max_event_records)
        check_allowed(refs, self.settings.allowed_buckets)  # before any S3 call, for the whole event
        backend = await self._backend()
        async with self.slots.acquire():
            outcomes = [await self._process(request, backend, ref) for ref in refs]
        summary = summarise(outcomes)
        if cloudevent_mode(headers) is not None:
            return cloudevent_reply(summary["outcomes"], summary)
        return JSONResponse(summary)

    async def healthz(self, request: Request) -> Response:
        ready, message = self.runtime.state()
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "detail": message}, status_code=200 if ready else 503
        )

    async def metrics_route(self, request: Request) -> Response:
        body, content_type = render_metrics(self.metrics)
        return Response(body, media_type=content_type)

    async def _shard(self, request: Request, message: ShardMessage) -> Response:
        """A fan-out shard message (a CloudEvent the Trigger ``rasterfn-shards`` delivered): run it in the backend.

        Answered with plain JSON, never a reply CloudEvent: the next phase's messages are sent to ``K_SINK`` by
        the shard itself, and a reply would only go back into the Broker for nobody. A transient error is a 503,
        so the Broker retries the delivery.
        """
        backend = await self._backend()
        job = ShardJob(message, deadline=self._deadline())
        async with self.slots.acquire():
            summary = await self._until_disconnect(request, backend.shard, job)
        logger.info("shard %s: %s", message.event_id, summary.status)
        return JSONResponse(summary.as_dict())

    # --- the shared processing path

    async def _process(self, request: Request, backend: Any, ref: ObjectRef) -> Outcome:
        """Lambda's per-record path (``process_object``) for one reference, in the backend.

        A :class:`TransientError` propagates: the whole event is answered 503 and MinIO sends it again; the
        objects already written then come back as ``duplicate``.
        """
        job = ProcessJob(ref, deadline=self._deadline())
        outcome: Outcome = await self._until_disconnect(request, backend.process, job)
        record_outcome(self.metrics, outcome)
        return outcome

    async def _until_disconnect(self, request: Request, run: Callable[..., Any], job: Any) -> Any:
        """``run(job, cancelled)`` in a thread while watching the connection: a client that goes away sets
        ``cancelled``, and the job stops at its next tile (freeing the slot) instead of running for no one."""
        gone = threading.Event()

        async def watch() -> None:
            try:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
            finally:
                # A disconnect, or this request cancelled by the server: either way no one waits for the job.
                # (After a normal finish the job is done, so setting it then changes nothing.)
                gone.set()

        outcome: dict[str, Any] = {}

        async def work() -> None:
            try:
                outcome["result"] = await run_in_threadpool(run, job, gone.is_set)
            except Exception as exc:  # re-raised below as itself, not inside a task group's ExceptionGroup
                outcome["error"] = exc
            finally:
                group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            group.start_soon(work)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    # --- plumbing

    def _deadline(self) -> float:
        """When a job started now must end (``INFERENCE_TIMEOUT_S``), as a wall-clock time."""
        return time.time() + self.settings.inference_timeout_s

    async def _backend(self) -> Any:
        """Where jobs run, once the runtime has loaded (waiting in a thread: loading can take a while)."""
        return backend_of(await run_in_threadpool(self.runtime.wait))

    def _instrument(self, route: str, endpoint: Callable[[Request], Awaitable[Response]]):
        async def instrumented(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await endpoint(request)
            except (ClientDisconnect, CancelledError):
                logger.info("%s %s: client disconnected", request.method, route)
                response = error_response(499, "client disconnected", "the client went away")
            except Exception as exc:
                response = self._error(request, route, exc)
            self.metrics.requests.labels(
                route=route, method=method_label(request.method), status=str(response.status_code)
            ).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)
            self.metrics.bytes_out.labels(route=route).inc(_body_length(response))
            return response

        return instrumented

    def _error(self, request: Request, route: str, exc: Exception) -> Response:
        mapping = map_error(exc)
        if mapping.reason:
            self.metrics.rejected.labels(reason=mapping.reason).inc()
        headers = None
        if isinstance(exc, BusyError):
            headers = {"Retry-After": str(self.slots.retry_after_s)}
        elif isinstance(exc, TransientError):
            headers = {"Retry-After": str(TRANSIENT_RETRY_AFTER_S)}
        if mapping.status < 500 or isinstance(exc, (TransientError, InputError)):
            logger.info("%s %s -> %d: %s", request.method, route, mapping.status, exc)
            return error_response(mapping.status, mapping.error, str(exc), headers)
        request_id = uuid.uuid4().hex
        if isinstance(exc, ConfigError):
            logger.error("%s %s -> 500 [%s]: %s", request.method, route, request_id, exc)
            return error_response(500, mapping.error, f"{exc} (request id {request_id})")
        logger.exception("%s %s -> 500 [%s]: unexpected error", request.method, route, request_id)
        return error_response(500, mapping.error, f"unexpected error; see the function's logs for {request_id}")

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        method = method_label(request.method)
        self.metrics.requests.labels(route="(unmatched)", method=method, status=str(exc.status_code)).inc()
        title = {404: "not found", 405: "method not allowed"}.get(exc.status_code, "http error")
        return error_response(exc.status_code, title, f"{method} {request.url.path[:200]}: {exc.detail}", exc.headers)

    def _check_token(self, request: Request, token: str | None, name: str) -> Response | None:
        detail = bearer_refusal(request.headers.get("authorization", ""), token, name)
        if detail is None:
            return None
        self.metrics.rejected.labels(reason="unauthorized").inc()
        logger.warning("%s %s -> 401: %s", request.method, request.url.path, detail)
        return error_response(401, "unauthorized", detail, {"WWW-Authenticate": BEARER_CHALLENGE})

    async def _counted(self, request: Request, route: str) -> AsyncIterator[bytes]:
        """The body's chunks, counted; a client silent for ``UPLOAD_READ_TIMEOUT_S`` gets 408."""
        counter = self.metrics.bytes_in.labels(route=route)
        timeout = self.settings.upload_read_timeout_s
        chunks = request.stream().__aiter__()
        while True:
            try:
                with anyio.fail_after(timeout):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise UploadTimeoutError(f"no request body bytes for {timeout} s (UPLOAD_READ_TIMEOUT_S)") from exc
            counter.inc(len(chunk))
            yield chunk

    async def _read_body(self, request: Request, route: str, limit: int) -> bytes:
        check_content_length(request.headers, limit)
        body = bytearray()
        async for chunk in self._counted(request, route):
            body += chunk
            if len(body) > limit:
                raise RasterTooLargeError(f"event body is over the {limit}-byte limit")
        return bytes(body)


def _body_length(response: Response) -> int:
    if isinstance(response, FileResponse):  # its Content-Length is only set while it is sent
        return os.stat(response.path).st_size
    return int(response.headers.get("content-length", 0))
