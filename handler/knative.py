"""The Knative function: func-python's instance protocol around the Starlette app of :mod:`handler.http.app`.

func-python (``func_python.http.serve``) calls ``new()`` once, then ``start(env)`` on ASGI lifespan start-up,
``stop()`` on shut-down, answers ``/health/liveness`` and ``/health/readiness`` itself from ``alive()`` and
``ready()``, and hands every other request to ``handle(scope, receive, send)``.

Inference runs in ``MAX_CONCURRENT_INFERENCES`` worker processes (:class:`handler.http.workers.WorkerPool`), so a
crash in native code on a hostile upload kills a worker, not the server: the request is answered 422 and the
worker replaced. Each worker loads the model once; ``start`` first sweeps stale temp dirs of crashed runs.

The workers load the model in the background, started by ``start``: hypercorn accepts no connection until start-up
returns (and gives up after 60 s), so loading there would fail liveness probes during a slow first download of
the weights. ``ready()`` says false until the model is loaded, so Knative routes no traffic before; a request
that still arrives early waits for the load instead of failing.

``rasterfn serve [--host 127.0.0.1] [--port 8080]`` runs it locally with func-python's own server. It fails closed:
without ``WEBHOOK_TOKEN`` it makes a random one and prints it (open only with ``--allow-unauthenticated``), without
``ALLOWED_BUCKETS`` no event may name a bucket (``--allowed-buckets``), and on loopback only loopback ``Host``
names are answered (:mod:`handler.http.guard`, which every deployment runs: no foreign ``Origin``, JSON events).

Example:
    >>> f = new()
    >>> f.ready()
    (False, 'not started')
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any

import func_python.http

from handler.http.app import create_app
from handler.http.guard import BrowserGuard, GuardPolicy
from handler.http.metrics import create_metrics
from handler.http.workers import WorkerPool
from handler.runtime import get_runtime
from handler.settings import (
    ENV_ALLOW_UNAUTHENTICATED_EVENTS,
    ENV_ALLOWED_BUCKETS,
    ENV_WEBHOOK_TOKEN,
    NO_BUCKET,
    Settings,
    get_settings,
    reload_settings,
)
from handler.tempdirs import sweep_at_startup
from model.errors import ConfigError

logger = logging.getLogger(__name__)

LISTEN_ADDRESS_ENV = "LISTEN_ADDRESS"  # func-python's own variable: "host:port[,host:port]"
TOKEN_BYTES = 32  # `rasterfn serve`'s generated webhook token
KNATIVE_SERVICE_ENV = "K_SERVICE"  # Knative Serving's own variable, set in every revision's container


class RuntimeLoader:
    """Loads the runtime once, in a background thread; :meth:`wait` blocks until it is there."""

    def __init__(self, load: Callable[[], Any] | None = None) -> None:
        self._load_fn = load
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._runtime: Any = None
        self._error: BaseException | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._load, name="rasterfn-model-load", daemon=True)
                self._thread.start()

    def _load(self) -> None:
        try:
            load = self._load_fn
            if load is None:
                load = get_runtime
            runtime = load()
            self._runtime = runtime
            model = getattr(runtime, "model", None)
            if model is not None:
                logger.info("model %s loaded (sha256 %s)", model.card.name, model.sha256[:12])
        except BaseException as exc:
            logger.error("model failed to load: %s", exc)
            self._error = exc
        finally:
            self._done.set()

    def state(self) -> tuple[bool, str]:
        if self._thread is None:
            return False, "not started"
        if not self._done.is_set():
            return False, "loading model"
        if self._error is not None:
            return False, f"model failed to load: {self._error}"
        model = getattr(self._runtime, "model", None)
        return True, f"ready: model {model.card.name}" if model is not None else "ready"

    def failed(self) -> BaseException | None:
        return self._error if self._done.is_set() else None

    def wait(self) -> Any:
        self.start()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._runtime


class Function:
    """The function instance func-python serves (see the module docstring for the protocol)."""

    def __init__(
        self, load: Callable[[], Any] | None = None, settings: Settings | None = None, *, loopback_only: bool = False
    ) -> None:
        """``load``: a function returning a Runtime, to run inference in this process (tests); by default,
        a pool of worker processes. ``loopback_only``: the server listens on loopback (see the guard)."""
        self._load = load
        self._settings = settings
        self._loopback_only = loopback_only
        self.loader: RuntimeLoader | WorkerPool | None = None
        self.app: Any = None

    def start(self, cfg: Mapping[str, str]) -> None:
        """Build the app and start loading the model. ``cfg`` is func-python's copy of the environment."""
        # Settings come from the process environment (the one settings module), which ``cfg`` copies.
        settings = self._settings or get_settings()
        if self._load is None:
            sweep_at_startup(settings)  # before any worker makes a temp dir of its own
            loader: RuntimeLoader | WorkerPool = WorkerPool(settings)
        else:
            loader = RuntimeLoader(self._load)
        metrics = create_metrics()
        app = create_app(settings, loader, metrics=metrics)  # refuses an open event route
        policy = GuardPolicy(settings.allowed_origins, loopback_only=self._loopback_only)
        self.app = BrowserGuard(app, policy, lambda status: metrics.rejected.labels(reason="forged").inc())
        self.loader = loader
        self.loader.start()
        if not settings.webhook_token:
            logger.warning("ALLOW_UNAUTHENTICATED_EVENTS: POST / accepts events from anyone who can reach it")
        if not settings.allowed_buckets:
            logger.warning("ALLOWED_BUCKETS is not set: events may name any bucket the credentials reach")
        logger.info(
            "rasterfn function started: %d inference slot(s), %d queued, max input %d bytes",
            settings.max_concurrent_inferences,
            settings.max_queued_requests,
            settings.max_input_bytes,
        )

    def stop(self) -> None:
        logger.info("rasterfn function stopping")
        if isinstance(self.loader, WorkerPool):
            self.loader.stop()

    def alive(self) -> tuple[bool, str]:
        # A model that cannot load never will: failing liveness lets Kubernetes restart and surface it.
        if self.loader is not None and (error := self.loader.failed()) is not None:
            return False, f"model failed to load: {error}"
        return True, "alive"

    def ready(self) -> tuple[bool, str]:
        if self.loader is None:
            return False, "not started"
        return self.loader.state()

    async def handle(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if self.app is None:
            await _send_plain_error(send, 503, b'{"error": "unavailable", "detail": "function not started"}')
            return
        try:
            await self.app(scope, receive, send)
        except Exception:
            # Starlette has already answered 500 (its ServerErrorMiddleware re-raises after responding);
            # func-python would try to answer a second time.
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))


def new() -> Function:
    """func-python's constructor hook: ``func_python.http.serve(new)``."""
    return Function()


def listen_address(host: str, port: int) -> str:
    """func-python's ``LISTEN_ADDRESS`` for one host and port (IPv6 hosts in brackets).

    >>> listen_address("127.0.0.1", 8080), listen_address("::1", 9000)
    ('127.0.0.1:8080', '[::1]:9000')
    """
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


def run_serve(args: argparse.Namespace) -> int:
    """``rasterfn serve``: func-python's server (hypercorn) on ``--host``/``--port``, until SIGINT/SIGTERM.

    Fails closed (see the module docstring): what it chose instead of an open default is printed.
    """
    # func-python binds only what LISTEN_ADDRESS says (default: every interface on 8080).
    os.environ[LISTEN_ADDRESS_ENV] = listen_address(args.host, args.port)
    allow_open = bool(getattr(args, "allow_unauthenticated", False))
    if getattr(args, "allowed_buckets", None):
        os.environ[ENV_ALLOWED_BUCKETS] = args.allowed_buckets
    elif not os.environ.get(ENV_ALLOWED_BUCKETS, "").strip():
        os.environ[ENV_ALLOWED_BUCKETS] = NO_BUCKET
        print("rasterfn serve: ALLOWED_BUCKETS is not set: events may name no bucket (--allowed-buckets B[/prefix/])")
    settings = reload_settings()  # a bad setting fails here, with its message, not inside the server's start-up
    url = f"http://{_client_host(args.host)}:{args.port}/"
    if allow_open and settings.webhook_token:
        raise ConfigError("--allow-unauthenticated and WEBHOOK_TOKEN are both set: unset one")
    if allow_open:
        os.environ[ENV_ALLOW_UNAUTHENTICATED_EVENTS] = "true"
        print("rasterfn serve: WARNING: --allow-unauthenticated: POST / takes events from anyone who can reach it")
    elif not settings.webhook_token and os.environ.get(KNATIVE_SERVICE_ENV):
        # Deployed (the image's entry point runs `rasterfn serve`): a token made up here would refuse every event
        # without saying why. The deploy sets it from the Secret; fail at start-up, as the function always has.
        raise ConfigError(f"WEBHOOK_TOKEN is not set on Knative service {os.environ[KNATIVE_SERVICE_ENV]!r}")
    elif not settings.webhook_token:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        os.environ[ENV_WEBHOOK_TOKEN] = token
        bucket = (settings.allowed_buckets[0].partition("/")[0] if settings.allowed_buckets else "") or "BUCKET"
        bucket = "BUCKET" if bucket == NO_BUCKET else bucket
        print(
            "rasterfn serve: POST / needs this bearer token (generated now; set WEBHOOK_TOKEN to choose one):\n"
            f"  WEBHOOK_TOKEN={token}\n"
            f"  curl -X POST {url} -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
            f"""-d '{{"bucket": "{bucket}", "key": "scene.tif"}}'"""
        )
    reload_settings()
    print(f"rasterfn serve: listening on http://{os.environ[LISTEN_ADDRESS_ENV]}", flush=True)
    func_python.http.serve(_constructor(loopback_only=_is_loopback(args.host)))
    return 0


def _constructor(**options: Any) -> Callable[[], Function]:
    """func-python's ``new`` (it insists on the name) building a :class:`Function` with ``options``."""

    def new() -> Function:
        return Function(**options)

    return new


def _client_host(host: str) -> str:
    """The address a local client uses for a server bound to ``host`` (every interface: loopback)."""
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (matched, not bound)
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only.

    >>> _is_loopback("127.0.0.1"), _is_loopback("::1"), _is_loopback("0.0.0.0")
    (True, True, False)
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


async def _send_plain_error(send: Callable, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
