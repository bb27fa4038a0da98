"""Lambda observability: the powertools Logger (JSON), Metrics (CloudWatch EMF) and Tracer (X-Ray) instances.

Powertools configures itself from its own variables (``POWERTOOLS_SERVICE_NAME``,
``POWERTOOLS_METRICS_NAMESPACE``, ``POWERTOOLS_LOG_LEVEL``, ``POWERTOOLS_TRACE_DISABLED``; Terraform sets
them); where they are unset (local runs, tests) the service and namespace default to ``rasterfn``. The Tracer
turns itself off outside Lambda (no ``LAMBDA_TASK_ROOT``), so local runs and tests never look for an X-Ray
daemon. Our other modules log through the stdlib (Lambda's own log format applies to them); the per-object
lines with their numbers come from :func:`record_outcome`. The Knative side exports Prometheus metrics
instead (``handler.http.metrics``).

Example:
    >>> record_outcome(Outcome(OutcomeStatus.WRITTEN, "b", "k.tif", "k.npy", pixels=262144))   # doctest: +SKIP
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from handler.outcome import Outcome, OutcomeStatus, describe, log_level

SERVICE = "rasterfn"
DEFAULT_NAMESPACE = "rasterfn"

# Metric names: dashboards and alarms refer to exactly these.
METRIC_PROCESSED = "ObjectsProcessed"
METRIC_REJECTED = "ObjectsRejected"
METRIC_SKIPPED = "ObjectsSkipped"  # duplicate, filtered out or missing
METRIC_FAILED = "ObjectsFailed"  # raised for a retry (transient S3 trouble, deployment faults)
METRIC_DEFERRED = "RecordsDeferred"  # handed back unprocessed: too little invocation time left
METRIC_INFERENCE_SECONDS = "InferenceSeconds"
METRIC_PIXELS = "Pixels"
METRIC_BYTES_IN = "BytesIn"
METRIC_BYTES_OUT = "BytesOut"

logger = Logger()
if logger.service == "service_undefined":
    logger.append_keys(service=SERVICE)

metrics = Metrics()
if metrics.namespace is None:
    metrics.namespace = DEFAULT_NAMESPACE
if metrics.service is None:
    metrics.service = SERVICE

tracer = Tracer()


def record_outcome(outcome: Outcome) -> None:
    """One log line and the metrics for one processed object."""
    logger.log(log_level(outcome), describe(outcome), extra=outcome.as_dict())
    if outcome.status is OutcomeStatus.WRITTEN:
        metrics.add_metric(name=METRIC_PROCESSED, unit=MetricUnit.Count, value=1)
        metrics.add_metric(name=METRIC_INFERENCE_SECONDS, unit=MetricUnit.Seconds, value=outcome.inference_seconds)
        metrics.add_metric(name=METRIC_PIXELS, unit=MetricUnit.Count, value=outcome.pixels)
        metrics.add_metric(name=METRIC_BYTES_IN, unit=MetricUnit.Bytes, value=outcome.bytes_in)
        metrics.add_metric(name=METRIC_BYTES_OUT, unit=MetricUnit.Bytes, value=outcome.bytes_out)
    elif outcome.status is OutcomeStatus.REJECTED:
        metrics.add_metric(name=METRIC_REJECTED, unit=MetricUnit.Count, value=1)
    else:
        metrics.add_metric(name=METRIC_SKIPPED, unit=MetricUnit.Count, value=1)


def record_failure(what: str, exc: BaseException) -> None:
    """An object or record raised for a retry."""
    logger.exception(f"failed, will be retried: {what}: {exc}")
    metrics.add_metric(name=METRIC_FAILED, unit=MetricUnit.Count, value=1)


def record_deferred(what: str, remaining_ms: int) -> None:
    logger.warning(f"deferred, {remaining_ms} ms left: {what}")
    metrics.add_metric(name=METRIC_DEFERRED, unit=MetricUnit.Count, value=1)
