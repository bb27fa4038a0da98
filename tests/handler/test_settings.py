"""handler/settings.py: every variable parsed once, explicit values, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from handler.settings import (
    DEFAULT_INPUT_SUFFIXES,
    ENV_K_SINK,
    ENV_RELAY_TARGET_URL,
    NO_BUCKET,
    RelaySettings,
    Settings,
    env_var_names,
    parse_outputs,
    parse_suffixes,
    specs,
)
from model.errors import ConfigError
from model.options import DEVICES, OUTPUT_MODES, PRECISION_SETTINGS, PredictOptions


def test_empty_environment_gives_the_documented_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.input_suffixes == DEFAULT_INPUT_SUFFIXES == (".tif", ".tiff")
    assert settings.max_pixels == PredictOptions().max_pixels
    assert (settings.precision, settings.device, settings.output_mode) == ("auto", "cpu", "mask")


def test_every_variable_is_read():
    # GIVEN a value for every variable the module names
    env = {
        "MODEL_CARD": "/opt/model/live.json",
        "MODEL_URI": "s3://models/live.pt",
        "MODEL_CACHE_DIR": "/tmp/cache",
        "PRECISION": "BF16",
        "ENGINE": "OpenVINO",
        "DEVICE": "auto",
        "OUTPUT_MODE": "mask-uint8",
        "OUTPUTS": "stac, COG,npy",
        "MAX_PIXELS": "1_000_000",
        "MAX_INPUT_BYTES": "2048",
        "INPUT_SUFFIXES": "tif, .GTiff",
        "OUTPUT_BUCKET": "masks",
        "OUTPUT_PREFIX": "out/",
        "MIN_REMAINING_MS": "0",
        "MAX_CONCURRENT_INFERENCES": "2",
        "MAX_QUEUED_REQUESTS": "0",
        "WEBHOOK_TOKEN": "s3cr3t",
        "TMPDIR": "/var/tmp",
        "ALLOWED_BUCKETS": "scenes, shared/uploads/",
        "ALLOW_UNAUTHENTICATED_EVENTS": "TRUE",
        "INFERENCE_TOKEN": "t0ken",
        "MAX_INFERENCE_PIXELS": "4_000_000",
        "INFERENCE_TIMEOUT_S": "120",
        "UPLOAD_READ_TIMEOUT_S": "10",
        "MAX_EVENT_RECORDS": "5",
        "MAX_RECEIVE_COUNT": "4",
        "STALE_TMP_MINUTES": "30",
        "ALLOWED_ORIGINS": "https://App.example/, http://localhost:3000",
        "MAX_BLOCK_BYTES": "1048576",
        "MAX_BANDS": "20",
        "ALLOWED_COMPRESSIONS": "deflate, LERC,deflate",
        "MAX_COMPRESSION_RATIO": "50",
        "FANOUT_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/rasterfn",
        "FANOUT_SECONDS_PER_TILE": "0.5",
        "FANOUT_THRESHOLD_SECONDS": "120",
        "FANOUT_MAX_SHARDS": "8",
        "MAX_SCENE_PIXELS": "2_000_000_000",
    }
    # (the Eventing relay's own is read by RelaySettings, below; K_SINK too, and here for Knative's fan-out)
    relay_only = {ENV_K_SINK, ENV_RELAY_TARGET_URL} | {name for name in env_var_names() if name.startswith("RELAY_")}
    assert set(env) == set(env_var_names()) - relay_only
    # WHEN parsed
    s = Settings.from_env(env)
    # THEN each lands in its field, normalised
    assert s.model_card == Path("/opt/model/live.json") and s.model_uri == "s3://models/live.pt"
    assert s.model_cache_dir == Path("/tmp/cache") and s.tmp_dir == Path("/var/tmp")
    assert (s.precision, s.engine, s.device, s.output_mode) == ("bf16", "openvino", "auto", "mask-uint8")
    assert s.outputs == ("npy", "cog", "stac")
    assert (s.max_pixels, s.max_input_bytes, s.min_remaining_ms) == (1_000_000, 2048, 0)
    assert s.input_suffixes == (".tif", ".gtiff")
    assert (s.output_bucket, s.output_prefix, s.webhook_token) == ("masks", "out/", "s3cr3t")
    assert (s.max_concurrent_inferences, s.max_queued_requests) == (2, 0)
    assert s.allowed_buckets == ("scenes", "shared/uploads/") and s.allow_unauthenticated_events is True
    assert (s.inference_token, s.max_inference_pixels, s.inference_timeout_s) == ("t0ken", 4_000_000, 120)
    assert (s.upload_read_timeout_s, s.max_event_records, s.max_receive_count) == (10, 5, 4)
    assert s.stale_tmp_minutes == 30
    assert s.allowed_origins == ("https://app.example", "http://localhost:3000")
    assert (s.max_block_bytes, s.max_bands, s.max_compression_ratio) == (1_048_576, 20, 50)
    assert s.allowed_compressions == ("DEFLATE", "LERC")
    assert s.fanout_queue_url == env["FANOUT_QUEUE_URL"]
    assert (s.fanout_seconds_per_tile, s.fanout_threshold_seconds, s.fanout_max_shards) == (0.5, 120, 8)
    assert s.max_scene_pixels == 2_000_000_000


def test_k_sink_is_the_fanout_sink_on_knative():
    # The SinkBinding of infra/knative/fanout.yaml injects it; AWS deployments set FANOUT_QUEUE_URL instead.
    sink = "http://broker-ingress.knative-eventing.svc.cluster.local/default/default"
    s = Settings.from_env({"K_SINK": sink})
    assert (s.fanout_sink_url, s.fanout_queue_url) == (sink, None)


def test_an_allowed_origin_must_be_a_url():
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS must be an http"):
        Settings.from_env({"ALLOWED_ORIGINS": "evil.example"})


def test_no_bucket_is_an_allowed_buckets_entry():
    assert Settings.from_env({"ALLOWED_BUCKETS": NO_BUCKET}).allowed_buckets == (NO_BUCKET,)


def test_blank_values_mean_unset():
    assert Settings.from_env({"OUTPUT_BUCKET": "  ", "PRECISION": ""}) == Settings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PRECISION": "fp16"}, "PRECISION must be one of"),
        ({"ENGINE": "onnx"}, "ENGINE must be one of"),
        ({"DEVICE": "tpu"}, "DEVICE must be one of"),
        ({"OUTPUT_MODE": "png"}, "OUTPUT_MODE must be one of"),
        ({"MAX_PIXELS": "lots"}, "MAX_PIXELS must be an integer"),
        ({"MAX_PIXELS": "0"}, "MAX_PIXELS must be >= 1"),
        ({"MAX_CONCURRENT_INFERENCES": "0"}, "MAX_CONCURRENT_INFERENCES must be >= 1"),
        ({"MAX_QUEUED_REQUESTS": "-1"}, "MAX_QUEUED_REQUESTS must be >= 0"),
        ({"MODEL_URI": "https://example.com/w.pt"}, "MODEL_URI must be an s3:// URI"),
        ({"OUTPUT_PREFIX": "../escape/"}, "OUTPUT_PREFIX must be a relative key prefix"),
        ({"OUTPUT_PREFIX": "/abs/"}, "OUTPUT_PREFIX must be a relative key prefix"),
        ({"INPUT_SUFFIXES": ".tif,.npy"}, "must not include .npy"),
        ({"K_SINK": "broker.default"}, "K_SINK must be an http:// or https:// URL"),
        ({"K_SINK": "http://broker", "FANOUT_QUEUE_URL": "https://sqs/q"}, "not both"),
        ({"INPUT_SUFFIXES": " , ."}, "must list at least one suffix"),
        ({"MAX_BLOCK_BYTES": "0"}, "MAX_BLOCK_BYTES must be >= 1"),
        ({"MAX_BANDS": "0"}, "MAX_BANDS must be >= 1"),
        ({"MAX_COMPRESSION_RATIO": "1"}, "MAX_COMPRESSION_RATIO must be >= 2"),
        ({"ALLOWED_COMPRESSIONS": "deflate,jpeg2000"}, r"ALLOWED_COMPRESSIONS must list names among .*JPEG2000"),
        ({"ALLOWED_COMPRESSIONS": " , "}, "ALLOWED_COMPRESSIONS must list at least one compression"),
    ],
)
def test_invalid_settings_fail_with_one_clear_message(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PRECISION": "fp16", "DEVICE": "tpu"})
    assert "PRECISION" in str(info.value) and "DEVICE" in str(info.value)


def test_choices_are_the_predictors_own():
    for precision in PRECISION_SETTINGS:  # the predictor's precisions, and auto
        assert Settings(precision=precision).precision == precision
    for device in DEVICES:
        assert Settings(device=device).device == device
    for mode in OUTPUT_MODES:
        assert Settings(output_mode=mode).output_mode == mode


@pytest.mark.parametrize(
    ("value", "expected"),
    [("tif", (".tif",)), (".TIF,.tiff", (".tif", ".tiff")), ("tif, , jp2", (".tif", ".jp2"))],
)
def test_parse_suffixes(value, expected):
    assert parse_suffixes(value) == expected


def test_the_relay_reads_its_variables_and_the_webhook_token():
    env = {"K_SINK": " http://broker/default/default ", "RELAY_TARGET_URL": "http://fn/", "WEBHOOK_TOKEN": "t0k"}
    env |= {"RELAY_OIDC_ISSUER": "https://i", "RELAY_OIDC_AUDIENCE": "a", "RELAY_OIDC_SUBJECTS": "s"}
    env |= {"RELAY_OIDC_JWKS": "/jwks.json"}
    assert RelaySettings.from_env(env) == RelaySettings(
        "http://broker/default/default", "http://fn/", "t0k", "https://i", "a", ("s",), "/jwks.json"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ALLOWED_BUCKETS": "Scenes"}, "ALLOWED_BUCKETS entries must be"),
        ({"ALLOWED_BUCKETS": "scenes/../x/"}, "ALLOWED_BUCKETS entries must be"),
        ({"ALLOW_UNAUTHENTICATED_EVENTS": "maybe"}, "ALLOW_UNAUTHENTICATED_EVENTS must be true or false"),
        ({"MAX_EVENT_RECORDS": "0"}, "MAX_EVENT_RECORDS must be >= 1"),
        ({"INFERENCE_TIMEOUT_S": "-1"}, "INFERENCE_TIMEOUT_S must be >= 1"),
        ({"MAX_INFERENCE_PIXELS": "0"}, "MAX_INFERENCE_PIXELS must be >= 1"),
    ],
)
def test_security_settings_are_validated(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_decode_limits_reach_the_predictor():
    # GIVEN limits set in the environment
    from handler.runtime import options_from_settings
    from model.io.decode_limits import DecodeLimits

    settings = Settings.from_env({"MAX_BANDS": "12", "ALLOWED_COMPRESSIONS": "zstd", "MAX_BLOCK_BYTES": "4096"})
    # THEN the predictor's options carry them; the defaults are the predictor's own
    assert options_from_settings(settings).limits == DecodeLimits(
        max_block_bytes=4096, max_bands=12, compressions=("ZSTD",), max_compression_ratio=1000
    )
    assert options_from_settings(Settings()).limits == DecodeLimits()


# --- the README's configuration table, against the declaration

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_settings() -> dict[str, str]:
    """``{variable: default cell}`` of the README's configuration table."""
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    return {cells[1].strip().strip("`"): cells[2].strip() for cells in rows}


def documented(default: object) -> str | None:
    """How the table writes a declared default, or None where it describes it in words (paths, unset)."""
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, tuple) and default:
        return f"`{','.join(default)}`"
    if isinstance(default, int | float) or (isinstance(default, str) and default):
        return f"`{default}`"
    return None


def test_the_readme_documents_every_variable_and_no_other():
    assert set(readme_settings()) == set(env_var_names())


def test_the_readmes_defaults_are_the_declared_ones():
    table = readme_settings()
    for name, spec in specs().items():
        expected = documented(getattr(Settings(), name))
        if expected is not None:
            assert table[spec.env] == expected, spec.env


def test_every_setting_is_declared_with_one_line_of_help():
    for spec in specs().values():
        assert spec.help and "\n" not in spec.help and spec.env.isupper()


# --- OUTPUTS, and INPUT_SUFFIXES against the outputs ---------------------------------------------------------


def test_outputs_default_to_the_npy_alone():
    assert Settings.from_env({}).outputs == ("npy",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("npy", ("npy",)),
        ("cog", ("cog",)),
        ("stac,cog", ("cog", "stac")),  # a fixed order, whatever the order given
        ("STAC, Cog ,NPY", ("npy", "cog", "stac")),
        ("cog,cog,npy,cog", ("npy", "cog")),  # duplicates once
        (" npy , , stac ", ("npy", "stac")),  # empty entries dropped
    ],
)
def test_parse_outputs(value, expected):
    assert parse_outputs(value) == expected
    assert Settings.from_env({"OUTPUTS": value}).outputs == expected


@pytest.mark.parametrize("value", ["bogus", "npy,png", "npy,tif", " , "])
def test_unknown_or_no_outputs_are_refused_naming_the_choices(value):
    with pytest.raises(ConfigError, match=r"OUTPUTS must list some of npy, cog, stac") as info:
        parse_outputs(value)
    assert repr(value) in str(info.value)
    with pytest.raises(ConfigError, match="OUTPUTS"):
        Settings.from_env({"OUTPUTS": value})


@pytest.mark.parametrize("value", ["stac", "STAC", "stac,stac"])
def test_stac_alone_is_refused(value):
    with pytest.raises(ConfigError, match="OUTPUTS=stac describes the other outputs: list npy or cog too"):
        Settings.from_env({"OUTPUTS": value})


@pytest.mark.parametrize("value", [".json", "json", ".png", ".npy", ".PNG", ".stac.json", ".mask.tif", ".error.json"])
def test_input_suffixes_refuse_the_outputs_extensions(value):
    with pytest.raises(ConfigError, match=r"INPUT_SUFFIXES must not include .*the function's own outputs"):
        Settings.from_env({"INPUT_SUFFIXES": f".tif,{value}"})


@pytest.mark.parametrize("value", [".tif", ".TIF,.tiff", ".jp2", ".mask"])
def test_input_suffixes_accept_rasters(value):
    assert Settings.from_env({"INPUT_SUFFIXES": value}).input_suffixes
