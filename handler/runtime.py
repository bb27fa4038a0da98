"""What a warm container holds between events: settings, the loaded model and the S3 storage.

Built once per process (Lambda's INIT phase, a Knative worker's start-up) by :func:`get_runtime`; every
event reuses it. A bad setting, card or checkpoint fails here, at start-up, with one clear error.

Example:
    >>> runtime = get_runtime()                       # doctest: +SKIP
    >>> outcome = process_object(ref, runtime)        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version

from handler.model_source import load_runtime_model
from handler.queues import Queues
from handler.settings import Settings, get_settings, reload_settings
from handler.storage import Storage
from model.cpus import cpu_budget
from model.errors import ConfigError
from model.io.decode_limits import DecodeLimits
from model.network.engines.base import InferenceModel
from model.options import PredictOptions

log = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return version("rasterfn")
    except PackageNotFoundError:
        return "0+unknown"


PACKAGE_VERSION = _package_version()
FUNCTION_VERSION = f"rasterfn {PACKAGE_VERSION}"


@dataclass(frozen=True)
class Runtime:
    """One container's long-lived state; immutable, shared by every event (and thread) it serves."""

    settings: Settings
    model: InferenceModel
    storage: Storage
    function_version: str = FUNCTION_VERSION
    queues: Queues | None = None  # SQS, when shard messages go there (FANOUT_QUEUE_URL)

    @property
    def options(self) -> PredictOptions:
        return options_from_settings(self.settings)


def options_from_settings(settings: Settings) -> PredictOptions:
    """The predictor's options from the deployment's settings (tile geometry stays the card's)."""
    return PredictOptions(
        output=settings.output_mode,
        precision=settings.precision,
        device=settings.device,
        max_pixels=settings.max_pixels,
        predictions_at_once=settings.max_concurrent_inferences,
        limits=DecodeLimits(
            max_block_bytes=settings.max_block_bytes,
            max_bands=settings.max_bands,
            compressions=settings.allowed_compressions,
            max_compression_ratio=settings.max_compression_ratio,
        ),
    )


def running_precision(settings: Settings, model: InferenceModel) -> str:
    """The precision tiles run at: ``PRECISION``, or what ``auto`` resolved to when the model was loaded."""
    if settings.precision != "auto":
        return settings.precision
    return str(getattr(model, "precision", "fp32"))  # the torch engine runs auto as fp32


def build_runtime(settings: Settings, storage: Storage | None = None) -> Runtime:
    """Check the directories, make the S3 (and SQS) clients, load the model and run one warm-up tile.

    Any problem is a :class:`ConfigError`. The warm-up tile moves the engine's first-call set-up (memory,
    kernel choices) into start-up, where Lambda's INIT and Knative's readiness wait for it, so the first
    event's tiles run at full speed.
    """
    if not settings.tmp_dir.is_dir():
        raise ConfigError(f"TMPDIR {settings.tmp_dir} is not a directory")
    storage = storage if storage is not None else Storage.from_defaults()
    model = load_runtime_model(settings, storage)
    # PRECISION=auto is resolved once, when the model is loaded: the runtime keeps what tiles really run at.
    settings = dataclasses.replace(settings, precision=running_precision(settings, model))
    model.warm_up(options_from_settings(settings))
    log.info(
        "runtime ready: model %s (sha256 %s) on %s, output %s, precision %s, device %s, threads from %s",
        model.card.name,
        model.sha256[:12],
        model.engine,
        settings.output_mode,
        settings.precision,
        settings.device,
        cpu_budget().describe(),
    )
    queues = Queues.from_defaults() if settings.fanout_queue_url else None
    return Runtime(settings=settings, model=model, storage=storage, queues=queues)


@cache
def get_runtime() -> Runtime:
    """The process's runtime, built on first use from :func:`get_settings` (the environment, read once)."""
    return build_runtime(get_settings())


def reload_runtime() -> Runtime:
    """Rebuild the process's runtime from the environment as it is now (settings, S3 client, model).

    For tools that run several events in one process against different endpoints (``rasterfn replay``).
    """
    reload_settings()
    get_runtime.cache_clear()
    return get_runtime()


def runtime_is_built() -> bool:
    """Whether :func:`get_runtime` has built this process's runtime yet (without building it)."""
    return get_runtime.cache_info().currsize > 0
