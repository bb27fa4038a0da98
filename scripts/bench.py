"""``make bench``: speed and memory of ``predict_file``, measured side by side with its baselines in one run.

Prints, each beside its target:

1. the old service's procedure (whole image, float64 normalise, autograd ON, contiguous fp32) vs
   ``predict_file`` on the same 512 x 512 file;
2. tiles/s and GFLOP/s (24.8 GFLOP per 512 x 512 tile) end to end on a 4096 x 4096 raster vs a bare
   ``channels_last`` + ``inference_mode`` forward of the same tiles;
3. peak RSS of a child process predicting an 8192 x 8192 x 10 uint16 raster;
4. bf16 vs fp32: speed-up and mask agreement;
5. the engines side by side (torch, OpenVINO fp32 / bf16 / int8): per 512 x 512 tile on the large raster vs the
   old procedure, mask agreement with the old procedure on held-out synthetic scenes, cold start (process start
   to first tile) per engine, and the torch-free runtime's install size (.venv-runtime + the exported model);
6. end to end on the default engine, stage by stage, against the engine called directly and the old procedure
   (``scripts/bench_e2e.py``; ``--e2e`` runs it alone), peak RSS and temp disk on 8192 x 8192, cold start.

"Per 512 x 512 tile" is per 512 x 512 pixels of the scene: the tiles run are larger where the grid is fitted.

Rasters are generated once into ``.bench/`` (gitignored) by mirroring data/test-1.tif. Uses the demo model
when model/weights/demo.json exists, else a seeded random U-Net of the same architecture (same FLOPs).
``--quick`` uses 2048 x 2048 for (2) and 4096 x 4096 for (3).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import rasterio
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_e2e import end_to_end  # noqa: E402  (scripts/, beside this file)

from model.card import DEFAULT_CARD_PATH, load_card  # noqa: E402
from model.cpus import available_cpus  # noqa: E402
from model.network.checkpoint import build_model, save_checkpoint  # noqa: E402
from model.network.unet import UNet  # noqa: E402
from model.predictor.predict import PredictOptions, predict_file  # noqa: E402
from model.predictor.tiling import pad_tile, plan_tiles  # noqa: E402

CACHE = ROOT / ".bench"
SCENE = ROOT / "data" / "test-1.tif"
GFLOP_PER_TILE = 24.8
TARGETS = {
    "old": 2.0,  # predict_file >= 2x the old procedure per 512 x 512 tile, fp32
    "e2e": 0.8,  # end to end >= 0.8x the bare forward on 4096 x 4096
    "bf16": 5.0,  # bf16 >= 5x the old procedure ...
    "bf16_agree": 0.995,  # ... with >= 99.5% mask agreement with fp32
    # issue 10: the serving engine per tile vs the old procedure, and its agreement with the old mask
    "openvino fp32": (2.2, 0.9999),
    "openvino int8": (3.5, 0.995),
    "cold": 3.0,  # cold start >= 3x faster than torch's
    "runtime_mb": 450,
}
ENGINE_RUNS = [("torch", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
HELDOUT_SEEDS = range(100_000, 100_004)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller rasters (about 3 minutes on 2 cores)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--engines", action="store_true", help="only [1] and [5]: the engines side by side")
    parser.add_argument("--e2e", action="store_true", help="only [6]: end to end on the default engine, by stage")
    args = parser.parse_args()

    CACHE.mkdir(exist_ok=True)
    torch.set_num_threads(available_cpus())
    card_path = bench_card()
    model = build_model(load_card(card_path))
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"model: {model.card.name} ({card_path.name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {capability}")  # fmt: skip
    print(f"CPU flags: {' '.join(cpu_flags()) or 'none of avx2/avx512*/amx'}")

    old_net = copy.deepcopy(model.net).requires_grad_(True)  # as the old service loaded it: autograd on
    if args.e2e:
        return end_to_end(bench_context(model, card_path, old_net), args.quick)

    # 1. old procedure vs predict_file on the same 512 x 512 file, interleaved so drift hits both alike.
    old_s, new_s = [], []
    old_procedure(SCENE, old_net, model.card, CACHE / "old.npy")  # warm-up: first-call allocations, caches
    predict_file(model, SCENE, CACHE / "new.npy")
    for _ in range(args.repeats):
        old_s.append(timed(lambda: old_procedure(SCENE, old_net, model.card, CACHE / "old.npy")))
        new_s.append(timed(lambda: predict_file(model, SCENE, CACHE / "new.npy")))
    same = np.array_equal(np.load(CACHE / "old.npy"), np.load(CACHE / "new.npy"))
    t_old, t_new = statistics.median(old_s), statistics.median(new_s)
    print(f"\n[1] 512 x 512 file, fp32 (median of {args.repeats})")
    row("old procedure (autograd, float64 norm)", f"{t_old:.3f} s")
    row("predict_file", f"{t_new:.3f} s   identical output: {same}")
    row("speed-up (target >= 2.0x)", ratio(t_old / t_new, TARGETS["old"]))

    # 2. throughput on a large raster vs the bare forward of the same tiles.
    size = 2048 if args.quick else 4096
    big = make_big(size)
    if args.engines:
        return engines_side_by_side(model, card_path, big, old_net)
    result = predict_file(model, big, CACHE / "big.npy")
    e2e_tps = size * size / 512**2 / result.seconds  # 512 x 512 of the scene per second
    bare_tps = bare_forward_tiles_per_s(model, big, limit=12 if args.quick else 24)
    old_tps = 1 / t_old
    print(
        f"\n[2] {size} x {size} x 10 uint16, {result.tiles} tiles (fitted grid), torch fp32, per 512 x 512 of the scene"
    )
    row("predict_file end to end", f"{e2e_tps:.3f} tiles/s = {e2e_tps * GFLOP_PER_TILE:.1f} GFLOP/s "
        f"({result.seconds:.1f} s)")  # fmt: skip
    row("bare channels_last forward", f"{bare_tps:.3f} tiles/s = {bare_tps * GFLOP_PER_TILE:.1f} GFLOP/s")
    row("end to end / bare (target >= 0.8x)", ratio(e2e_tps / bare_tps, TARGETS["e2e"]))
    row("per tile vs old procedure (target >= 2.0x)", ratio(e2e_tps / old_tps, TARGETS["old"]))

    # 3. peak RSS: on the default engine, in [6].

    # 4. bf16.
    bf16_s = [timed(lambda: predict_file(model, SCENE, CACHE / "bf16.npy", PredictOptions(precision="bf16")))]
    agree = float((np.load(CACHE / "bf16.npy") == np.load(CACHE / "new.npy")).mean())
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    forced = forced_bf16_forward(model)
    print("\n[4] bf16 (PRECISION=bf16) on the 512 x 512 file")
    row("native bf16 on this CPU", f"{native} (without it predict_file logs once and runs fp32)")
    row("bf16 speed-up vs predict_file fp32", f"{t_new / bf16_s[0]:.2f}x" + ("" if native else " (ran fp32)"))
    row("bf16 vs old procedure (target >= 5.0x)", ratio(t_old / bf16_s[0], TARGETS["bf16"]))
    row("bf16 mask agreement (target >= 99.5%)", f"{agree:.4%}   " + verdict(agree >= 0.995, ">= 99.5%"))
    row("forced bf16 autocast forward, one tile", f"{forced[0]:.3f} s vs fp32 {forced[1]:.3f} s")

    # 5. the engines side by side.
    engines_side_by_side(model, card_path, big, old_net)

    # 6. end to end on the default engine, by stage.
    end_to_end(bench_context(model, card_path, old_net), args.quick)


def bench_context(model, card_path: Path, old_net) -> SimpleNamespace:
    """What section [6] (scripts/bench_e2e.py) needs of this script."""
    return SimpleNamespace(
        cache=CACHE,
        root=ROOT,
        card_path=card_path,
        torch_model=model,
        make_big=make_big,
        timed=timed,
        old=lambda: old_procedure(SCENE, old_net, model.card, CACHE / "old.npy"),
        row=row,
        verdict=verdict,
    )


# -- 5. engines ----------------------------------------------------------------------------------------------


def engines_side_by_side(model, card_path: Path, big: Path, old_net) -> None:
    from model.network.engines.loading import load_inference_model
    from model.training.synthetic import make_scene, write_scene_tif

    scenes = []
    for seed in HELDOUT_SEEDS:
        path = CACHE / f"heldout-{seed}.tif"
        if not path.exists():
            write_scene_tif(path, make_scene(seed)[0])
        old_procedure(path, old_net, model.card, CACHE / f"heldout-{seed}.old.npy")
        scenes.append(path)
    print(f"\n[5] engines: per {model.card.tile_size} x {model.card.tile_size} tile on {big.name} vs the old "
          f"procedure (timed around each); mask agreement with it on {len(scenes)} held-out scenes")  # fmt: skip
    cold = {}
    for engine, precision in ENGINE_RUNS:
        loaded = load_inference_model(card_path, engine=engine, precision=precision)
        options = PredictOptions(precision=precision)
        loaded.warm_up(options)
        # The old procedure timed right before and after each engine: a shared machine's load drifts.
        before = timed(lambda: old_procedure(SCENE, old_net, model.card, CACHE / "old.npy"))
        result = predict_file(loaded, big, CACHE / "engine.npy", options)
        t_old = (before + timed(lambda: old_procedure(SCENE, old_net, model.card, CACHE / "old.npy"))) / 2
        per_tile = result.seconds / (result.shape[0] * result.shape[1] / 512**2)  # per 512 x 512 of the scene
        same = total = 0
        for path in scenes:
            predict_file(loaded, path, CACHE / "engine.npy", options)
            expected = np.load(path.with_suffix(".old.npy"))
            same += int((np.load(CACHE / "engine.npy") == expected).sum())
            total += expected.size
        agreement, speed = same / total, t_old / per_tile
        target = TARGETS.get(f"{engine} {precision}")
        verdict_text = (
            verdict(speed >= target[0] and agreement >= target[1], f">= {target[0]}x, >= {target[1]:.2%}")
            if target
            else ""
        )
        row(f"{engine} {precision}", f"{per_tile * 1000:6.0f} ms/tile (old {t_old * 1000:.0f} ms)  {speed:5.2f}x  "
            f"agreement {agreement:.4%}  "
            + verdict_text)  # fmt: skip
        if precision == "fp32":
            cold[engine] = cold_start(card_path, engine)
    row("cold start, torch (process start -> first tile)", f"{cold['torch']:.2f} s")
    speed_up = ratio(cold["torch"] / cold["openvino"], TARGETS["cold"])
    row("cold start, openvino", f"{cold['openvino']:.2f} s   faster than torch: {speed_up}")
    size = runtime_size_mb(card_path)
    if size is None:
        row("runtime install size", "run `make runtime-venv` first")
    else:
        row("runtime venv (no torch) + exported model", f"{size:.0f} MB   "
            + verdict(size <= TARGETS["runtime_mb"], f"<= {TARGETS['runtime_mb']} MB"))  # fmt: skip


COLD_START = """
import sys, time
import numpy as np
from model.network.engines.loading import load_inference_model
from model.options import PredictOptions
model = load_inference_model(sys.argv[1], engine=sys.argv[2])
card = model.card
model.tile_engine(PredictOptions(), one_tile=False)([np.zeros((len(card.bands), 512, 512), np.float32)])
"""


def cold_start(card_path: Path, engine: str, repeats: int = 3) -> float:
    """Median seconds from starting a fresh Python to the first 512 x 512 tile's scores (imports, load, compile)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", COLD_START, str(card_path), engine], check=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def runtime_size_mb(card_path: Path) -> float | None:
    """.venv-runtime (installed the Dockerfile's way, no torch) less what the Dockerfile strips (test suites, pip,
    OpenVINO's GPU/NPU plugins and non-IR frontends), plus the card's checkpoint and graphs, in MB."""
    venv = ROOT / ".venv-runtime"
    if not venv.is_dir():
        return None
    files = [p for p in venv.rglob("*") if p.is_file() and not p.is_symlink() and not _stripped(p)]
    files += [p for p in card_path.parent.iterdir() if p.suffix in (".pt", ".xml", ".bin", ".json")]
    return sum(p.stat().st_size for p in files) / 1e6


def _stripped(path: Path) -> bool:
    name = path.name
    if "tests" in path.parts or any(part == "pip" or part.startswith("pip-") for part in path.parts):
        return True
    if "_plugin.so" in name and ("intel_gpu" in name or "intel_npu" in name):
        return True
    return name.startswith("libopenvino_") and "_frontend.so" in name and "_ir_frontend" not in name


def cpu_flags() -> list[str]:
    """The CPU's vector/matrix flags every figure depends on (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx")))


# -- the old service's procedure -----------------------------------------------------------------------------


def old_procedure(path: Path, net: torch.nn.Module, card, out: Path) -> None:
    """The Flask service's steps: read all, float64 normalise per band, fp32 forward with autograd, save."""
    with rasterio.open(path) as src:
        image = src.read(list(card.bands)).astype(np.float64)
    for i, band in enumerate(image):
        p90 = np.percentile(band, 90)
        image[i] = np.clip(band, 0, p90) / p90 if p90 > 0 else 0
    x = torch.from_numpy(image.astype(np.float32)[None]).contiguous()
    y = net(x)
    np.save(out, (y[0, 0] > card.threshold).float().detach().numpy())


# -- measurements --------------------------------------------------------------------------------------------


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare_forward_tiles_per_s(model, raster: Path, limit: int) -> float:
    """The network alone on the raster's first ``limit`` tiles (already normalised, channels_last)."""
    card = model.card
    with rasterio.open(raster) as src:
        plan = plan_tiles(src.height, src.width, card.tile_size, card.tile_overlap, card.size_multiple)
        tiles = []
        for rspan in plan.rows:
            for cspan in plan.cols:
                if len(tiles) < limit:
                    window = ((rspan.start, rspan.stop), (cspan.start, cspan.stop))
                    data = src.read(list(card.bands), window=window).astype(np.float32) / 10_000
                    tiles.append(torch.from_numpy(pad_tile(data, rspan.padded, cspan.padded)[None]))
    net = copy.deepcopy(model.net).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(tiles[0].contiguous(memory_format=torch.channels_last))  # warm-up
        start = time.perf_counter()
        for tile in tiles:
            net(tile.contiguous(memory_format=torch.channels_last))
        return len(tiles) / (time.perf_counter() - start)


def forced_bf16_forward(model) -> tuple[float, float]:
    """One 512 x 512 tile with bf16 autocast forced on (whatever the CPU), vs fp32: why bf16 is gated."""
    net = copy.deepcopy(model.net).to(memory_format=torch.channels_last)
    x = torch.rand(1, len(model.card.bands), 512, 512).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x)
        fp32 = timed(lambda: net(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x)
            bf16 = timed(lambda: net(x))
    return bf16, fp32


# -- inputs --------------------------------------------------------------------------------------------------


def bench_card() -> Path:
    """The demo card, or a seeded random U-Net of the default architecture saved into .bench/."""
    if DEFAULT_CARD_PATH.exists():
        return DEFAULT_CARD_PATH
    path = CACHE / "random.json"
    if not path.exists():
        torch.manual_seed(0)
        digest = save_checkpoint(UNet().eval(), CACHE / "random.pt", fp16=False)
        path.write_text(json.dumps({"name": "random-unet", "weights": {"file": "random.pt", "sha256": digest}}))
    return path


def make_big(size: int) -> Path:
    """A size x size x 10 uint16 GeoTIFF mirroring data/test-1.tif, written strip by strip (cached)."""
    path = CACHE / f"mirror-{size}.tif"
    if path.exists():
        return path
    with rasterio.open(SCENE) as src:
        scene, profile = src.read(), src.profile
    row_of_scenes = np.concatenate([scene if i % 2 == 0 else scene[:, :, ::-1] for i in range(size // 512)], 2)
    profile.update(width=size, height=size, tiled=True, blockxsize=512, blockysize=512, compress="zstd",
                   predictor=2, interleave="pixel", BIGTIFF="IF_SAFER")  # fmt: skip
    tmp = path.with_suffix(".tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i in range(size // 512):
            strip = row_of_scenes if i % 2 == 0 else row_of_scenes[:, ::-1, :]
            dst.write(np.ascontiguousarray(strip), window=((i * 512, (i + 1) * 512), (0, size)))
    tmp.rename(path)
    return path


# -- printing ------------------------------------------------------------------------------------------------


def row(label: str, value: str) -> None:
    print(f"  {label:<44} {value}")


def ratio(value: float, target: float) -> str:
    return f"{value:.2f}x   " + verdict(value >= target, f">= {target}x")


def verdict(ok: bool, target: str) -> str:
    return f"[{'met' if ok else 'NOT met'}: target {target}]"


if __name__ == "__main__":
    main()
