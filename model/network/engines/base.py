"""The engine boundary: a loaded model makes tile engines; a tile engine maps tiles to scores.

Both protocols are structural, so :class:`model.network.checkpoint.LoadedModel` (torch) and
:class:`model.network.engines.openvino_engine.OpenVINOModel` satisfy them without sharing a base class.

Example:
    >>> engine = model.tile_engine(PredictOptions(), one_tile=False)          # doctest: +SKIP
    >>> [scores] = engine([np.zeros((10, 512, 512), np.float32)])            # doctest: +SKIP
    >>> scores.shape                                                           # doctest: +SKIP
    (512, 512)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from model.card import ModelCard
from model.cpus import available_cpus
from model.options import PredictOptions


class TileEngine(Protocol):
    """Runs the network on equally sized (bands, h, w) float32 tiles -> one (h, w) float32 score map each.

    The score maps may be reused by the next call (the serving engine's are): use them before calling again.
    """

    batch_size: int  # how many tiles the predictor should hand over at once

    def __call__(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class InferenceModel(Protocol):
    """A model ready to predict: its card, the checksum of what was loaded, and the engine it runs on."""

    card: ModelCard
    sha256: str

    @property
    def engine(self) -> str: ...

    def tile_engine(self, options: PredictOptions, one_tile: bool) -> TileEngine:
        """An engine for one prediction; ``one_tile``: the whole raster is one tile (the old service's case)."""
        ...

    def warm_up(self, options: PredictOptions) -> None:
        """Run one tile as ``options`` would, so the first real one does not pay for lazy set-up."""
        ...


def inference_threads() -> int:
    """The CPU threads an engine may use: the CPUs this process may really use (affinity and cgroup quota).

    Lambda and containers restrict the CPUs a process gets; both engines would otherwise count the host's.
    """
    return available_cpus()
