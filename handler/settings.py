"""The one place that reads configuration from the environment.

Every variable name is a constant here; :meth:`Settings.from_env` parses and validates them all at once, so a
bad deployment fails at start-up with one clear :class:`ConfigError` instead of on the first event. Explicit
arguments (CLI flags) win over the environment via :func:`dataclasses.replace`.

Example:
    >>> s = Settings.from_env({"PRECISION": "bf16", "MAX_PIXELS": "1000000"})
    >>> (s.precision, s.max_pixels)
    ('bf16', 1000000)
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

from handler.objects import normalise_suffixes
from model.card import DEFAULT_CARD_PATH
from model.decode_limits import (
    DEFAULT_COMPRESSIONS,
    DEFAULT_MAX_BANDS,
    DEFAULT_MAX_BLOCK_BYTES,
    DEFAULT_MAX_COMPRESSION_RATIO,
    KNOWN_COMPRESSIONS,
)
from model.errors import ConfigError
from model.options import DEFAULT_MAX_PIXELS, DEVICES, ENGINES, OUTPUT_MODES, PRECISIONS

# Environment variable names: the infra (Terraform, Knative manifests, func.yaml) uses exactly these.
ENV_MODEL_CARD = "MODEL_CARD"
ENV_MODEL_URI = "MODEL_URI"
ENV_MODEL_CACHE_DIR = "MODEL_CACHE_DIR"
ENV_PRECISION = "PRECISION"
ENV_ENGINE = "ENGINE"
ENV_DEVICE = "DEVICE"
ENV_OUTPUT_MODE = "OUTPUT_MODE"
ENV_MAX_PIXELS = "MAX_PIXELS"
ENV_MAX_INPUT_BYTES = "MAX_INPUT_BYTES"
ENV_INPUT_SUFFIXES = "INPUT_SUFFIXES"
ENV_OUTPUT_BUCKET = "OUTPUT_BUCKET"
ENV_OUTPUT_PREFIX = "OUTPUT_PREFIX"
ENV_MIN_REMAINING_MS = "MIN_REMAINING_MS"
ENV_MAX_CONCURRENT_INFERENCES = "MAX_CONCURRENT_INFERENCES"
ENV_MAX_QUEUED_REQUESTS = "MAX_QUEUED_REQUESTS"
ENV_WEBHOOK_TOKEN = "WEBHOOK_TOKEN"  # noqa: S105 (the variable's name, not a secret)
ENV_TMP_DIR = "TMPDIR"
# Knative's SinkBinding injects K_SINK: the relay's Broker (handler/http/relay.py) and the function's fan-out sink.
ENV_K_SINK = "K_SINK"
ENV_RELAY_TARGET_URL = "RELAY_TARGET_URL"
# Security and per-request bounds (README: Security).
ENV_ALLOWED_BUCKETS = "ALLOWED_BUCKETS"
ENV_ALLOW_UNAUTHENTICATED_EVENTS = "ALLOW_UNAUTHENTICATED_EVENTS"
ENV_INFERENCE_TOKEN = "INFERENCE_TOKEN"  # noqa: S105 (the variable's name, not a secret)
ENV_MAX_INFERENCE_PIXELS = "MAX_INFERENCE_PIXELS"
ENV_INFERENCE_TIMEOUT_S = "INFERENCE_TIMEOUT_S"
ENV_UPLOAD_READ_TIMEOUT_S = "UPLOAD_READ_TIMEOUT_S"
ENV_MAX_EVENT_RECORDS = "MAX_EVENT_RECORDS"
ENV_MAX_RECEIVE_COUNT = "MAX_RECEIVE_COUNT"
ENV_STALE_TMP_MINUTES = "STALE_TMP_MINUTES"
# Decode cost, checked from each upload's header (model/decode_limits.py).
ENV_MAX_BLOCK_BYTES = "MAX_BLOCK_BYTES"
ENV_MAX_BANDS = "MAX_BANDS"
ENV_ALLOWED_COMPRESSIONS = "ALLOWED_COMPRESSIONS"
ENV_MAX_COMPRESSION_RATIO = "MAX_COMPRESSION_RATIO"
# -- fan-out: one raster across parallel invocations (handler/fanout) --
ENV_FANOUT_QUEUE_URL = "FANOUT_QUEUE_URL"
ENV_FANOUT_SECONDS_PER_TILE = "FANOUT_SECONDS_PER_TILE"
ENV_FANOUT_THRESHOLD_SECONDS = "FANOUT_THRESHOLD_SECONDS"
ENV_FANOUT_MAX_SHARDS = "FANOUT_MAX_SHARDS"
ENV_MAX_SCENE_PIXELS = "MAX_SCENE_PIXELS"

DEFAULT_MAX_INPUT_BYTES = 4 * 1024**3
DEFAULT_INPUT_SUFFIXES = (".tif", ".tiff")
DEFAULT_MIN_REMAINING_MS = 60_000
DEFAULT_MODEL_CACHE_DIR = Path(tempfile.gettempdir()) / "rasterfn-model"
DEFAULT_MAX_INFERENCE_PIXELS = 25_000_000  # 5000 x 5000: a synchronous request, not a whole Sentinel-2 tile
DEFAULT_INFERENCE_TIMEOUT_S = 600
DEFAULT_UPLOAD_READ_TIMEOUT_S = 30
DEFAULT_MAX_EVENT_RECORDS = 100
DEFAULT_MAX_RECEIVE_COUNT = 3  # Terraform's max_receive_count default
DEFAULT_STALE_TMP_MINUTES = 60
# S3's bucket-name rules (3-63 of a-z, 0-9, '.', '-'), loose on the details S3 itself enforces.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# Fan-out defaults: make bench measured 0.31 - 0.36 s per 512 x 512 tile on 2 CPU cores (81 tiles in 25 - 29 s);
# 0.5 s leaves room for Lambda's shared vCPUs. Above 5 estimated minutes a raster is sharded, into at most 50
# bands; a job is bounded at 5 G pixels.
DEFAULT_FANOUT_SECONDS_PER_TILE = 0.5
DEFAULT_FANOUT_THRESHOLD_SECONDS = 300
DEFAULT_FANOUT_MAX_SHARDS = 50
DEFAULT_MAX_SCENE_PIXELS = 5_000_000_000


@dataclass(frozen=True)
class Settings:
    """Validated runtime settings; see the README's configuration table for each variable."""

    model_card: Path = DEFAULT_CARD_PATH
    model_uri: str | None = None
    model_cache_dir: Path = DEFAULT_MODEL_CACHE_DIR
    precision: str = "fp32"
    engine: str = "auto"
    device: str = "cpu"
    output_mode: str = "mask"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    input_suffixes: tuple[str, ...] = DEFAULT_INPUT_SUFFIXES
    output_bucket: str | None = None
    output_prefix: str = ""
    min_remaining_ms: int = DEFAULT_MIN_REMAINING_MS
    max_concurrent_inferences: int = 1
    max_queued_requests: int = 8
    webhook_token: str | None = None
    tmp_dir: Path = Path(tempfile.gettempdir())
    # Security and per-request bounds (README: Security).
    allowed_buckets: tuple[str, ...] = ()  # "bucket" or "bucket/prefix/"; empty: every bucket
    allow_unauthenticated_events: bool = False
    inference_token: str | None = None
    max_inference_pixels: int = DEFAULT_MAX_INFERENCE_PIXELS
    inference_timeout_s: int = DEFAULT_INFERENCE_TIMEOUT_S
    upload_read_timeout_s: int = DEFAULT_UPLOAD_READ_TIMEOUT_S
    max_event_records: int = DEFAULT_MAX_EVENT_RECORDS
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT
    stale_tmp_minutes: int = DEFAULT_STALE_TMP_MINUTES
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES
    max_bands: int = DEFAULT_MAX_BANDS
    allowed_compressions: tuple[str, ...] = DEFAULT_COMPRESSIONS
    max_compression_ratio: int = DEFAULT_MAX_COMPRESSION_RATIO
    # fan-out (handler/fanout): off while both are unset. AWS: the SQS queue for shard messages; Knative: the
    # sink (K_SINK, injected by the SinkBinding of infra/knative/fanout.yaml) that takes them as CloudEvents.
    fanout_queue_url: str | None = None
    fanout_sink_url: str | None = None
    fanout_seconds_per_tile: float = DEFAULT_FANOUT_SECONDS_PER_TILE
    fanout_threshold_seconds: int = DEFAULT_FANOUT_THRESHOLD_SECONDS
    fanout_max_shards: int = DEFAULT_FANOUT_MAX_SHARDS
    max_scene_pixels: int = DEFAULT_MAX_SCENE_PIXELS

    def __post_init__(self) -> None:
        problems = _validate(self)
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() != "" else None

        raw: dict[str, object] = {}
        text_fields = {
            ENV_MODEL_URI: "model_uri",
            ENV_PRECISION: "precision",
            ENV_ENGINE: "engine",
            ENV_DEVICE: "device",
            ENV_OUTPUT_MODE: "output_mode",
            ENV_OUTPUT_BUCKET: "output_bucket",
            ENV_OUTPUT_PREFIX: "output_prefix",
            ENV_WEBHOOK_TOKEN: "webhook_token",
            ENV_INFERENCE_TOKEN: "inference_token",
            ENV_FANOUT_QUEUE_URL: "fanout_queue_url",
            ENV_K_SINK: "fanout_sink_url",
        }
        for name, attr in text_fields.items():
            if (value := get(name)) is not None:
                raw[attr] = value.lower() if attr in ("precision", "engine", "device", "output_mode") else value
        for name, attr in {ENV_MODEL_CARD: "model_card", ENV_MODEL_CACHE_DIR: "model_cache_dir"}.items():
            if (value := get(name)) is not None:
                raw[attr] = Path(value)
        if (value := get(ENV_TMP_DIR)) is not None:
            raw["tmp_dir"] = Path(value)
        int_fields = {
            ENV_MAX_PIXELS: "max_pixels",
            ENV_MAX_INPUT_BYTES: "max_input_bytes",
            ENV_MIN_REMAINING_MS: "min_remaining_ms",
            ENV_MAX_CONCURRENT_INFERENCES: "max_concurrent_inferences",
            ENV_MAX_QUEUED_REQUESTS: "max_queued_requests",
            ENV_MAX_INFERENCE_PIXELS: "max_inference_pixels",
            ENV_INFERENCE_TIMEOUT_S: "inference_timeout_s",
            ENV_UPLOAD_READ_TIMEOUT_S: "upload_read_timeout_s",
            ENV_MAX_EVENT_RECORDS: "max_event_records",
            ENV_MAX_RECEIVE_COUNT: "max_receive_count",
            ENV_STALE_TMP_MINUTES: "stale_tmp_minutes",
            ENV_MAX_BLOCK_BYTES: "max_block_bytes",
            ENV_MAX_BANDS: "max_bands",
            ENV_MAX_COMPRESSION_RATIO: "max_compression_ratio",
            ENV_FANOUT_THRESHOLD_SECONDS: "fanout_threshold_seconds",
            ENV_FANOUT_MAX_SHARDS: "fanout_max_shards",
            ENV_MAX_SCENE_PIXELS: "max_scene_pixels",
        }
        for name, attr in int_fields.items():
            if (value := get(name)) is not None:
                raw[attr] = _parse_int(name, value)
        if (value := get(ENV_INPUT_SUFFIXES)) is not None:
            raw["input_suffixes"] = parse_suffixes(value)
        if (value := get(ENV_ALLOWED_BUCKETS)) is not None:
            raw["allowed_buckets"] = parse_allowed_buckets(value)
        if (value := get(ENV_ALLOW_UNAUTHENTICATED_EVENTS)) is not None:
            raw["allow_unauthenticated_events"] = _parse_bool(ENV_ALLOW_UNAUTHENTICATED_EVENTS, value)
        if (value := get(ENV_ALLOWED_COMPRESSIONS)) is not None:
            raw["allowed_compressions"] = parse_compressions(value)
        if (value := get(ENV_FANOUT_SECONDS_PER_TILE)) is not None:
            raw["fanout_seconds_per_tile"] = _parse_float(ENV_FANOUT_SECONDS_PER_TILE, value)
        return cls(**raw)  # type: ignore[arg-type]


def env_var_names() -> tuple[str, ...]:
    """Every environment variable this module reads (the infra cross-checks against this)."""
    return tuple(v for k, v in globals().items() if k.startswith("ENV_") and isinstance(v, str))


def parse_suffixes(value: str) -> tuple[str, ...]:
    """``"tif, .TIFF"`` -> ``(".tif", ".tiff")``."""
    suffixes = normalise_suffixes(value.split(","))
    if not suffixes:
        raise ConfigError(f"{ENV_INPUT_SUFFIXES} must list at least one suffix, got {value!r}")
    return suffixes


def parse_allowed_buckets(value: str) -> tuple[str, ...]:
    """``"a, b/in/"`` -> ``("a", "b/in/")``: bucket names, each optionally with a key prefix.

    >>> parse_allowed_buckets("scenes, shared/uploads/")
    ('scenes', 'shared/uploads/')
    """
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _parse_bool(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def parse_compressions(value: str) -> tuple[str, ...]:
    """``"deflate, zstd"`` -> ``("DEFLATE", "ZSTD")`` (GDAL's names; see ``model.decode_limits``)."""
    names = tuple(dict.fromkeys(part.strip().upper() for part in value.split(",") if part.strip()))
    if not names:
        raise ConfigError(f"{ENV_ALLOWED_COMPRESSIONS} must list at least one compression, got {value!r}")
    return names


def _parse_int(name: str, value: str) -> int:
    try:
        return int(value.replace("_", ""))
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from exc


def _parse_float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc


def _validate(s: Settings) -> list[str]:
    problems = []
    if s.precision not in PRECISIONS:
        problems.append(f"{ENV_PRECISION} must be one of {PRECISIONS}, got {s.precision!r}")
    if s.engine not in ENGINES:
        problems.append(f"{ENV_ENGINE} must be one of {ENGINES}, got {s.engine!r}")
    if s.device not in DEVICES:
        problems.append(f"{ENV_DEVICE} must be one of {DEVICES}, got {s.device!r}")
    if s.output_mode not in OUTPUT_MODES:
        problems.append(f"{ENV_OUTPUT_MODE} must be one of {OUTPUT_MODES}, got {s.output_mode!r}")
    if s.model_uri is not None and not s.model_uri.startswith("s3://"):
        problems.append(f"{ENV_MODEL_URI} must be an s3:// URI, got {s.model_uri!r}")
    positive = (
        "max_pixels",
        "max_input_bytes",
        "max_concurrent_inferences",
        "max_inference_pixels",
        "inference_timeout_s",
        "upload_read_timeout_s",
        "max_event_records",
        "max_receive_count",
        "stale_tmp_minutes",
        "max_block_bytes",
        "max_bands",
    )
    for name in positive:
        if getattr(s, name) < 1:
            problems.append(f"{name.upper()} must be >= 1, got {getattr(s, name)}")
    for name in ("min_remaining_ms", "max_queued_requests"):
        if getattr(s, name) < 0:
            problems.append(f"{name.upper()} must be >= 0, got {getattr(s, name)}")
    if s.output_prefix.startswith("/") or ".." in s.output_prefix.split("/"):
        problems.append(f"{ENV_OUTPUT_PREFIX} must be a relative key prefix, got {s.output_prefix!r}")
    if s.max_compression_ratio < 2:
        problems.append(f"{ENV_MAX_COMPRESSION_RATIO} must be >= 2, got {s.max_compression_ratio}")
    unknown = [name for name in s.allowed_compressions if name not in KNOWN_COMPRESSIONS]
    if unknown or not s.allowed_compressions:
        problems.append(
            f"{ENV_ALLOWED_COMPRESSIONS} must list names among {', '.join(KNOWN_COMPRESSIONS)}, got {unknown or '()'}"
        )
    for name in ("fanout_max_shards", "max_scene_pixels"):
        if getattr(s, name) < 1:
            problems.append(f"{name.upper()} must be >= 1, got {getattr(s, name)}")
    if s.fanout_sink_url is not None:
        problems += _url_problems((ENV_K_SINK, s.fanout_sink_url))
    if s.fanout_queue_url is not None and s.fanout_sink_url is not None:
        problems.append(f"set {ENV_FANOUT_QUEUE_URL} (AWS) or {ENV_K_SINK} (Knative) for shard messages, not both")
    if not s.fanout_seconds_per_tile > 0 or s.fanout_threshold_seconds < 0:
        problems.append("FANOUT_SECONDS_PER_TILE must be > 0 and FANOUT_THRESHOLD_SECONDS >= 0")
    if ".npy" in s.input_suffixes:
        problems.append(f"{ENV_INPUT_SUFFIXES} must not include .npy (the function's own outputs)")
    for rule in s.allowed_buckets:
        bucket, _, prefix = rule.partition("/")
        if not _BUCKET_NAME.fullmatch(bucket) or prefix.startswith("/") or ".." in prefix.split("/"):
            problems.append(f"{ENV_ALLOWED_BUCKETS} entries must be 'bucket' or 'bucket/prefix/', got {rule!r}")
    return problems


def _url_problems(*named: tuple[str, str]) -> list[str]:
    """One problem for each ``(variable, value)`` that is not an http(s) URL."""
    return [
        f"{name} must be an http:// or https:// URL, got {value!r}"
        for name, value in named
        if not value.startswith(("http://", "https://"))
    ]


@cache
def get_settings() -> Settings:
    """Settings from the process environment, read once per process."""
    return Settings.from_env()


def reload_settings() -> Settings:
    """Read the environment again (after a tool or test changed it); :func:`get_settings` then returns these."""
    get_settings.cache_clear()
    return get_settings()


SETTINGS_FIELDS = tuple(f.name for f in fields(Settings))


# --- the Eventing relay's settings (a separate process: `rasterfn relay`) -------------------------------------


@dataclass(frozen=True)
class RelaySettings:
    """What ``rasterfn relay`` needs: where to publish (the Broker), where to deliver (the function), the token.

    Every field is required: the relay is the only door MinIO's webhooks come through, so it fails closed.

    >>> RelaySettings.from_env({"K_SINK": "http://b/default/default", "RELAY_TARGET_URL": "http://f",
    ...                         "WEBHOOK_TOKEN": "t"}).sink_url
    'http://b/default/default'
    """

    sink_url: str
    target_url: str
    webhook_token: str

    def __post_init__(self) -> None:
        problems = _url_problems((ENV_K_SINK, self.sink_url), (ENV_RELAY_TARGET_URL, self.target_url))
        if not self.webhook_token:
            problems.append(f"{ENV_WEBHOOK_TOKEN} must be set: the relay never accepts unauthenticated webhooks")
        if problems:
            raise ConfigError("invalid relay settings: " + "; ".join(problems))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RelaySettings:
        env = os.environ if environ is None else environ
        values = [(env.get(name) or "").strip() for name in (ENV_K_SINK, ENV_RELAY_TARGET_URL, ENV_WEBHOOK_TOKEN)]
        return cls(*values)
