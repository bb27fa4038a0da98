"""Loading and saving checkpoints in the old service's format, safely.

The old service saved ``{"model_state_dict": ...}`` with ``torch.save`` (``model/live_model.pickle``). Both that
and a bare state dict load through ``torch.load(..., weights_only=True)``: arbitrary pickles are refused, never
executed. fp16 tensors (the demo weights are stored so) are loaded as fp32.

Example:
    >>> loaded = load_model()          # the demo card, cached per process
    >>> loaded.net.training
    False
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from model.card import DEFAULT_CARD_PATH, ModelCard, load_card
from model.errors import CheckpointError
from model.network.digests import sha256_file
from model.network.unet import UNet
from model.options import PredictOptions

__all__ = ["LoadedModel", "build_model", "load_model", "read_state_dict", "save_checkpoint", "sha256_file"]

STATE_DICT_KEY = "model_state_dict"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, with the card and the checksum of the weights it came from."""

    card: ModelCard
    net: UNet
    sha256: str

    @property
    def engine(self) -> str:
        return "torch"

    def tile_engine(self, options: PredictOptions, one_tile: bool):
        """The torch engine's runner for ``options`` (see :mod:`model.network.engines.torch_engine`)."""
        from model.network.engines.torch_engine import choose_runner

        return choose_runner(self, options.device, options, one_tile)

    def warm_up(self, options: PredictOptions) -> None:
        from model.network.engines.torch_engine import warm_up

        warm_up(self, options)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from an old-format checkpoint or a bare state dict, as fp32 tensors."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint not found: {path}") from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} was refused: it is not a plain state dict loadable with weights_only=True "
            f"({first_line})"
        ) from exc
    if isinstance(obj, Mapping) and STATE_DICT_KEY in obj:
        obj = obj[STATE_DICT_KEY]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} holds {type(obj).__name__}, not a state dict "
            f"(expected {{'{STATE_DICT_KEY}': state_dict}} or a bare state dict)"
        )
    return {str(k): v.float() if v.is_floating_point() else v for k, v in obj.items()}


def save_checkpoint(net: torch.nn.Module, path: str | Path, *, fp16: bool = True) -> str:
    """Save ``net`` in the old service's format; returns the file's sha256."""
    state = {k: (v.half() if fp16 and v.is_floating_point() else v) for k, v in net.state_dict().items()}
    torch.save({STATE_DICT_KEY: state}, path)
    return sha256_file(path)


def build_model(card: ModelCard, weights_path: str | Path | None = None) -> LoadedModel:
    """Verify the weights against the card, build the U-Net and load the weights strictly."""
    weights_path = Path(weights_path) if weights_path is not None else card.weights_path
    if not weights_path.is_file():
        raise CheckpointError(f"weights file not found: {weights_path} (named by card {card.path})")
    digest = sha256_file(weights_path)
    if digest != card.weights_sha256:
        raise CheckpointError(
            f"weights {weights_path} have sha256 {digest}, but card {card.path} expects {card.weights_sha256}"
        )
    net = UNet(**card.architecture)
    try:
        net.load_state_dict(read_state_dict(weights_path), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights {weights_path} do not fit card {card.path}: {exc}") from exc
    net.eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return LoadedModel(card=card, net=net, sha256=digest)


_cache: dict[tuple[Path, Path | None], LoadedModel] = {}
_cache_lock = threading.Lock()


def load_model(card_path: str | Path = DEFAULT_CARD_PATH, weights_path: str | Path | None = None) -> LoadedModel:
    """Load a model once per process and reuse it (the init-phase cache of Lambda and Knative)."""
    key = (Path(card_path).resolve(), Path(weights_path).resolve() if weights_path else None)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build_model(load_card(key[0]), key[1])
        return _cache[key]


def clear_model_cache() -> None:
    with _cache_lock:
        _cache.clear()
