"""Prometheus metrics of the Knative function, in their own registry, rendered by ``GET /metrics``.

An own :class:`~prometheus_client.CollectorRegistry` per app (not the global default) keeps two apps in one
process (the tests) from sharing counters, and keeps library collectors out of what we promise to expose.

Example:
    >>> m = create_metrics()
    >>> m.requests.labels(route="/inference", method="POST", status="200").inc()
    >>> body, content_type = render_metrics(m)
    >>> b'rasterfn_http_requests_total{method="POST",route="/inference",status="200"} 1.0' in body
    True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from handler.outcome import Outcome, OutcomeStatus, describe, log_level

logger = logging.getLogger(__name__)

NAMESPACE = "rasterfn"
# Requests span a health check (ms) to a full Sentinel-2 tile (minutes on CPU).
LATENCY_BUCKETS_S = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Method labels: these as they are, anything else (``PROPFIND``, ``X-ANYTHING``) as "other", so a client cannot
# grow the label set without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
INFERENCE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class Metrics:
    """The function's metrics; labels are bounded (route templates, not paths; status codes; reasons)."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    inference_seconds: Histogram
    bytes_in: Counter
    bytes_out: Counter
    rejected: Counter
    objects: Counter
    in_flight: Gauge
    queued: Gauge


def create_metrics() -> Metrics:
    """A fresh registry with every metric registered."""
    registry = CollectorRegistry(auto_describe=True)
    return Metrics(
        registry=registry,
        requests=Counter(
            "http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            namespace=NAMESPACE,
            registry=registry,
        ),
        latency=Histogram(
            "http_request_duration_seconds",
            "Time from request start to response headers, by route template.",
            ["route"],
            namespace=NAMESPACE,
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        ),
        inference_seconds=Histogram(
            "inference_duration_seconds",
            "Time spent in the model (one raster), excluding upload and queueing.",
            namespace=NAMESPACE,
            buckets=INFERENCE_BUCKETS_S,
            registry=registry,
        ),
        bytes_in=Counter(
            "http_request_bytes",
            "Request body bytes received, by route template.",
            ["route"],
            namespace=NAMESPACE,
            registry=registry,
        ),
        bytes_out=Counter(
            "http_response_bytes",
            "Response body bytes sent (from Content-Length), by route template.",
            ["route"],
            namespace=NAMESPACE,
            registry=registry,
        ),
        rejected=Counter(
            "rejected_inputs",
            "Requests or objects refused, by reason (too_large, bad_media_type, no_file, bad_raster, ...).",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        ),
        objects=Counter(
            "objects_processed",
            "Bucket objects handled through the event route, by outcome status.",
            ["status"],
            namespace=NAMESPACE,
            registry=registry,
        ),
        in_flight=Gauge(
            "inferences_in_flight",
            "Inferences running now.",
            namespace=NAMESPACE,
            registry=registry,
        ),
        queued=Gauge(
            "inferences_queued",
            "Requests waiting for an inference slot now.",
            namespace=NAMESPACE,
            registry=registry,
        ),
    )


def method_label(method: str) -> str:
    """The metric label of an HTTP method (pure).

    >>> method_label("POST"), method_label("BREW")
    ('POST', 'other')
    """
    return method if method in KNOWN_METHODS else "other"


def render_metrics(metrics: Metrics) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``metrics`` and its content type."""
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST


def record_outcome(metrics: Metrics, outcome: Outcome) -> None:
    """One log line and the metrics for one object of the event route (Lambda's twin: ``observability``)."""
    logger.log(log_level(outcome), describe(outcome))
    metrics.objects.labels(status=str(outcome.status)).inc()
    if outcome.status is OutcomeStatus.REJECTED:
        metrics.rejected.labels(reason="bad_raster").inc()
    if outcome.inference_seconds:
        metrics.inference_seconds.observe(outcome.inference_seconds)
