"""``rasterfn export``: a card + checkpoint -> the serving engine's graphs, verified against torch, in the card.

1. The checkpoint is loaded as for torch inference (sha256 checked) and converted to an OpenVINO IR graph with
   dynamic batch and tile size (``<card>.fp32.xml/.bin``). Weights that fp16 holds exactly (the demo's, stored
   as fp16) are saved as fp16, half the file and the same numbers; others stay fp32.
2. An int8 graph (``<card>.int8.xml/.bin``): NNCF's post-training static quantisation, per-channel weights,
   calibrated on tiles of the card's calibration rasters (``calibration.rasters``, paths relative to the card,
   or ``calibration.synthetic_seeds: [first, stop)`` for generated scenes) or of every GeoTIFF in
   ``--calibrate DIR``, normalised exactly as inference does.
3. Each graph, read back from its files as serving reads it, is compared with torch's fp32 forward (the old
   procedure's arithmetic) on held-out synthetic scenes (the card's ``quality.heldout_seeds``, else
   :data:`DEFAULT_HELDOUT_SEEDS`): fp32 must keep the max abs score difference <= 1e-4 and >= 99.99% of the
   mask; int8 >= 99.5% of the mask. On a CPU with native bf16 the fp32 graph is also measured at bf16
   arithmetic (``agreement_by_precision.bf16``: no bar here; ``PRECISION=auto`` picks bf16 only where it
   holds >= 99.99% on every scene, see :mod:`model.network.engines.precision`). ``--verify-precision bf16``
   measures and records that for graphs already exported, changing no file but the card.
4. Only then are the files moved into place and the card's ``serving`` section written (files, sha256, the
   measured agreement, the calibration used, the versions). A graph that misses its bar is an
   :class:`ExportError` and nothing is changed.

Needs torch and nncf (the ``[export]`` extra) and the scene generator: a build-time tool beside training, run
from a checkout or the image's exporter stage (which runs it from the source tree), never at serving time.

Example:
    >>> export_card(DEFAULT_CARD_PATH)                                          # doctest: +SKIP
    ExportReport(card=..., graphs={'fp32': {...}, 'int8': {...}})
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from rasterio.windows import Window

from model.card import ModelCard, load_card
from model.errors import ConfigError
from model.io.raster import open_raster, read_header, read_window
from model.network.checkpoint import LoadedModel, build_model
from model.network.digests import sha256_file
from model.network.engines.artefacts import SERVING_KEY, graph_for, local_paths, verify_files
from model.network.engines.openvino_engine import ENGINE, INFERENCE_PRECISION, PERFORMANCE_HINT, core, cpu_has_bf16
from model.predictor.predict import PERCENTILE, compute_percentiles, make_normaliser, normalise_values
from model.predictor.tiling import pad_tile

DEFAULT_HELDOUT_SEEDS = tuple(range(100_000, 100_008))
MAX_CALIBRATION_TILES = 32
CALIBRATION_SUFFIXES = (".tif", ".tiff")
BARS = {
    "fp32": {"max_abs_score_diff": 1e-4, "mask_agreement": 0.9999},
    "int8": {"mask_agreement": 0.995},
}


class ExportError(ConfigError):
    """An exported graph does not agree with torch closely enough; nothing was written."""


@dataclass(frozen=True)
class ExportReport:
    card: Path
    graphs: dict[str, dict[str, Any]]  # name -> the card's entry for it (files, agreement)


def export_card(card_path: str | Path, out_dir: str | Path | None = None, calibrate: str | Path | None = None):
    """Export, verify and record; see the module docstring. ``out_dir``: write a copy of card + checkpoint there."""
    loaded = build_model(load_card(card_path))
    card = _card_in(loaded.card, Path(out_dir)) if out_dir is not None else loaded.card
    tiles = calibration_tiles(card, Path(calibrate) if calibrate else None)
    fp32 = to_openvino(loaded)
    import nncf  # only here: slow to import, and only exporting needs it

    int8 = nncf.quantize(fp32, nncf.Dataset([t[None] for t in tiles]), subset_size=len(tiles))
    scenes = heldout_scenes(card)
    stem = card.path.stem
    entries: dict[str, dict[str, Any]] = {}
    # Written and verified in a scratch folder beside the card, then moved: a failed export changes nothing.
    scratch = Path(tempfile.mkdtemp(prefix=f".export-{stem}-", dir=card.path.parent))
    try:
        for name, graph in (("fp32", fp32), ("int8", int8)):
            paths = {role: scratch / f"{stem}.{name}.{role}" for role in ("xml", "bin")}
            ov.save_model(graph, str(paths["xml"]), compress_to_fp16=name == "fp32" and _fp16_exact(loaded))
            agreement = verify_graph(loaded, paths, scenes, name)
            _check_bars(name, agreement, card)
            files = {role: {"file": path.name, "sha256": sha256_file(path)} for role, path in paths.items()}
            entries[name] = {"files": files, "agreement": agreement}
            if name == "fp32" and cpu_has_bf16():
                entries[name]["agreement_by_precision"] = {"bf16": verify_graph(loaded, paths, scenes, "bf16")}
        for path in scratch.iterdir():
            os.replace(path, card.path.parent / path.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    entries["int8"]["calibration"] = {"source": _calibration_source(card, calibrate), "tiles": len(tiles)}
    _write_serving(card, entries, [seed for seed, _ in scenes])
    return ExportReport(card.path, entries)


# -- conversion ----------------------------------------------------------------------------------------------


def to_openvino(loaded: LoadedModel) -> ov.Model:
    """The U-Net as an OpenVINO graph taking (any batch, bands, any height, any width) float32."""
    card = loaded.card
    bands = len(card.bands)
    example = torch.zeros(1, bands, card.tile_size, card.tile_size)
    with torch.no_grad():
        return ov.convert_model(loaded.net, example_input=example, input=[ov.PartialShape([-1, bands, -1, -1])])


def _fp16_exact(loaded: LoadedModel) -> bool:
    return all(torch.equal(t.half().float(), t) for t in loaded.net.state_dict().values() if t.is_floating_point())


# -- calibration and held-out data ---------------------------------------------------------------------------


def calibration_tiles(card: ModelCard, calibrate: Path | None) -> list[np.ndarray]:
    """Normalised (bands, tile, tile) float32 tiles to calibrate int8 on, at most :data:`MAX_CALIBRATION_TILES`."""
    if calibrate is not None:
        if not calibrate.is_dir():
            raise ConfigError(f"--calibrate {calibrate} is not a directory")
        rasters = sorted(p for p in calibrate.iterdir() if p.suffix.lower() in CALIBRATION_SUFFIXES)
        tiles = [t for path in rasters for t in _raster_tiles(card, path)][:MAX_CALIBRATION_TILES]
    else:
        section = card.extra.get("calibration") or {}
        if "rasters" in section:
            tiles = [t for f in section["rasters"] for t in _raster_tiles(card, card.path.parent / f)]
        elif "synthetic_seeds" in section:
            first, stop = section["synthetic_seeds"]
            tiles = [_scene_input(card, seed) for seed in range(first, stop)]
        else:
            raise ConfigError(
                f"model card {card.path} names no calibration data ('calibration': {{'rasters': [...]}} or "
                "{'synthetic_seeds': [first, stop]}): give --calibrate DIR"
            )
        tiles = tiles[:MAX_CALIBRATION_TILES]
    if not tiles:
        raise ConfigError("no calibration tiles: the calibration rasters are missing or empty")
    return tiles


def _raster_tiles(card: ModelCard, path: Path) -> Iterator[np.ndarray]:
    """A raster's tiles on a non-overlapping grid, normalised with the whole raster's p90 as inference does."""
    size = card.tile_size
    with open_raster(path) as ds:
        header = read_header(ds, path)
        p90s = compute_percentiles(ds, header, card.bands, PERCENTILE)
        normalise = make_normaliser(np.dtype(header.dtypes[card.bands[0] - 1]), p90s)
        for top in range(0, header.height, size):
            for left in range(0, header.width, size):
                window = Window(left, top, min(size, header.width - left), min(size, header.height - top))
                data, valid = read_window(ds, card.bands, window, header.all_valid)
                tile = normalise(data)
                if valid is not None:
                    tile[:, ~valid] = 0
                yield pad_tile(tile, size, size)


def heldout_scenes(card: ModelCard) -> list[tuple[int, np.ndarray]]:
    seeds = card.extra.get("quality", {}).get("heldout_seeds") or DEFAULT_HELDOUT_SEEDS
    return [(int(seed), _scene_input(card, int(seed))) for seed in seeds]


def _scene_input(card: ModelCard, seed: int) -> np.ndarray:
    """A synthetic scene of the card's tile size, normalised per band like the old service (p90, float64)."""
    from model.training.synthetic import make_scene

    image, _ = make_scene(seed, card.tile_size)
    image = image[np.arange(len(card.bands)) % image.shape[0]].astype(np.float64)  # cards of other band counts
    return np.stack([normalise_values(band, float(np.percentile(band, PERCENTILE))) for band in image])


# -- verification --------------------------------------------------------------------------------------------


def verify_graph(loaded: LoadedModel, paths: dict[str, Path], scenes, name: str) -> dict[str, Any]:
    """Agreement of the graph in ``paths`` with torch's fp32 contiguous forward over ``scenes``."""
    config = {"PERFORMANCE_HINT": PERFORMANCE_HINT, "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[name]}
    compiled = core().compile_model(core().read_model(str(paths["xml"]), str(paths["bin"])), "CPU", config)
    threshold = loaded.card.threshold
    agreements, max_diff = [], 0.0
    for _, x in scenes:
        with torch.no_grad():
            reference = loaded.net(torch.from_numpy(x[None]))[0, 0].numpy()
        scores = compiled([x[None]])[0][0, 0]
        max_diff = max(max_diff, float(np.abs(scores - reference).max()))
        agreements.append(float(((scores > threshold) == (reference > threshold)).mean()))
    return {
        "mask_agreement": round(float(np.mean(agreements)), 6),
        "min_scene_mask_agreement": round(min(agreements), 6),
        "max_abs_score_diff": float(f"{max_diff:.3g}"),
        "scenes": len(scenes),
    }


def _check_bars(name: str, agreement: dict[str, Any], card: ModelCard) -> None:
    bars = BARS[name]
    misses = []
    if agreement["mask_agreement"] < bars["mask_agreement"]:
        misses.append(f"mask agreement {agreement['mask_agreement']:.4%} < {bars['mask_agreement']:.2%}")
    if "max_abs_score_diff" in bars and agreement["max_abs_score_diff"] > bars["max_abs_score_diff"]:
        misses.append(f"max abs score diff {agreement['max_abs_score_diff']:.3g} > {bars['max_abs_score_diff']}")
    if misses:
        raise ExportError(f"the {name} graph of {card.path.name} disagrees with torch: " + "; ".join(misses))


def verify_precision(card_path: str | Path, precision: str) -> dict[str, Any]:
    """Measure the card's exported graph at ``precision`` (bf16: the fp32 graph) and record it in the card."""
    if precision != "bf16":
        raise ConfigError(f"--verify-precision measures bf16 (the fp32 graph at bf16), not {precision!r}")
    if not cpu_has_bf16():
        raise ConfigError("this CPU has no native bf16: the measurement would be of fp32 arithmetic")
    loaded = build_model(load_card(card_path))
    card = loaded.card
    graph = graph_for(card, precision)
    if graph is None:
        raise ConfigError(f"model card {card.path} has no exported graph for {precision}: run `rasterfn export`")
    paths = verify_files(card, graph, local_paths(card, graph))
    agreement = verify_graph(loaded, paths, heldout_scenes(card), precision)
    raw = json.loads(card.path.read_text())
    raw[SERVING_KEY]["graphs"][graph.name].setdefault("agreement_by_precision", {})[precision] = agreement
    _write_card(card.path, raw)
    return agreement


# -- the card ------------------------------------------------------------------------------------------------


def _card_in(card: ModelCard, out_dir: Path) -> ModelCard:
    """A copy of the card and its checkpoint in ``out_dir``: the exported card stays self-contained."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / card.path.name
    if target.resolve() != card.path:
        shutil.copyfile(card.path, target)
        shutil.copyfile(card.weights_path, out_dir / card.weights_file)
    return load_card(target)


def _calibration_source(card: ModelCard, calibrate: str | Path | None) -> str:
    if calibrate is not None:
        return f"--calibrate {Path(calibrate).name}"
    section = card.extra.get("calibration", {})
    if "synthetic_seeds" in section:
        first, stop = section["synthetic_seeds"]
        return f"synthetic scenes, seeds [{first}, {stop})"
    return "card calibration.rasters"


def _write_serving(card: ModelCard, entries: dict[str, dict[str, Any]], seeds: Sequence[int]) -> None:
    raw = json.loads(card.path.read_text())
    raw[SERVING_KEY] = {
        "engine": ENGINE,
        "graphs": entries,
        "verification": {
            "reference": "torch fp32 forward, contiguous (the old procedure's arithmetic)",
            "heldout_seeds": list(seeds),
            "scene_size": card.tile_size,
            "bars": BARS,
        },
        "exported_with": {pkg: version(pkg) for pkg in ("openvino", "nncf", "torch")},
    }
    _write_card(card.path, raw)


def _write_card(path: Path, raw: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    os.replace(tmp, path)


def run_export(args: argparse.Namespace) -> int:
    """``rasterfn export``: export, then print each graph's files and its measured agreement with torch."""
    from model.card import DEFAULT_CARD_PATH

    if getattr(args, "verify_precision", None):
        agreement = verify_precision(args.model or DEFAULT_CARD_PATH, args.verify_precision)
        print(
            f"{args.verify_precision}: mask agreement with torch {agreement['mask_agreement']:.4%} (worst scene "
            f"{agreement['min_scene_mask_agreement']:.4%}) over {agreement['scenes']} held-out scenes; card updated"
        )
        return 0
    report = export_card(args.model or DEFAULT_CARD_PATH, out_dir=args.out_dir, calibrate=args.calibrate)
    for name, entry in report.graphs.items():
        files = ", ".join(f["file"] for f in entry["files"].values())
        agreement = entry["agreement"]
        print(
            f"{name}: {files}  mask agreement with torch {agreement['mask_agreement']:.4%} "
            f"(worst scene {agreement['min_scene_mask_agreement']:.4%}), max abs score diff "
            f"{agreement['max_abs_score_diff']:.3g} over {agreement['scenes']} held-out scenes"
        )
    print(f"card updated: {report.card}")
    return 0
