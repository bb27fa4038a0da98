"""The OpenVINO engine: the serving engine of the torch-free image (fp32, bf16 where the CPU has it, int8).

It runs the OpenVINO IR graphs ``rasterfn export`` wrote and the card pins by sha256. Chosen over ONNX Runtime
by measurement on the demo U-Net (README "Performance"; the issue's table): a little faster in fp32 (56-60 vs
66 ms per 512 x 512 tile on 2 cores), much faster in int8 (NNCF's static per-channel quantisation) and the
only one of the two that uses native bf16. Graphs take any
batch and tile size (dynamic shapes), so edge tiles and small rasters need no recompilation.

Every prediction gets its own inference requests (one compiled model, shared by threads, is safe to infer from
through separate requests). fp32 means fp32 arithmetic: OpenVINO would otherwise run bf16 on CPUs with AVX-512
BF16 or AMX, so the inference precision is always set explicitly.

Example:
    >>> model = load_openvino_model(load_card(DEFAULT_CARD_PATH), "int8")                 # doctest: +SKIP
    >>> predict_file(model, "data/test-1.tif", "/tmp/out.npy", PredictOptions(precision="int8"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from model.card import ModelCard
from model.errors import ConfigError
from model.network.engines.artefacts import ServingGraph, graph_for, local_paths, verify_files
from model.network.engines.base import inference_threads
from model.options import PredictOptions

log = logging.getLogger(__name__)

ENGINE = "openvino"
# LATENCY: one stream using every core; THROUGHPUT: one stream per core, several tiles in flight. On 2 cores
# they measured the same per fp32 tile (59.7 vs 60.7 ms, 4 tiles in flight), and LATENCY keeps one tile's memory.
PERFORMANCE_HINT = "LATENCY"
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 graphs: the rest of the ops in f32

_core: ov.Core | None = None
_core_lock = threading.Lock()
_bf16_warned = False


def core() -> ov.Core:
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's CPU optimisation capabilities here (``FP32``, ``BF16``, ``INT8``, ...)."""
    return tuple(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cpu_has_bf16() -> bool:
    return "BF16" in cpu_capabilities()


@dataclass(frozen=True)
class OpenVINOModel:
    """One compiled graph of a card, ready for inference at ``precision``; ``sha256``: its weights file's."""

    card: ModelCard
    sha256: str
    precision: str
    graph: ServingGraph
    compiled: Any = field(repr=False)

    @property
    def engine(self) -> str:
        return ENGINE

    def tile_engine(self, options: PredictOptions, one_tile: bool) -> OpenVINORunner:
        if options.precision not in (self.precision, "auto"):  # auto: what the model was loaded at
            raise ConfigError(f"the openvino model was loaded for PRECISION={self.precision}, not {options.precision}")
        if options.device == "cuda":
            raise ConfigError("DEVICE=cuda needs ENGINE=torch (the openvino engine runs on the CPU)")
        return OpenVINORunner(self.compiled)

    def warm_up(self, options: PredictOptions) -> None:
        card = self.card
        tile = np.zeros((len(card.bands), card.tile_size, card.tile_size), dtype=np.float32)
        self.tile_engine(options, one_tile=False)([tile])


class OpenVINORunner:
    """Tiles -> scores through the compiled graph, ``batch_size`` tiles in flight at once (one per request).

    The scores it returns are reused by its next call (one array per place in a call and tile shape: fresh pages
    cost more than the copy on a VM that backs memory lazily): use them before calling again, as the predictor does.
    """

    def __init__(self, compiled: Any) -> None:
        self.batch_size = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.requests = [compiled.create_infer_request() for _ in range(self.batch_size)]
        self._scores: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}  # (place in a call, shape) -> scores

    def __call__(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        outputs: list[np.ndarray] = []
        for start in range(0, len(tiles), len(self.requests)):
            chunk = tiles[start : start + len(self.requests)]
            busy = list(zip(self.requests, chunk, strict=False))
            for request, tile in busy:
                # Shared, not copied into the request (4-5 ms of a 265 ms 1072^2 tile): the tile is not touched
                # until every request of the chunk has finished.
                request.start_async({0: np.ascontiguousarray(tile[None])}, share_inputs=True)
            for request, _ in busy:
                request.wait()
                # The request reuses its output buffer: copy before the next tile.
                scores = request.get_output_tensor(0).data[0, 0]
                key = (len(outputs), scores.shape)  # the tile's place in this call: none shares an array
                out = self._scores.setdefault(key, np.empty(scores.shape, dtype=np.float32))
                np.copyto(out, scores)
                outputs.append(out)
        return outputs


def load_openvino_model(card: ModelCard, precision: str, paths: Mapping[str, Path] | None = None) -> OpenVINOModel:
    """Verify the card's graph for ``precision`` (files beside the card, or ``paths``) and compile it."""
    graph = graph_for(card, precision)
    if graph is None:
        raise ConfigError(
            f"model card {card.path} has no exported graph for PRECISION={precision}: run `rasterfn export` "
            "(or use ENGINE=torch)"
        )
    if graph.engine != ENGINE:
        raise ConfigError(f"model card {card.path}: its graphs are for {graph.engine!r}, not {ENGINE!r}")
    verified = verify_files(card, graph, paths if paths is not None else local_paths(card, graph))
    config = {
        "PERFORMANCE_HINT": PERFORMANCE_HINT,
        "INFERENCE_NUM_THREADS": inference_threads(),
        "INFERENCE_PRECISION_HINT": _inference_precision(precision),
    }
    network = core().read_model(str(verified["xml"]), str(verified["bin"]))
    compiled = core().compile_model(network, "CPU", config)
    return OpenVINOModel(card, graph.files["bin"].sha256, precision, graph, compiled)


def _inference_precision(precision: str) -> str:
    global _bf16_warned
    if precision == "bf16" and not cpu_has_bf16():
        if not _bf16_warned:
            _bf16_warned = True
            log.warning("PRECISION=bf16 requested but this CPU has no native bf16 support: using fp32")
        return "f32"
    return INFERENCE_PRECISION[precision]
