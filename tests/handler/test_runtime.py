"""handler/runtime.py: the per-process runtime and the predictor options it derives from the settings."""

from __future__ import annotations

import dataclasses

import pytest

from handler.runtime import (
    FUNCTION_VERSION,
    Runtime,
    build_runtime,
    get_runtime,
    options_from_settings,
    reload_runtime,
    runtime_is_built,
)
from handler.settings import Settings, get_settings
from handler.storage import Storage
from model.errors import ConfigError
from model.predictor.predict import PredictOptions


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (Settings(), PredictOptions(precision="auto")),  # auto: what the model was loaded at
        (
            Settings(output_mode="score", precision="bf16", device="auto", max_pixels=1000),
            PredictOptions(output="score", precision="bf16", device="auto", max_pixels=1000),
        ),
        # Knative's workers share the decoded copy's memory budget
        (Settings(max_concurrent_inferences=3), PredictOptions(precision="auto", predictions_at_once=3)),
    ],
)
def test_options_from_settings(settings, expected):
    assert options_from_settings(settings) == expected


def test_options_keep_the_cards_tiles_and_no_progress_bar():
    options = options_from_settings(Settings(output_mode="mask-uint8"))
    assert (options.tile_size, options.tile_overlap, options.progress) == (None, None, False)


def test_build_runtime_loads_the_card_and_is_frozen(tiny_model_card, tmp_path, moto_endpoint):
    runtime = build_runtime(Settings(model_card=tiny_model_card, tmp_dir=tmp_path), Storage.from_defaults())
    assert runtime.model.card.name == "tiny"
    assert runtime.options == PredictOptions()
    assert runtime.function_version == FUNCTION_VERSION and FUNCTION_VERSION.startswith("rasterfn ")
    with pytest.raises(dataclasses.FrozenInstanceError):
        runtime.settings = Settings()  # type: ignore[misc]


def test_build_runtime_refuses_a_missing_temp_dir(tiny_model_card, tmp_path, moto_endpoint):
    with pytest.raises(ConfigError, match="TMPDIR"):
        build_runtime(Settings(model_card=tiny_model_card, tmp_dir=tmp_path / "nope"), Storage.from_defaults())


def test_build_runtime_refuses_a_missing_card(tmp_path, moto_endpoint):
    with pytest.raises(ConfigError, match="not found"):
        build_runtime(Settings(model_card=tmp_path / "none.json", tmp_dir=tmp_path), Storage.from_defaults())


@pytest.fixture
def deployment_environment(monkeypatch, tiny_model_card, moto_endpoint):
    """The environment of a deployment (tiny model, score output), with the process's caches empty around it."""
    monkeypatch.setenv("MODEL_CARD", str(tiny_model_card))
    monkeypatch.setenv("OUTPUT_MODE", "score")
    get_settings.cache_clear()
    get_runtime.cache_clear()
    yield
    get_settings.cache_clear()
    get_runtime.cache_clear()


def test_get_runtime_reads_the_environment_once(monkeypatch, deployment_environment):
    runtime = get_runtime()
    # WHEN the environment changes later THEN the process keeps its runtime
    monkeypatch.setenv("OUTPUT_MODE", "mask")
    assert get_runtime() is runtime
    assert isinstance(runtime, Runtime) and runtime.options.output == "score"


def test_reload_runtime_reads_the_environment_again(monkeypatch, deployment_environment):
    # GIVEN a process whose runtime was built for one environment
    first = get_runtime()
    assert runtime_is_built()
    # WHEN a tool changes the environment and reloads
    monkeypatch.setenv("OUTPUT_MODE", "mask-uint8")
    second = reload_runtime()
    # THEN the settings and runtime are rebuilt, and get_runtime returns the new one
    assert second is not first and get_runtime() is second
    assert second.options.output == "mask-uint8" and get_settings().output_mode == "mask-uint8"


def test_runtime_is_built_does_not_build_it(deployment_environment):
    assert not runtime_is_built()
    get_runtime()
    assert runtime_is_built()
