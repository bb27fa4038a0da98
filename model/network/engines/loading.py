"""Which engine runs a card, and loading it once per process: ``load_inference_model(card, engine=...)``.

``ENGINE=auto`` picks the serving engine (openvino) when it is installed and the card has an exported graph
for the precision (``PRECISION=auto``: the fp32 graph), unless ``DEVICE=cuda`` asks for the GPU (torch's);
otherwise torch. ``PRECISION=auto`` is then resolved for that engine (:mod:`model.network.engines.precision`)
and logged. Whether a package is
installed is asked of the import system without importing it, so choosing never imports torch.

Example:
    >>> load_inference_model(DEFAULT_CARD_PATH, engine="auto").engine               # doctest: +SKIP
    'openvino'
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from model.card import DEFAULT_CARD_PATH, ModelCard, load_card
from model.errors import ConfigError
from model.network.engines.artefacts import graph_for
from model.network.engines.base import InferenceModel
from model.network.engines.precision import AUTO, auto_precision
from model.options import ENGINES, PRECISION_SETTINGS, SERVING_ENGINE

log = logging.getLogger(__name__)

TORCH_INSTALL_HINT = "install rasterfn[torch], or build the image's torch target"


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def resolve_engine(engine: str, card: ModelCard, precision: str = "fp32", device: str = "cpu") -> str:
    """``auto`` -> the engine that will run ``card``; an impossible choice is a :class:`ConfigError`."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
    if precision not in PRECISION_SETTINGS:
        raise ConfigError(f"precision must be one of {PRECISION_SETTINGS}, got {precision!r}")
    precision = "fp32" if precision == AUTO else precision  # auto runs at least the fp32 graph
    if engine == "auto":
        serving_ok = installed(SERVING_ENGINE) and graph_for(card, precision) is not None
        engine = SERVING_ENGINE if serving_ok and device != "cuda" else "torch"
        if engine == "torch" and not installed("torch"):
            raise ConfigError(
                f"no engine can run card {card.path} at PRECISION={precision}: it has no exported {SERVING_ENGINE} "
                f"graph for it (run `rasterfn export`) and torch is not installed ({TORCH_INSTALL_HINT})"
            )
    if engine == "torch" and not installed("torch"):
        raise ConfigError(f"ENGINE=torch but torch is not installed ({TORCH_INSTALL_HINT})")
    if engine == "torch" and precision == "int8":
        raise ConfigError(f"PRECISION=int8 needs ENGINE={SERVING_ENGINE} (or auto) and an exported int8 graph")
    if engine == SERVING_ENGINE:
        if not installed(SERVING_ENGINE):
            raise ConfigError(f"ENGINE={SERVING_ENGINE} but the {SERVING_ENGINE} package is not installed")
        if device == "cuda":
            raise ConfigError(f"DEVICE=cuda needs ENGINE=torch (the {SERVING_ENGINE} engine runs on the CPU)")
        if graph_for(card, precision) is None:
            raise ConfigError(
                f"model card {card.path} has no exported {SERVING_ENGINE} graph for PRECISION={precision}: "
                "run `rasterfn export` (or use ENGINE=torch)"
            )
    return engine


def resolve_precision(precision: str, card: ModelCard, engine: str) -> str:
    """``auto`` -> the precision :func:`~model.network.engines.precision.auto_precision` picks (logged)."""
    if precision != AUTO:
        return precision
    chosen, why = auto_precision(card, engine)
    log.info("PRECISION=auto on %s: %s", engine, why)
    return chosen


_cache: dict[tuple, InferenceModel] = {}
_cache_lock = threading.Lock()


def load_inference_model(
    card_path: str | Path = DEFAULT_CARD_PATH,
    *,
    engine: str = "auto",
    precision: str = "fp32",
    device: str = "cpu",
    weights_path: str | Path | None = None,
    graph_paths: Mapping[str, Path] | None = None,
) -> InferenceModel:
    """The model ``card_path`` names on the engine :func:`resolve_engine` picks, loaded once per process.

    ``weights_path`` replaces the card's checkpoint (torch); ``graph_paths`` its graph files (openvino), e.g.
    verified copies fetched from ``MODEL_URI``. Either is checked against the card's sha256.
    """
    card = load_card(card_path)
    engine = resolve_engine(engine, card, precision, device)
    precision = resolve_precision(precision, card, engine)
    if engine == "torch":
        from model.network.checkpoint import load_model

        return load_model(card.path, weights_path)
    key = (card.path, engine, precision, tuple(sorted((graph_paths or {}).items())))
    with _cache_lock:
        if key not in _cache:
            from model.network.engines.openvino_engine import load_openvino_model

            _cache[key] = load_openvino_model(card, precision, graph_paths)
        return _cache[key]


def clear_engine_cache() -> None:
    with _cache_lock:
        _cache.clear()
