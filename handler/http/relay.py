"""The Eventing relay: MinIO's webhooks into a Knative Broker, and the Broker's deliveries on to the function.

MinIO's webhook posts plain JSON and gives up after about 60 s, while a scene can take minutes; a Broker's
ingress answers at once but accepts only CloudEvents, and its dispatcher cannot add the function's bearer
token. This small process (``rasterfn relay``, a plain Deployment with a SinkBinding setting ``K_SINK`` to
the Broker) bridges both sides:

- ``POST /minio``: MinIO's webhook, with its bearer token. The body is checked to be an event
  (:func:`handler.events.parse_event`), wrapped unchanged as the data of a binary-mode CloudEvent of type
  :data:`EVENT_TYPE` and published to ``K_SINK``. Answers 202 as soon as the Broker has it, or 502 so
  MinIO keeps the event in its queue and sends it again. Nothing here waits for a scene.
- ``POST /deliver``: the Triggers' subscriber (uploads, and the function's own fan-out shard messages:
  :data:`handler.event_types.DELIVERED_TYPES`). Only a delivery whose Knative Eventing sender-identity token
  (OIDC, :mod:`handler.http.oidc`) names one of our Triggers is forwarded; any other is 401 and the function
  sees nothing, since forwarding lends it the function's bearer token. Forwards the CloudEvent (``ce-*``
  headers and body) to the function's event route with the bearer token, and passes the function's answer
  back: its status decides the Broker's retries (5xx, 429) and its binary-mode reply CloudEvent goes back into
  the Broker.
- ``POST /dead-letter``: the Trigger's dead-letter sink. Logs the event that exhausted its retries (one
  WARNING line, with Knative's ``knativeerror*`` attributes) and answers 202.
- ``GET /healthz``: 200.

The event id is a hash of MinIO's body, so a webhook MinIO sends twice is the same event; the function's
own duplicate check makes any redelivery cheap.

Example:
    >>> event = publishable_event(b'{"EventName": "s3:ObjectCreated:Put", "Key": "rasterfn/a.tif"}')
    >>> (event.get_type(), event.get_source(), event.get_subject())
    ('dev.rasterfn.object.notification', '/minio/rasterfn', 'a.tif')
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handler.errors import EventError
from handler.event_types import DELIVERED_TYPES, UPLOAD_EVENT_TYPE
from handler.events import MAX_EVENT_BYTES, parse_event
from handler.http.oidc import (
    FileJwks,
    HttpJwks,
    JwksSource,
    JwksUnavailableError,
    OidcPolicy,
    SenderIdentityError,
    SenderVerifier,
)
from handler.settings import RelaySettings

logger = logging.getLogger(__name__)

# The type of the events published here (handler/event_types.py: the Trigger "rasterfn-uploads" filters on it).
EVENT_TYPE = UPLOAD_EVENT_TYPE
SOURCE_PREFIX = "/minio/"
PUBLISH_TIMEOUT_S = 10.0
# Longer than the Trigger's delivery timeout (PT10M): the Broker gives up first and retries or dead-letters.
DELIVER_TIMEOUT_S = 660.0
RETRY_AFTER_S = "10"
# Request headers the function sees from a delivery: the CloudEvent itself and the trace context.
FORWARDED_REQUEST_HEADERS = ("content-type", "traceparent", "tracestate")
# Response headers the Broker sees from the function: its reply CloudEvent (binary mode) and its back-off.
FORWARDED_RESPONSE_HEADERS = ("content-type", "retry-after")
MAX_LOGGED_DATA_CHARS = 2000


def publishable_event(body: bytes) -> CloudEvent | None:
    """MinIO's webhook body as the data of a CloudEvent; ``None`` for an event naming no object (S3's test
    event). Raises :class:`EventError` if the body is no event at all."""
    refs = parse_event(body)
    if not refs:
        return None
    attributes: dict[str, Any] = {
        "type": EVENT_TYPE,
        "source": SOURCE_PREFIX + refs[0].bucket,
        "id": hashlib.sha256(body).hexdigest()[:32],
        "datacontenttype": "application/json",
        "subject": refs[0].key,
    }
    return CloudEvent(attributes=attributes, data=body)


def forwarded_headers(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The ``ce-*`` headers and the named ones, lower-cased (pure)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return {k: v for k, v in lowered.items() if k.startswith("ce-") or k in names}


def create_relay_app(
    settings: RelaySettings, client: httpx.AsyncClient | None = None, jwks: JwksSource | None = None
) -> Starlette:
    """The relay's routes (see the module docstring); ``client`` makes the outbound calls and ``jwks`` gives
    the issuer's keys (tests pass them; by default from ``RELAY_OIDC_JWKS``)."""
    return _Relay(settings, client or httpx.AsyncClient(), jwks or jwks_source(settings)).starlette


def jwks_source(settings: RelaySettings) -> JwksSource:
    """Where the issuer's keys are read: a mounted file, or a URL with its own CA bundle and bearer token."""
    if not settings.oidc_jwks.startswith(("http://", "https://")):
        return FileJwks(Path(settings.oidc_jwks))
    client = httpx.AsyncClient(verify=settings.oidc_jwks_ca_file or True)
    token_file = Path(settings.oidc_jwks_bearer_file) if settings.oidc_jwks_bearer_file else None
    return HttpJwks(settings.oidc_jwks, client, token_file)


class _Relay:
    def __init__(self, settings: RelaySettings, client: httpx.AsyncClient, jwks: JwksSource) -> None:
        self.settings = settings
        self.client = client
        policy = OidcPolicy(settings.oidc_issuer, settings.oidc_audience, settings.oidc_subjects)
        self.verifier = SenderVerifier(policy, jwks)
        routes = [
            Route("/minio", self.minio, methods=["POST"]),
            Route("/deliver", self.deliver, methods=["POST"]),
            Route("/dead-letter", self.dead_letter, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
        ]
        self.starlette = Starlette(routes=routes)

    async def minio(self, request: Request) -> Response:
        if not self._authorised(request):
            logger.warning("POST /minio -> 401: missing or wrong bearer token")
            return _error(401, "unauthorized", "missing or wrong bearer token")
        body = await _read_limited(request)
        if body is None:
            return _error(413, "too large", f"event body is over the {MAX_EVENT_BYTES}-byte limit")
        try:
            event = publishable_event(body)
        except EventError as exc:
            return _error(400, "bad event", str(exc))
        if event is None:
            return JSONResponse({"accepted": None, "detail": "the event names no object"})
        message = to_binary_event(event)
        try:
            published = await self.client.post(
                self.settings.sink_url, content=message.body, headers=message.headers, timeout=PUBLISH_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            logger.warning("publish %s -> %s: %s", event.get_id(), self.settings.sink_url, exc)
            return _error(502, "broker unreachable", str(exc), retry=True)
        if not published.is_success:
            logger.warning("publish %s -> broker answered %d", event.get_id(), published.status_code)
            return _error(502, "broker refused", f"the broker answered {published.status_code}", retry=True)
        logger.info("published %s for %s", event.get_id(), event.get_subject())
        return JSONResponse({"accepted": event.get_id()}, status_code=202)

    async def deliver(self, request: Request) -> Response:
        # Before anything else: forwarding lends the function's token, so only our Triggers' deliveries get it.
        try:
            claims = await self.verifier.verify(request.headers.get("authorization"))
        except SenderIdentityError as exc:
            logger.warning("POST /deliver -> 401: %s", exc)
            return _error(401, "unauthorized", str(exc))
        except JwksUnavailableError as exc:
            logger.warning("POST /deliver -> 503: %s", exc)
            return _error(503, "issuer keys unavailable", str(exc), retry=True)
        logger.debug("delivery from %s", claims["sub"])
        if request.headers.get("ce-type") not in DELIVERED_TYPES:
            # The Triggers filter on these types; anything else did not come through them.
            expected = " or ".join(DELIVERED_TYPES)
            return _error(400, "bad event", f"expected a binary-mode CloudEvent of type {expected}")
        body = await _read_limited(request)
        if body is None:
            return _error(413, "too large", f"event body is over the {MAX_EVENT_BYTES}-byte limit")
        headers = forwarded_headers(request.headers, FORWARDED_REQUEST_HEADERS)
        headers["authorization"] = f"Bearer {self.settings.webhook_token}"
        try:
            answer = await self.client.post(
                self.settings.target_url, content=body, headers=headers, timeout=DELIVER_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            logger.warning("deliver %s -> %s: %s", request.headers.get("ce-id"), self.settings.target_url, exc)
            return _error(502, "function unreachable", str(exc), retry=True)
        logger.info("delivered %s: function answered %d", request.headers.get("ce-id"), answer.status_code)
        return Response(
            answer.content,
            status_code=answer.status_code,
            headers=forwarded_headers(answer.headers, FORWARDED_RESPONSE_HEADERS),
        )

    async def dead_letter(self, request: Request) -> Response:
        body = await _read_limited(request) or b""
        attributes = {k.removeprefix("ce-"): v for k, v in request.headers.items() if k.lower().startswith("ce-")}
        logger.warning(
            "dead letter: %s",
            json.dumps({"attributes": attributes, "data": body.decode("utf-8", "replace")[:MAX_LOGGED_DATA_CHARS]}),
        )
        return Response(status_code=202)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _authorised(self, request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        expected = self.settings.webhook_token.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), expected)


async def _read_limited(request: Request) -> bytes | None:
    """The body, or ``None`` once it grows over :data:`MAX_EVENT_BYTES` (read no further)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_EVENT_BYTES:
            return None
    return bytes(body)


def _error(status: int, error: str, detail: str, retry: bool = False) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S} if retry else None
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def run_relay(host: str, port: int) -> int:
    """``rasterfn relay``: serve the relay with hypercorn on ``host:port`` until SIGINT/SIGTERM."""
    import asyncio

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    settings = RelaySettings.from_env()  # a missing variable fails here, with its message
    # Its own process: INFO lines (what was published, delivered, dead-lettered) go to the pod's log.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = Config()
    config.bind = [f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    print(f"rasterfn relay: listening on http://{config.bind[0]}, publishing to {settings.sink_url}", flush=True)
    asyncio.run(serve(create_relay_app(settings), config))
    return 0
