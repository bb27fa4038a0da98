"""The one place that reads configuration from the environment.

Each setting is declared once, as a field of :class:`Settings` (its variable, default, bounds and one line of
help: :func:`setting`); :meth:`Settings.from_env` parses and validates them all at once, so a bad deployment
fails at start-up with one clear :class:`ConfigError`. CLI flags win via :func:`dataclasses.replace`.

Example:
    >>> s = Settings.from_env({"PRECISION": "bf16", "MAX_PIXELS": "1000000"})
    >>> (s.precision, s.max_pixels)
    ('bf16', 1000000)
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from handler.objects import OWN_EXTENSIONS, OWN_OUTPUT_SUFFIXES, normalise_suffixes
from model.card import DEFAULT_CARD_PATH
from model.errors import ConfigError
from model.io.decode_limits import (
    DEFAULT_COMPRESSIONS,
    DEFAULT_MAX_BANDS,
    DEFAULT_MAX_BLOCK_BYTES,
    DEFAULT_MAX_COMPRESSION_RATIO,
    KNOWN_COMPRESSIONS,
)
from model.options import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_OUTPUT_FORMATS,
    DEFAULT_PRECISION_SETTING,
    DEVICES,
    ENGINES,
    OUTPUT_FORMATS,
    OUTPUT_MODES,
    PRECISION_SETTINGS,
)

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
NO_BUCKET = "-"  # an ALLOWED_BUCKETS entry that matches no bucket: `rasterfn serve`'s default when it is unset


@dataclass(frozen=True)
class Spec:
    """One setting's declaration beside its field: the variable, its bounds and one line of help."""

    env: str
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    parse: Callable[[str], object] | None = None  # the variable's text -> the field's value; by type when None


def setting(
    env: str,
    default: object,
    help: str,
    *,
    minimum: float | None = None,
    choices: tuple[str, ...] = (),
    parse: Callable[[str], object] | None = None,
) -> Any:
    """A :class:`Settings` field read from ``env``: the default, the bounds and the help, declared once."""
    return field(default=default, metadata={"spec": Spec(env, help, minimum, choices, parse)})


def parse_suffixes(value: str) -> tuple[str, ...]:
    """``"tif, .TIFF"`` -> ``(".tif", ".tiff")``."""
    suffixes = normalise_suffixes(value.split(","))
    if not suffixes:
        raise ConfigError(f"INPUT_SUFFIXES must list at least one suffix, got {value!r}")
    return suffixes


def parse_outputs(value: str) -> tuple[str, ...]:
    """``"npy, COG,stac"`` -> ``("npy", "cog", "stac")``: what is written beside each input, in a fixed order.

    >>> parse_outputs("stac,cog")
    ('cog', 'stac')
    """
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in OUTPUT_FORMATS]
    if unknown or not names:
        raise ConfigError(f"OUTPUTS must list some of {', '.join(OUTPUT_FORMATS)}, got {value!r}")
    return tuple(name for name in OUTPUT_FORMATS if name in names)


def parse_allowed_buckets(value: str) -> tuple[str, ...]:
    """``"a, b/in/"`` -> ``("a", "b/in/")``: bucket names, each optionally with a key prefix.

    >>> parse_allowed_buckets("scenes, shared/uploads/")
    ('scenes', 'shared/uploads/')
    """
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_compressions(value: str) -> tuple[str, ...]:
    """``"deflate, zstd"`` -> ``("DEFLATE", "ZSTD")`` (GDAL's names; see ``model.io.decode_limits``)."""
    names = tuple(dict.fromkeys(part.strip().upper() for part in value.split(",") if part.strip()))
    if not names:
        raise ConfigError(f"ALLOWED_COMPRESSIONS must list at least one compression, got {value!r}")
    return names


def parse_origins(value: str) -> tuple[str, ...]:
    """``"https://a.example/, http://localhost:3000"`` -> ``("https://a.example", "http://localhost:3000")``."""
    return tuple(part.strip().rstrip("/").lower() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Validated runtime settings, each declared once; the README's configuration table says more."""

    model_card: Path = setting("MODEL_CARD", DEFAULT_CARD_PATH, "the model card JSON")
    model_uri: str | None = setting("MODEL_URI", None, "s3://bucket/key of the weights, fetched once per container")
    model_cache_dir: Path = setting("MODEL_CACHE_DIR", DEFAULT_MODEL_CACHE_DIR, "where MODEL_URI files are cached")
    precision: str = setting(
        "PRECISION",
        DEFAULT_PRECISION_SETTING,
        "the engine's precision (auto: resolved once at start, logged)",
        choices=PRECISION_SETTINGS,
        parse=str.lower,
    )
    engine: str = setting("ENGINE", "auto", "openvino, torch or auto", choices=ENGINES, parse=str.lower)
    device: str = setting("DEVICE", "cpu", "where the engine runs", choices=DEVICES, parse=str.lower)
    output_mode: str = setting("OUTPUT_MODE", "mask", "what the .npy holds", choices=OUTPUT_MODES, parse=str.lower)
    outputs: tuple[str, ...] = setting(
        "OUTPUTS", DEFAULT_OUTPUT_FORMATS, "what is written beside each input: npy, cog, stac", parse=parse_outputs
    )
    max_pixels: int = setting("MAX_PIXELS", DEFAULT_MAX_PIXELS, "largest raster one invocation reads", minimum=1)
    max_input_bytes: int = setting("MAX_INPUT_BYTES", DEFAULT_MAX_INPUT_BYTES, "largest object downloaded", minimum=1)
    input_suffixes: tuple[str, ...] = setting(
        "INPUT_SUFFIXES", DEFAULT_INPUT_SUFFIXES, "which keys are inputs", parse=parse_suffixes
    )
    output_bucket: str | None = setting("OUTPUT_BUCKET", None, "where outputs go; the input's bucket when unset")
    output_prefix: str = setting("OUTPUT_PREFIX", "", "key prefix of the outputs")
    min_remaining_ms: int = setting(
        "MIN_REMAINING_MS", DEFAULT_MIN_REMAINING_MS, "Lambda: time a record needs left", minimum=0
    )
    max_concurrent_inferences: int = setting(
        "MAX_CONCURRENT_INFERENCES", 1, "Knative: inferences at once per process", minimum=1
    )
    max_queued_requests: int = setting("MAX_QUEUED_REQUESTS", 8, "Knative: requests waiting for a slot", minimum=0)
    webhook_token: str | None = setting("WEBHOOK_TOKEN", None, "Knative: the bearer token POST / requires")
    tmp_dir: Path = setting("TMPDIR", Path(tempfile.gettempdir()), "downloads, uploads and outputs in progress")
    # Security and per-request bounds (README: Security).
    allowed_buckets: tuple[str, ...] = setting(
        "ALLOWED_BUCKETS", (), "bucket or bucket/prefix/ entries; empty: every bucket", parse=parse_allowed_buckets
    )
    allow_unauthenticated_events: bool = setting(
        "ALLOW_UNAUTHENTICATED_EVENTS", False, "Knative: POST / without WEBHOOK_TOKEN"
    )
    inference_token: str | None = setting("INFERENCE_TOKEN", None, "Knative: the bearer token POST /inference requires")
    max_inference_pixels: int = setting(
        "MAX_INFERENCE_PIXELS", DEFAULT_MAX_INFERENCE_PIXELS, "Knative: pixel limit of POST /inference", minimum=1
    )
    inference_timeout_s: int = setting(
        "INFERENCE_TIMEOUT_S", DEFAULT_INFERENCE_TIMEOUT_S, "deadline of one inference", minimum=1
    )
    upload_read_timeout_s: int = setting(
        "UPLOAD_READ_TIMEOUT_S", DEFAULT_UPLOAD_READ_TIMEOUT_S, "Knative: a silent request body's limit", minimum=1
    )
    max_event_records: int = setting(
        "MAX_EVENT_RECORDS", DEFAULT_MAX_EVENT_RECORDS, "objects one event may name", minimum=1
    )
    max_receive_count: int = setting(
        "MAX_RECEIVE_COUNT", DEFAULT_MAX_RECEIVE_COUNT, "Lambda: the receive run in a child process", minimum=1
    )
    stale_tmp_minutes: int = setting(
        "STALE_TMP_MINUTES", DEFAULT_STALE_TMP_MINUTES, "age of our job directories removed at start", minimum=1
    )
    allowed_origins: tuple[str, ...] = setting(
        "ALLOWED_ORIGINS", (), "browser origins allowed to call the routes; none by default", parse=parse_origins
    )
    max_block_bytes: int = setting("MAX_BLOCK_BYTES", DEFAULT_MAX_BLOCK_BYTES, "largest decoded TIFF block", minimum=1)
    max_bands: int = setting("MAX_BANDS", DEFAULT_MAX_BANDS, "most bands a TIFF may have", minimum=1)
    allowed_compressions: tuple[str, ...] = setting(
        "ALLOWED_COMPRESSIONS", DEFAULT_COMPRESSIONS, "codecs decoded (GDAL's names)", parse=parse_compressions
    )
    max_compression_ratio: int = setting(
        "MAX_COMPRESSION_RATIO", DEFAULT_MAX_COMPRESSION_RATIO, "largest decoded / stored ratio", minimum=2
    )
    # fan-out (handler/fanout): off while both are unset. AWS: the SQS queue for shard messages; Knative: the
    # sink (K_SINK, injected by the SinkBinding of infra/knative/fanout.yaml) that takes them as CloudEvents.
    fanout_queue_url: str | None = setting("FANOUT_QUEUE_URL", None, "AWS: the SQS queue shard messages go to")
    fanout_sink_url: str | None = setting("K_SINK", None, "Knative: the sink shard messages (and the relay) go to")
    fanout_seconds_per_tile: float = setting(
        "FANOUT_SECONDS_PER_TILE", DEFAULT_FANOUT_SECONDS_PER_TILE, "the work estimate per tile"
    )
    fanout_threshold_seconds: int = setting(
        "FANOUT_THRESHOLD_SECONDS", DEFAULT_FANOUT_THRESHOLD_SECONDS, "estimated seconds above which rasters shard"
    )
    fanout_max_shards: int = setting("FANOUT_MAX_SHARDS", DEFAULT_FANOUT_MAX_SHARDS, "most bands per raster", minimum=1)
    max_scene_pixels: int = setting(
        "MAX_SCENE_PIXELS", DEFAULT_MAX_SCENE_PIXELS, "largest raster a sharded job takes", minimum=1
    )

    def __post_init__(self) -> None:
        problems = _validate(self)
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every declared variable that is set (blank counts as unset), parsed; the rest keep their defaults."""
        env = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        for f in fields(cls):
            spec: Spec = f.metadata["spec"]
            value = (env.get(spec.env) or "").strip()
            if value:
                raw[f.name] = (spec.parse or _parser_for(f.type, spec.env))(value)
        return cls(**raw)  # type: ignore[arg-type]


def specs() -> dict[str, Spec]:
    """Each field's declaration, by field name."""
    return {f.name: f.metadata["spec"] for f in fields(Settings)}


def env_name(field_name: str) -> str:
    """The variable a :class:`Settings` field is read from (``"model_uri"`` -> ``"MODEL_URI"``)."""
    return specs()[field_name].env


def _parser_for(annotation: str, env: str) -> Callable[[str], object]:
    # Annotations are strings here (``from __future__ import annotations``): the declared type names the parser.
    parsers: dict[str, Callable[[str], object]] = {
        "int": lambda v: _parse_int(env, v),
        "float": lambda v: _parse_float(env, v),
        "bool": lambda v: _parse_bool(env, v),
        "Path": Path,
        "str": str,
        "str | None": str,
    }
    return parsers[annotation]


def env_var_names() -> tuple[str, ...]:
    """Every environment variable this module reads (the infra cross-checks against this)."""
    return (*(spec.env for spec in specs().values()), ENV_RELAY_TARGET_URL, *RELAY_OIDC_FIELDS)


def _parse_bool(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


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
    for name, spec in specs().items():
        value = getattr(s, name)
        if spec.choices and value not in spec.choices:
            problems.append(f"{spec.env} must be one of {spec.choices}, got {value!r}")
        if spec.minimum is not None and value < spec.minimum:
            problems.append(f"{spec.env} must be >= {spec.minimum}, got {value}")
    if s.model_uri is not None and not s.model_uri.startswith("s3://"):
        problems.append(f"MODEL_URI must be an s3:// URI, got {s.model_uri!r}")
    if s.output_prefix.startswith("/") or ".." in s.output_prefix.split("/"):
        problems.append(f"OUTPUT_PREFIX must be a relative key prefix, got {s.output_prefix!r}")
    unknown = [name for name in s.allowed_compressions if name not in KNOWN_COMPRESSIONS]
    if unknown or not s.allowed_compressions:
        problems.append(
            f"ALLOWED_COMPRESSIONS must list names among {', '.join(KNOWN_COMPRESSIONS)}, got {unknown or '()'}"
        )
    if s.fanout_sink_url is not None:
        problems += _url_problems((ENV_K_SINK, s.fanout_sink_url))
    if s.fanout_queue_url is not None and s.fanout_sink_url is not None:
        problems.append(f"set FANOUT_QUEUE_URL (AWS) or {ENV_K_SINK} (Knative) for shard messages, not both")
    if not s.fanout_seconds_per_tile > 0 or s.fanout_threshold_seconds < 0:
        problems.append("FANOUT_SECONDS_PER_TILE must be > 0 and FANOUT_THRESHOLD_SECONDS >= 0")
    # Own outputs are skipped before INPUT_SUFFIXES is looked at (handler/filters.py); these would match nothing else.
    own = [suffix for suffix in s.input_suffixes if suffix in OWN_OUTPUT_SUFFIXES or suffix in OWN_EXTENSIONS]
    if own:
        problems.append(f"INPUT_SUFFIXES must not include {', '.join(own)} (the function's own outputs)")
    if s.outputs == ("stac",):
        problems.append("OUTPUTS=stac describes the other outputs: list npy or cog too")
    problems += _url_problems(*(("ALLOWED_ORIGINS", origin) for origin in s.allowed_origins))
    for rule in s.allowed_buckets:
        bucket, _, prefix = rule.partition("/")
        if rule == NO_BUCKET:
            continue
        if not _BUCKET_NAME.fullmatch(bucket) or prefix.startswith("/") or ".." in prefix.split("/"):
            problems.append(f"ALLOWED_BUCKETS entries must be 'bucket' or 'bucket/prefix/', got {rule!r}")
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
# The variables other modules name in messages or set, from the declaration above.
ENV_MODEL_URI = env_name("model_uri")
ENV_TMP_DIR = env_name("tmp_dir")
ENV_ALLOW_UNAUTHENTICATED_EVENTS = env_name("allow_unauthenticated_events")
ENV_K_SINK = env_name("fanout_sink_url")
ENV_WEBHOOK_TOKEN = env_name("webhook_token")
ENV_ALLOWED_BUCKETS = env_name("allowed_buckets")
ENV_ALLOWED_ORIGINS = env_name("allowed_origins")
ENV_OUTPUTS = env_name("outputs")


# --- the Eventing relay's settings (a separate process: `rasterfn relay`) -------------------------------------

ENV_RELAY_TARGET_URL = "RELAY_TARGET_URL"


@dataclass(frozen=True)
class RelaySettings:
    """What ``rasterfn relay`` needs: where to publish (the Broker), where to deliver (the function), the token,
    and whose deliveries may borrow it (Knative Eventing's OIDC sender identity: handler/http/oidc.py).

    Every field but the JWKS fetch's token and CA files is required: the relay is the only door MinIO's webhooks
    come through and lends the function's token, so it fails closed.

    >>> RelaySettings.from_env({"K_SINK": "http://b/default/default", "RELAY_TARGET_URL": "http://f",
    ...                         "WEBHOOK_TOKEN": "t", "RELAY_OIDC_ISSUER": "https://kubernetes.default.svc",
    ...                         "RELAY_OIDC_AUDIENCE": "rasterfn-relay", "RELAY_OIDC_SUBJECTS": "a, b",
    ...                         "RELAY_OIDC_JWKS": "/etc/jwks/jwks.json"}).oidc_subjects
    ('a', 'b')
    """

    sink_url: str
    target_url: str
    webhook_token: str
    # The Trigger's sender identity on POST /deliver.
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_subjects: tuple[str, ...] = ()
    oidc_jwks: str = ""  # an http(s) URL (the API server's /openid/v1/jwks) or a mounted file's absolute path
    oidc_jwks_bearer_file: str | None = None  # bearer token for the JWKS URL (a projected service-account token)
    oidc_jwks_ca_file: str | None = None  # CA bundle for the JWKS URL (the cluster's kube-root-ca.crt)

    def __post_init__(self) -> None:
        problems = _url_problems((ENV_K_SINK, self.sink_url), (ENV_RELAY_TARGET_URL, self.target_url))
        if not self.webhook_token:
            problems.append(f"{ENV_WEBHOOK_TOKEN} must be set: the relay never accepts unauthenticated webhooks")
        problems += _relay_oidc_problems(self)
        if problems:
            raise ConfigError("invalid relay settings: " + "; ".join(problems))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RelaySettings:
        env = os.environ if environ is None else environ
        values = [(env.get(name) or "").strip() for name in (ENV_K_SINK, ENV_RELAY_TARGET_URL, ENV_WEBHOOK_TOKEN)]
        oidc = {attr: (env.get(name) or "").strip() for name, attr in RELAY_OIDC_FIELDS.items()}
        subjects = tuple(part.strip() for part in oidc.pop("oidc_subjects").split(",") if part.strip())
        optional = {attr: oidc.pop(attr) or None for attr in ("oidc_jwks_bearer_file", "oidc_jwks_ca_file")}
        return cls(*values, **oidc, oidc_subjects=subjects, **optional)


# The relay's OIDC check (handler/http/oidc.py): each variable and the field it fills.
RELAY_OIDC_FIELDS = {
    "RELAY_OIDC_ISSUER": "oidc_issuer",
    "RELAY_OIDC_AUDIENCE": "oidc_audience",
    "RELAY_OIDC_SUBJECTS": "oidc_subjects",
    "RELAY_OIDC_JWKS": "oidc_jwks",
    "RELAY_OIDC_JWKS_BEARER_FILE": "oidc_jwks_bearer_file",
    "RELAY_OIDC_JWKS_CA_FILE": "oidc_jwks_ca_file",
}


def _relay_oidc_problems(s: RelaySettings) -> list[str]:
    why = "the relay lends its token only to deliveries of Knative Eventing's Triggers (authentication-oidc)"
    problems = _url_problems(("RELAY_OIDC_ISSUER", s.oidc_issuer))
    if not s.oidc_audience:
        problems.append(f"RELAY_OIDC_AUDIENCE must be set: {why}")
    if not s.oidc_subjects:
        problems.append(f"RELAY_OIDC_SUBJECTS must list the Triggers' service accounts: {why}")
    if not (s.oidc_jwks.startswith(("http://", "https://")) or s.oidc_jwks.startswith("/")):
        problems.append(f"RELAY_OIDC_JWKS must be an http(s) URL or an absolute file path, got {s.oidc_jwks!r}")
    return problems
