"""``rasterfn train-demo``: train the demo weights on synthetic scenes and write them with their model card.

The recipe is fixed (seeds, steps, crops, loss, optimiser), so a rerun gives the same weights up to thread
nondeterminism, as long as its steps finish inside the time budget (see :func:`train`). Inputs are normalised
exactly as inference does (:func:`normalise_p90`, per band and per scene). The U-Net ends in a ReLU and the
product thresholds that output at 0.5; training therefore fits the pre-ReLU output ``z`` of ``conv_final``
(captured with a forward hook) with BCE + soft Dice on ``sigmoid(k * (z - 0.5))``: ``relu(z) > 0.5`` exactly
when ``z > 0.5``, and positives below zero still get a gradient.

Example:
    $ rasterfn train-demo                                         # ~7 min on 2 idle cores, installs them
    $ rasterfn train-demo --out-dir /tmp/w --minutes 0.5         # a quick, poor model: /tmp/w/rejected/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from model.card import DEFAULT_ARCHITECTURE, DEFAULT_CARD_PATH, load_card
from model.errors import ConfigError
from model.network.checkpoint import LoadedModel, build_model, save_checkpoint
from model.network.unet import UNet
from model.predictor.predict import PERCENTILE, normalise_values, predict_file
from model.training.synthetic import BANDS, make_scene, write_scene_tif

CARD_NAME = "demo.json"
WEIGHTS_NAME = "demo.pt"
QUALITY_BAR = 0.90  # held-out IoU the demo weights must reach
THRESHOLD = 0.5
TORCH_THREADS = 2
DEFAULT_MAX_MINUTES = 12.0  # leaves time for data and evaluation within 15 minutes on a busy machine


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the weights."""

    torch_seed: int = 1234
    sampler_seed: int = 5678
    first_scene_seed: int = 0  # training scenes use seeds first_scene_seed, first_scene_seed + 1, ...
    pool_size: int = 16  # scenes held in memory at once
    refresh_every: int = 10  # steps between replacing the oldest scene with a new one
    steps: int = 1000
    batch_size: int = 8
    crop_size: int = 96
    learning_rate: float = 1.5e-3
    final_lr_fraction: float = 0.05
    warmup_steps: int = 20
    logit_scale: float = 4.0  # k in sigmoid(k * (z - 0.5))


RECIPE = Recipe()


@dataclass(frozen=True)
class TrainingRun:
    """A trained net and how training went."""

    net: UNet
    steps: int
    steps_timed: int  # steps whose learning rate the time budget set; 0 means the run is reproducible


HELDOUT_SEEDS = tuple(range(100_000, 100_008))  # never used for training (those seeds count up from 0)
TEST_SCENE_SEED = 200_001  # data/test-1.tif


def normalise_p90(image: np.ndarray) -> np.ndarray:
    """Per band and per scene, as inference does: ``clip(band, 0, p90) / p90`` in float64, cast to float32."""
    out = np.empty(image.shape, dtype=np.float32)
    for i, band in enumerate(image.astype(np.float64)):
        out[i] = normalise_values(band, float(np.percentile(band, PERCENTILE)))
    return out


def run_train_demo(args: argparse.Namespace) -> int:
    """Train, evaluate, and install ``demo.pt`` (old checkpoint format, fp16) and ``demo.json`` in ``out_dir``.

    Weights below the quality bar never replace the installed ones: they go to ``out_dir/rejected/`` and the
    exit status is 1.
    """
    out_dir = Path(args.out_dir) if getattr(args, "out_dir", None) else DEFAULT_CARD_PATH.parent
    minutes = getattr(args, "minutes", None)
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"--minutes must be positive, not {minutes}")
    budget = 60.0 * (minutes if minutes is not None else DEFAULT_MAX_MINUTES)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(TORCH_THREADS)
    started = time.monotonic()
    run = train(RECIPE, max_seconds=budget)
    train_seconds = time.monotonic() - started

    # Staged beside the target, so the final renames are atomic and a crash leaves the old files intact.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".train-demo-") as tmp:
        staging = Path(tmp)
        sha256 = save_checkpoint(run.net, staging / WEIGHTS_NAME, fp16=True)
        card = build_card(sha256, RECIPE, run, train_seconds, budget)
        _write_json(staging / CARD_NAME, card)
        quality = evaluate(build_model(load_card(staging / CARD_NAME)), HELDOUT_SEEDS)
        card["quality"] = quality
        _write_json(staging / CARD_NAME, card)
        passed = quality["heldout_iou"] >= QUALITY_BAR
        target = out_dir if passed else out_dir / "rejected"
        target.mkdir(exist_ok=True)
        (staging / WEIGHTS_NAME).replace(target / WEIGHTS_NAME)
        (staging / CARD_NAME).replace(target / CARD_NAME)
    print(
        f"{run.steps} steps in {train_seconds:.0f} s; held-out IoU {quality['heldout_iou']:.4f}, "
        f"pixel accuracy {quality['pixel_accuracy']:.4f}; wrote {target / WEIGHTS_NAME} and {target / CARD_NAME}"
    )
    if not passed:
        print(
            f"rasterfn train-demo: held-out IoU is below {QUALITY_BAR}; the installed weights were left as they were",
            file=sys.stderr,
        )
        return 1
    return 0


def train(recipe: Recipe, max_seconds: float = math.inf) -> TrainingRun:
    """Run the recipe.

    The learning rate follows training progress: steps done / ``recipe.steps``, or, once more than half of
    ``max_seconds`` is spent, the time left compressed into the rest of the schedule if that is further along.
    A run whose steps finish inside the budget never lets time count (so its weights do not depend on the
    machine's speed); on a busy machine the budget ends training, still with a fully decayed learning rate.
    """
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, not {max_seconds}")
    torch.manual_seed(recipe.torch_seed)
    rng = np.random.default_rng(recipe.sampler_seed)
    net = UNet(**DEFAULT_ARCHITECTURE)
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=recipe.learning_rate)
    captured: dict[str, torch.Tensor] = {}
    hook = net.conv_final.register_forward_hook(lambda _m, _i, out: captured.__setitem__("z", out))

    next_seed = recipe.first_scene_seed
    pool = []
    for _ in range(recipe.pool_size):
        pool.append(_training_scene(next_seed))
        next_seed += 1
    started = time.monotonic()
    step, progress, steps_timed = 0, 0.0, 0
    try:
        while progress < 1.0:
            for group in optimiser.param_groups:
                group["lr"] = recipe.learning_rate * _lr_factor(step, progress, recipe)
            step += 1
            if step % recipe.refresh_every == 0:
                pool[next_seed % recipe.pool_size] = _training_scene(next_seed)
                next_seed += 1
            x, y = _sample_batch(rng, pool, recipe.batch_size, recipe.crop_size)
            optimiser.zero_grad(set_to_none=True)
            net(torch.from_numpy(x))
            loss = canopy_loss(captured["z"], torch.from_numpy(y), recipe.logit_scale)
            loss.backward()
            optimiser.step()
            elapsed = time.monotonic() - started
            timed = _time_progress(elapsed, max_seconds)
            steps_timed += timed > step / recipe.steps
            progress = max(step / recipe.steps, timed)
            if step % 25 == 0 or progress >= 1.0:
                print(f"step {step}/{recipe.steps} loss {loss.item():.4f} {elapsed:.0f} s", flush=True)
    finally:
        hook.remove()
    if step < recipe.steps:
        print(f"the time budget of {max_seconds:.0f} s ended training after {step} steps", flush=True)
    net.eval()
    return TrainingRun(net=net, steps=step, steps_timed=steps_timed)


def canopy_loss(z: torch.Tensor, target: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """BCE plus soft Dice on ``sigmoid(k * (z - threshold))``, ``z`` being the pre-ReLU output.

    BCE calibrates every pixel; Dice weighs the (minority) canopy pixels as IoU does.
    """
    logits = logit_scale * (z - THRESHOLD)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + (1 - dice)


def evaluate(loaded: LoadedModel, seeds: Iterable[int]) -> dict[str, Any]:
    """IoU and pixel accuracy of the canopy mask on full held-out scenes, run through the product's inference."""
    seeds = tuple(seeds)
    inter = union = correct = total = 0
    per_scene = []
    with tempfile.TemporaryDirectory(prefix="rasterfn-eval-") as tmp:
        for seed in seeds:
            image, label = make_scene(seed)
            predicted = predict_scene(loaded, image, Path(tmp) / f"{seed}.tif")
            truth = label.astype(bool)
            i, u = int((predicted & truth).sum()), int((predicted | truth).sum())
            inter, union = inter + i, union + u
            correct += int((predicted == truth).sum())
            total += truth.size
            per_scene.append(round(i / u, 4) if u else 1.0)
    return {
        "heldout_iou": round(inter / union, 4) if union else 1.0,
        "heldout_iou_per_scene": per_scene,
        "heldout_seeds": list(seeds),
        "pixel_accuracy": round(correct / total, 4),
        "scene_size": int(image.shape[-1]),
    }


def predict_scene(loaded: LoadedModel, image: np.ndarray, tif_path: Path) -> np.ndarray:
    """The canopy mask the product gives for ``image``, via a GeoTIFF written to ``tif_path``."""
    write_scene_tif(tif_path, image)
    result = predict_file(loaded, tif_path, tif_path.with_suffix(".npy"))
    return np.load(result.out_path) > 0  # the mask is 0/1


def build_card(
    sha256: str, recipe: Recipe, run: TrainingRun, train_seconds: float, budget_seconds: float
) -> dict[str, Any]:
    return {
        "name": "rasterfn-demo-canopy",
        "version": "1.0.0",
        "description": "Tree-canopy mask from 10 Sentinel-2 bands; trained on synthetic scenes, for demos only.",
        "class_name": "tree canopy",  # the mask's class 1, as the STAC Item and the COG's legend name it
        "architecture": dict(DEFAULT_ARCHITECTURE),
        "bands": list(range(1, len(BANDS) + 1)),
        "band_names": list(BANDS),
        "normalisation": "p90",
        "threshold": THRESHOLD,
        "tile_size": 512,
        "tile_overlap": 64,
        "weights": {"file": WEIGHTS_NAME, "sha256": sha256, "format": "old-service checkpoint, fp16"},
        "training": {
            "command": "rasterfn train-demo",
            "generator": "model.training.synthetic.make_scene",
            "scene_seeds": [recipe.first_scene_seed, recipe.first_scene_seed + _scenes_used(recipe, run.steps)],
            "recipe": asdict(recipe),
            "steps_done": run.steps,
            # 0: the schedule was the recipe's alone, so a rerun reproduces these weights
            "steps_scheduled_by_time": run.steps_timed,
            "loss": "BCE + soft Dice on sigmoid(k * (z - 0.5)), z = pre-ReLU output of conv_final",
            "optimizer": "Adam, linear warm-up then cosine decay over progress (steps; time only past half the budget)",
            "time_budget_seconds": budget_seconds,
            "augmentation": "random crops, flips and 90-degree rotations",
            "wall_seconds": round(train_seconds, 1),
            "torch_threads": TORCH_THREADS,
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "python_version": platform.python_version(),
        },
    }


def _scenes_used(recipe: Recipe, steps_done: int) -> int:
    return recipe.pool_size + steps_done // recipe.refresh_every


def _time_progress(elapsed: float, budget: float) -> float:
    """0 until half the budget is spent, then up to 1 at the budget (see :func:`train`).

    A run at steady speed that finishes its steps within the budget stays at or below its step progress,
    so time never decides its schedule.
    """
    return 2 * elapsed / budget - 1


def _lr_factor(step: int, progress: float, recipe: Recipe) -> float:
    """Linear warm-up over the first steps, then cosine decay to ``final_lr_fraction`` as progress reaches 1."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.final_lr_fraction + (1 - recipe.final_lr_fraction) * cosine


def _training_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    image, label = make_scene(seed)
    return normalise_p90(image), label


def _sample_batch(
    rng: np.random.Generator, pool: list[tuple[np.ndarray, np.ndarray]], batch: int, crop: int
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for _ in range(batch):
        image, label = pool[int(rng.integers(len(pool)))]
        r, c = (int(v) for v in rng.integers(0, image.shape[-1] - crop + 1, size=2))
        x, y = image[:, r : r + crop, c : c + crop], label[None, r : r + crop, c : c + crop]
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        xs.append(x)
        ys.append(y)
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a card."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
