"""The PyTorch engine: the reference. Bit-exact one-tile masks, CUDA, bf16 autocast, and what training uses.

Tiles run in ``channels_last`` memory format, about 1.4x faster on CPU than contiguous fp32, whose float results
differ from contiguous ones in the last bits (at most 7.2e-6 on the demo model's scores, over 7 scenes). For a
one-tile mask that could flip a pixel sitting on the threshold, so :class:`GuardedRunner` recomputes the tile in
contiguous fp32 (the old arithmetic) whenever any score lies within ``EXACT_GUARD`` of it: the mask is then the
old service's bit for bit, at channels_last speed in the common case. ``score`` output of one tile always runs
contiguous.

Example:
    >>> runner = choose_runner(load_model(), "cpu", PredictOptions(), one_tile=True)     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import threading
from collections.abc import Sequence

import numpy as np
import torch

from model.errors import ConfigError
from model.network.engines.base import inference_threads
from model.options import DEVICES, PredictOptions

log = logging.getLogger(__name__)

# Measured gap between channels_last and contiguous fp32 scores: at most 7.2e-6 (demo model, 7 scenes); the
# guard is 14x that, and a tile with a score inside it is recomputed in the old arithmetic (~1 scene in 7).
EXACT_GUARD = 1e-4
CPU_BATCH = 1  # on CPU a batch only adds memory: one 512 x 512 tile already keeps every core busy
CUDA_BATCH = 8
TORCH_PRECISIONS = ("fp32", "bf16")


class TileRunner:
    """Runs the network on equally sized (bands, h, w) float32 tiles -> (h, w) float32 scores."""

    def __init__(self, net: torch.nn.Module, device: str, precision: str, channels_last: bool) -> None:
        self.net = net
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.batch_size = CUDA_BATCH if self.device.type == "cuda" else CPU_BATCH
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" and bf16_supported(self.device) else None

    def __call__(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        batch = np.stack(tiles) if len(tiles) > 1 else tiles[0][None]
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            context = (
                torch.autocast(self.device.type, dtype=self.autocast_dtype)
                if self.autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with context:
                y = self.net(x)
            y = y[:, 0].float().cpu().numpy()
        return list(y)


class GuardedRunner:
    """channels_last speed with the contiguous runner's mask, bit for bit (one-tile rasters, mask outputs).

    A tile whose fast scores all lie farther than ``guard`` from the threshold thresholds to the same mask as
    the exact runner's (their scores differ by far less than the guard); any other tile is recomputed exactly.
    """

    def __init__(self, fast: TileRunner, exact: TileRunner, threshold: float, guard: float = EXACT_GUARD) -> None:
        self.fast, self.exact = fast, exact
        self.threshold, self.guard = threshold, guard
        self.batch_size = fast.batch_size
        self.recomputed = 0

    def __call__(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        outputs = self.fast(tiles)
        if any(bool(np.any(np.abs(out - self.threshold) <= self.guard)) for out in outputs):
            self.recomputed += len(tiles)
            return self.exact(tiles)
        return outputs


def choose_runner(model, device: str, options: PredictOptions, one_tile: bool):
    """channels_last for tiles; for a one-tile raster, whatever keeps the old service's array exact."""
    if options.precision == "auto":  # the reference engine: auto is fp32 (model.network.engines.precision)
        options = dataclasses.replace(options, precision="fp32")
    if options.precision not in TORCH_PRECISIONS:
        raise ConfigError(f"PRECISION={options.precision} needs the serving engine (ENGINE=openvino or auto)")
    device = resolve_device(device)
    if not one_tile:
        return get_runner(model, device, options.precision, channels_last=True)
    exact = get_runner(model, device, options.precision, channels_last=False)
    if options.output == "score" or device != "cpu" or exact.autocast_dtype is not None:
        return exact
    fast = get_runner(model, device, options.precision, channels_last=True)
    return GuardedRunner(fast, exact, model.card.threshold, EXACT_GUARD)


_runner_lock = threading.Lock()
_prepared: dict[tuple[int, str, bool], torch.nn.Module] = {}
_threads_set = False
_bf16_warned = False


def get_runner(model, device: str, precision: str, channels_last: bool) -> TileRunner:
    """A runner over a copy of the network prepared for ``device`` and memory format (cached per process)."""
    global _threads_set
    with _runner_lock:
        if not _threads_set:
            torch.set_num_threads(inference_threads())
            _threads_set = True
        key = (id(model.net), device, channels_last)
        if key not in _prepared:
            net = model.net
            if device != "cpu" or channels_last:
                # Never mutate the shared cached network: the one-tile path needs it contiguous on the CPU.
                net = copy.deepcopy(net).to(device)
                if channels_last:
                    net = net.to(memory_format=torch.channels_last)
            _prepared[key] = net
        net = _prepared[key]
    return TileRunner(net, device, precision, channels_last)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is worth using on ``device``; logs once when bf16 falls back to fp32."""
    global _bf16_warned
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if not supported and not _bf16_warned:
        _bf16_warned = True
        log.warning(
            "PRECISION=bf16 requested but this %s has no native bf16 support (CPU capability %s): using fp32",
            device.type,
            torch.backends.cpu.get_cpu_capability(),
        )
    return supported


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without a GPU is a :class:`ConfigError`."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DEVICE=cuda but no CUDA device is available (use cpu or auto)")
    return device


def warm_up(model, options: PredictOptions) -> None:
    """One zero tile through the tiled path's runner: first-call allocations and kernel choices happen now."""
    card = model.card
    runner = choose_runner(model, options.device, options, one_tile=False)
    runner([np.zeros((len(card.bands), card.tile_size, card.tile_size), dtype=np.float32)])
