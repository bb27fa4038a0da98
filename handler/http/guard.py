"""Requests a web browser can forge, refused before any route parses them (ASGI middleware around the app).

A page the user merely opens can make their browser send "simple" requests (``text/plain``, form-encoded or
multipart bodies, no preflight) to any address, loopback included, and with DNS rebinding even read the
answers. :class:`BrowserGuard` refuses, in this order:

1. on a server bound to loopback (``rasterfn serve``), a ``Host`` that does not name loopback (``localhost``,
   ``127.0.0.0/8``, ``[::1]``): a rebound name (``evil.example`` resolving to 127.0.0.1) is 421;
2. a request carrying an ``Origin`` (every cross-site POST a browser sends has one) that is not listed in
   ``ALLOWED_ORIGINS``, or one a browser marks ``Sec-Fetch-Site: cross-site``: 403 on every route;
3. on the event route (``POST /``), a body that is not JSON: only ``application/json`` and
   ``application/cloudevents+json`` (binary-mode CloudEvents, ``ce-*`` headers, carry JSON too). No browser
   sends those cross-origin without a CORS preflight, which is never answered: 415.

No response ever carries a CORS header (``Access-Control-*``): any a route might add is dropped. Clients
that are not browsers (curl, MinIO's webhook, Knative's Broker) send no ``Origin`` and pass unchanged.

Example:
    >>> app = BrowserGuard(starlette_app, GuardPolicy(loopback_only=True))        # doctest: +SKIP
    >>> host_names_loopback("localhost:8080"), host_names_loopback("evil.example:8080")
    (True, False)
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

EVENT_ROUTE = "/"
EVENT_MEDIA_TYPES = ("application/json", "application/cloudevents+json")
LOOPBACK_NAMES = ("localhost",)
CROSS_SITE = ("cross-site", "same-site")  # Sec-Fetch-Site values for a request another site started
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class GuardPolicy:
    """What :class:`BrowserGuard` lets through: origins (``scheme://host[:port]``) and the Host rule."""

    allowed_origins: tuple[str, ...] = ()
    loopback_only: bool = False  # the server listens on loopback only: only loopback Host names


def refusal(headers: dict[str, str], method: str, path: str, policy: GuardPolicy) -> tuple[int, str, str] | None:
    """``(status, error, detail)`` for a request to refuse, or None (pure; ``headers`` lower-cased).

    >>> refusal({"host": "127.0.0.1:8080", "content-type": "text/plain"}, "POST", "/", GuardPolicy())[0]
    415
    """
    host = headers.get("host", "")
    if policy.loopback_only and not host_names_loopback(host):
        return 421, "misdirected request", f"Host {host[:100]!r} does not name this machine (loopback only)"
    origin = headers.get("origin")
    if origin is not None and origin.rstrip("/").lower() not in policy.allowed_origins:
        return 403, "forbidden", f"cross-origin request from {origin[:100]!r} (not in ALLOWED_ORIGINS)"
    if origin is None and headers.get("sec-fetch-site", "").lower() in CROSS_SITE:
        return 403, "forbidden", "cross-site request (Sec-Fetch-Site) from a browser"
    if method == "POST" and path == EVENT_ROUTE:
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in EVENT_MEDIA_TYPES:
            shown = media_type[:100] or "none"
            return 415, "unsupported media type", f"events are {' or '.join(EVENT_MEDIA_TYPES)}, got {shown}"
    return None


def host_names_loopback(host: str) -> bool:
    """Whether a ``Host`` header (with or without its port) names this machine's loopback interface."""
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8080
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name.rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class BrowserGuard:
    """ASGI middleware: :func:`refusal` before the app sees a request, and no CORS header after."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy, on_refusal: Callable[[int], None] | None = None) -> None:
        self.app = app
        self.policy = policy
        self.on_refusal = on_refusal  # counts refusals (the app's metrics)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        denied = refusal(headers, scope.get("method", ""), scope.get("path", ""), self.policy)
        if denied is not None:
            status, error, detail = denied
            logger.warning("%s %s -> %d: %s", scope.get("method"), str(scope.get("path"))[:200], status, detail)
            if self.on_refusal is not None:
                self.on_refusal(status)
            await _answer(send, status, {"error": error, "detail": detail})
            return

        async def without_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [(k, v) for k, v in message.get("headers", []) if not _is_cors(k)],
                }
            await send(message)

        await self.app(scope, receive, without_cors)


def _is_cors(name: bytes) -> bool:
    return name.lower().startswith(b"access-control-")


async def _answer(send: Callable, status: int, body: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
