"""``make bench`` section [6]: a scene end to end on the default engine, stage by stage, beside its baselines.

What is timed, and against what (all in one process, one run, the model loaded and warmed first, so start-up
is subtracted; ratios only mean something within one run):

- the old procedure (the Flask service's: float64 normalise, autograd on, contiguous fp32 torch) on the
  512 x 512 test file, timed right before and after each end-to-end run (a shared machine drifts);
- ``predict_file`` on a 4096 x 4096 x 10 uint16 DEFLATE scene (``--quick``: 2048), per precision, with each
  stage's seconds (header, statistics pass: decode, histograms, keeping the decoded copy; pass 2: reading the
  copy or decoding, normalising, the engine, assembling the seams, thresholding and writing), by default (the
  decoded copy in the process' arena, warmed by the runs before) and with each choice the predictor makes forced
  the other way (the arena's pages given back first, as in a process' first scene; pass 1 counting inline; no
  copy; a copy on disk; read-ahead);
- the engine called directly on a tile of each shape the run uses (median of 3), times the tiles run,
  right before and after the run and averaged, like the old procedure (median of 3 each side): efficiency is
  that over the end-to-end seconds;
- today's procedure before this work (the card's 512 grid, decoding twice) on the same scene, fp32;
- mask agreement with the old procedure (one pass over the whole scene, no tiling) on held-out synthetic
  scenes of 2048 x 2048, and of the fitted grid with the card's grid (the seams);
- peak RSS (VmHWM) of a child predicting 4096 x 4096 (its copy in memory) and 8192 x 8192 (``--quick``: 2048 and
  4096) on the default engine, and the temp disk a copy forced into TMPDIR took and gave back; cold start
  (process start to first tile) of the default engine and of torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import numpy as np
import rasterio
import torch
from rasterio.shutil import copy as copy_raster

import model.predictor.predict as predict_module
from model.cpus import available_cpus
from model.io.npy_writer import NpyWriter
from model.io.raster import open_raster, read_header
from model.network.engines.loading import load_inference_model
from model.predictor.decoded import ARENA, DecodedInMemory, DecodedRaster
from model.predictor.predict import READ_AHEAD_MIN_CPUS, PredictOptions, TilePass, predict_file

TARGETS = {"efficiency": 0.9, "fp32": 2.5, "auto": 4.5, "agreement": 0.9999, "rss_gb": 1.2, "cold": 3.0}
STAGES = (
    "header",
    "decode 1",
    "histograms",
    "keep copy",
    "decode 2",
    "read copy",
    "normalise",
    "engine",
    "assembly",
    "write",
)
HELDOUT_SEEDS = (100_000, 100_001)
HELDOUT_SIZE = 2048


class StageClock:
    """Seconds per stage of ``predict_file``, by wrapping the predictor's steps (the bench's, not the service's)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.tile_shapes: dict[tuple[int, int], int] = defaultdict(int)
        self.runner = None

    def timed(self, stage: str, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        return wrapper

    @contextlib.contextmanager
    def patched(self):
        patches = {
            (predict_module, "read_window"): self.timed("decode", predict_module.read_window),
            (predict_module, "_tile_input"): self.timed("normalise", predict_module._tile_input),
            (predict_module, "_accumulate"): self.timed("assembly", predict_module._accumulate),
            (predict_module, "open_checked"): self._header(predict_module.open_checked),
            (predict_module, "compute_percentiles"): self.timed("pass 1", predict_module.compute_percentiles),
            (predict_module, "to_output"): self.timed("write", predict_module.to_output),
            (DecodedRaster, "write"): self.timed("keep copy", DecodedRaster.write),
            (DecodedRaster, "read_window"): self.timed("read copy", DecodedRaster.read_window),
            (DecodedInMemory, "write"): self.timed("keep copy", DecodedInMemory.write),
            (DecodedInMemory, "read_window"): self.timed("read copy", DecodedInMemory.read_window),
            (NpyWriter, "write_rows"): self.timed("write", NpyWriter.write_rows),
            (TilePass, "prepare"): classmethod(self._prepare(TilePass.prepare.__func__)),
        }
        saved = {key: key[0].__dict__[key[1]] for key in patches}
        try:
            for (owner, name), value in patches.items():
                setattr(owner, name, value)
            yield self
        finally:
            for (owner, name), value in saved.items():
                setattr(owner, name, value)

    def _header(self, open_checked):
        clock = self

        @contextlib.contextmanager
        def timed_open(*args, **kwargs):
            start = time.perf_counter()
            with open_checked(*args, **kwargs) as opened:
                clock.seconds["header"] += time.perf_counter() - start
                yield opened

        return timed_open

    def _prepare(self, prepare):
        clock = self

        def timed_prepare(cls, *args, **kwargs):
            run = prepare(cls, *args, **kwargs)
            inner = run.runner
            clock.runner = inner

            class Timed:
                batch_size = inner.batch_size

                def __call__(self, tiles):
                    for tile in tiles:
                        clock.tile_shapes[tile.shape[-2:]] += 1
                    return clock.timed("engine", inner)(tiles)

            return dataclasses.replace(run, runner=Timed())

        return timed_prepare

    def stages(self) -> dict[str, float]:
        """Per stage; ``histograms``: pass 1's wall time less its decoding and copying (counting alongside the
        decoding, what is left of it); ``decode 2``: pass 2 decoding."""
        out = dict(self.seconds)
        pass1 = out.pop("pass 1", 0.0)
        decode = out.pop("decode", 0.0)
        out["decode 1"], out["decode 2"] = self._pass1_decode, decode - self._pass1_decode
        out["histograms"] = max(0.0, pass1 - out.get("keep copy", 0.0) - self._pass1_decode)
        return {stage: out.get(stage, 0.0) for stage in STAGES}

    _pass1_decode = 0.0


def profiled_predict(model, src: Path, dst: Path, options: PredictOptions) -> tuple[object, StageClock]:
    """``predict_file`` with a stage clock (pass 1's decoding told apart from pass 2's)."""
    clock = StageClock()
    with clock.patched():
        real = predict_module.compute_percentiles

        def pass1(*args, **kwargs):
            before = clock.seconds["decode"]
            try:
                return real(*args, **kwargs)
            finally:
                clock._pass1_decode = clock.seconds["decode"] - before

        with mock.patch.object(predict_module, "compute_percentiles", pass1):
            result = predict_file(model, src, dst, options)
    return result, clock


def planned_shapes(model, scene: Path, options: PredictOptions) -> dict[tuple[int, int], int]:
    """The tiles (padded shape -> count) ``predict_file`` will run on ``scene``: its own grid."""
    with open_raster(scene) as ds:
        header = read_header(ds, scene)
    tiling = predict_module.resolve_tiling(model, options)
    plan = predict_module.plan_grid(header, tiling, model.card.size_multiple)
    shapes: dict[tuple[int, int], int] = defaultdict(int)
    for rspan in plan.rows:
        for cspan in plan.cols:
            shapes[(rspan.padded, cspan.padded)] += 1
    return dict(shapes)


def engine_direct_seconds(runner, shapes: dict[tuple[int, int], int], card, repeats: int = 3) -> float:
    """The engine alone, on one tile of each shape (median of ``repeats``), times the tiles of that shape."""
    total = 0.0
    for (height, width), count in shapes.items():
        tile = np.random.default_rng(0).random((len(card.bands), height, width), dtype=np.float32)
        runner([tile])  # warm: a new shape's first call compiles
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            runner([tile])
            times.append(time.perf_counter() - start)
        total += statistics.median(times) * count
    return total


def old_seconds(ctx, repeats: int = 3) -> float:
    return statistics.median(ctx.timed(ctx.old) for _ in range(repeats))


def deflate_scene(cache: Path, mirror: Path) -> Path:
    """The mirrored scene recompressed as DEFLATE (what uploads usually are), cached."""
    path = cache / mirror.name.replace("mirror", "deflate")
    if not path.exists():
        tmp = path.with_suffix(".tmp.tif")
        copy_raster(mirror, tmp, driver="GTiff", compress="deflate", predictor=2, tiled=True,
                    blockxsize=512, blockysize=512, interleave="pixel")  # fmt: skip
        tmp.rename(path)
    return path


def heldout_scenes(cache: Path) -> list[Path]:
    from model.training.synthetic import make_scene, write_scene_tif

    paths = []
    for seed in HELDOUT_SEEDS:
        path = cache / f"heldout-{seed}-{HELDOUT_SIZE}.tif"
        if not path.exists():
            write_scene_tif(path, make_scene(seed, HELDOUT_SIZE)[0])
        paths.append(path)
    return paths


def old_mask(path: Path, net, card) -> np.ndarray:
    """The old procedure's mask over a whole scene in one pass (no_grad: autograd changes time, not values)."""
    with rasterio.open(path) as src:
        image = src.read(list(card.bands)).astype(np.float64)
    for i, band in enumerate(image):
        p90 = np.percentile(band, 90)
        image[i] = np.clip(band, 0, p90) / p90 if p90 > 0 else 0
    with torch.no_grad():
        y = net(torch.from_numpy(image.astype(np.float32)[None]))
    return y[0, 0].numpy() > card.threshold


def end_to_end(ctx, quick: bool) -> None:
    """Section [6]; ``ctx``: the bench's helpers and inputs (row, verdict, timed, old procedure, paths)."""
    size = 2048 if quick else 4096
    scene = deflate_scene(ctx.cache, ctx.make_big(size))
    pixels = size * size
    tile_px = 512 * 512
    print(
        f"\n[6] end to end, {size} x {size} x 10 uint16 DEFLATE, default engine; the old procedure per 512 x 512 "
        "timed around each run; start-up subtracted (model loaded and warmed first, one scene predicted before)"
    )
    runs = [("fp32", "fp32", PredictOptions(precision="fp32")), ("auto", "auto", PredictOptions(precision="auto"))]
    runs.append(("auto, the copy in fresh memory (a process' first scene)", "auto", PredictOptions(precision="auto")))
    alongside = available_cpus() >= predict_module.COUNT_ALONGSIDE_MIN_CPUS  # the default here; forced the other way
    runs.append((f"auto, pass 1 counted {'inline' if alongside else 'alongside (forced)'}", "auto",
                 PredictOptions(precision="auto")))  # fmt: skip
    runs.append(("auto, decoded twice (no copy)", "auto", PredictOptions(precision="auto", decode_once=False)))
    on_disk = PredictOptions(precision="auto", decode_once=True, copy_memory_bytes=0)
    runs.append(("auto, copy in TMPDIR forced", "auto", on_disk))
    ahead = available_cpus() > READ_AHEAD_MIN_CPUS  # the default here; the run below forces the other way
    runs.append((f"auto, copy in TMPDIR, read-ahead {'off' if ahead else 'forced on'}", "auto",
                 dataclasses.replace(on_disk, read_ahead=not ahead)))  # fmt: skip
    runs.append(("fp32, before (card grid, decoded twice)", "fp32",
                 PredictOptions(precision="fp32", fit_tiles=False, decode_once=False)))  # fmt: skip
    # One prediction first, untimed: a warm process (a container's second scene) holds the decoded copy's arena;
    # the run with its pages given back shows a process' first scene.
    warm = load_inference_model(ctx.card_path, engine="openvino", precision="auto")
    predict_file(warm, scene, ctx.cache / "e2e.npy", PredictOptions(precision="auto"))
    speed = {}
    for label, precision, options in runs:
        model = load_inference_model(ctx.card_path, engine="openvino", precision=precision)
        model.warm_up(options)
        # The baselines right before and after the run, averaged: a shared machine's load drifts.
        shapes, runner = planned_shapes(model, scene, options), model.tile_engine(options, one_tile=False)
        direct, old = engine_direct_seconds(runner, shapes, model.card), old_seconds(ctx)
        if "fresh memory" in label:
            ARENA.trim(0)  # the arena's pages are given back: this run touches new ones, as a new process does
        counting = "counted" in label  # the other way round from the default
        forced = mock.patch.object(predict_module, "COUNT_ALONGSIDE_MIN_CPUS", 0 if not alongside else 10**6)
        with forced if counting else contextlib.nullcontext():
            result, clock = profiled_predict(model, scene, ctx.cache / "e2e.npy", options)
        assert dict(clock.tile_shapes) == shapes, (clock.tile_shapes, shapes)
        t_old = (old + old_seconds(ctx)) / 2
        direct = (direct + engine_direct_seconds(runner, shapes, model.card)) / 2
        computed = sum(h * w * n for (h, w), n in clock.tile_shapes.items())
        per_pixel = (t_old / tile_px) / (result.seconds / pixels)
        speed[label] = per_pixel
        shapes = ", ".join(f"{n} x {h}x{w}" for (h, w), n in clock.tile_shapes.items())
        name = f"{label} (ran {model.precision})"
        ctx.row(
            name, f"{result.seconds:.2f} s, {result.tiles} tiles ({shapes}), computed/scene {computed / pixels:.2f}x"
        )
        efficiency = direct / result.seconds
        ctx.row("  engine direct x tiles / end to end", f"{direct:.2f} s / {result.seconds:.2f} s = {efficiency:.2f}   "
                + ctx.verdict(efficiency >= TARGETS["efficiency"], f">= {TARGETS['efficiency']}"))  # fmt: skip
        target = TARGETS.get(label)
        ctx.row("  per pixel vs old procedure", f"{per_pixel:.2f}x (old {t_old * 1000:.0f} ms / 512 x 512)   "
                + (ctx.verdict(per_pixel >= target, f">= {target}x") if target else ""))  # fmt: skip
        stages = clock.stages()
        ctx.row("  stages (s)", "  ".join(f"{k} {v:.2f}" for k, v in stages.items()))
        other = result.seconds - sum(stages.values())
        ctx.row("  not in a stage (< 0: reads overlapped)", f"{other:.2f} s")
    ctx.row(
        "speed-up of this work, fp32 (same run)",
        f"{speed['fp32'] / speed['fp32, before (card grid, decoded twice)']:.2f}x",
    )
    agreement(ctx)
    rss_and_disk(ctx, (2048, 4096) if quick else (4096, 8192))
    cold(ctx)


def agreement(ctx) -> None:
    scenes = heldout_scenes(ctx.cache)
    net = ctx.torch_model.net
    card = ctx.torch_model.card
    for precision in ("fp32", "auto"):
        model = load_inference_model(ctx.card_path, engine="openvino", precision=precision)
        same_old = same_grid = total = 0
        for path in scenes:
            reference = old_mask(path, net, card)
            predict_file(model, path, ctx.cache / "fitted.npy", PredictOptions(precision=precision))
            predict_file(model, path, ctx.cache / "grid.npy", PredictOptions(precision=precision, fit_tiles=False))
            fitted, grid = np.load(ctx.cache / "fitted.npy") > 0.5, np.load(ctx.cache / "grid.npy") > 0.5
            same_old += int((fitted == reference).sum())
            same_grid += int((fitted == grid).sum())
            total += reference.size
        a_old, a_grid = same_old / total, same_grid / total
        ok = a_old >= TARGETS["agreement"] and a_grid >= TARGETS["agreement"]
        ctx.row(f"mask agreement, {precision} (ran {model.precision})",
                f"with the old procedure {a_old:.4%}, fitted vs card grid {a_grid:.4%} on {len(scenes)} held-out "
                f"{HELDOUT_SIZE}^2 scenes   " + ctx.verdict(ok, ">= 99.99%"))  # fmt: skip


RSS_CHILD = """
import json, os, shutil, sys, tempfile
from model.network.engines.loading import load_inference_model
from model.predictor.decoded import ARENA, DecodedInMemory, DecodedRaster
from model.predictor.predict import PredictOptions, predict_file
def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
used = {}
def recording(cls, where):
    close = cls.close
    def recording_close(self):
        used[where] = os.fstat(self.fd).st_blocks * 512 if where == "disk" else self.bytes
        close(self)
    cls.close = recording_close
recording(DecodedRaster, "disk")
recording(DecodedInMemory, "memory")
model = load_inference_model(sys.argv[2], engine="auto", precision="auto")
model.warm_up(PredictOptions(precision="auto"))
base = vm("VmRSS")
def open_in_tmp():  # unnamed (or deleted) files in TMPDIR this process still holds open
    tmp, links = os.path.realpath(tempfile.gettempdir()), []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return [link for link in links if link.startswith(tmp) and link.endswith("(deleted)")]
on_disk = dict(decode_once=True, copy_memory_bytes=0) if sys.argv[4] == "disk" else {}
options = PredictOptions(output="mask-uint8", precision="auto", **on_disk)
predict_file(model, sys.argv[1], sys.argv[3], options)
print(json.dumps({"base_kb": base, "hwm_kb": vm("VmHWM"), "copy": used,
                  "left_open": open_in_tmp(), "precision": model.precision}))
"""


def rss_and_disk(ctx, sizes: tuple[int, ...]) -> None:
    for size in sizes:
        rss_child_run(ctx, size, "default")
    rss_child_run(ctx, sizes[-1], "disk")


def rss_child_run(ctx, size: int, mode: str) -> None:
    raster = deflate_scene(ctx.cache, ctx.make_big(size))
    out = ctx.cache / "rss.npy"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RSS_CHILD, str(raster), str(ctx.card_path), str(out), mode],
                          capture_output=True, text=True, check=True, cwd=ctx.root)  # fmt: skip
    seconds = time.perf_counter() - start
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = report["hwm_kb"] / 1024**2
    kept = ", ".join(f"{where} {n / 1e9:.2f} GB" for where, n in report["copy"].items()) or "none"
    what = "default engine" + (", copy in TMPDIR forced" if mode == "disk" else "")
    verdict = ctx.verdict(peak <= TARGETS["rss_gb"], f"<= {TARGETS['rss_gb']} GB") if size >= 8192 else ""
    ctx.row(f"peak RSS, {size} x {size} DEFLATE, {what} ({report['precision']})",
            f"{peak:.2f} GB (after load {report['base_kb'] / 1024**2:.2f} GB, decoded copy: {kept}, {seconds:.0f} s)   "
            + verdict)  # fmt: skip
    if mode != "disk":
        return
    left = report["left_open"]
    ctx.row("  temp disk: decoded copy", f"{report['copy'].get('disk', 0) / 1e9:.2f} GB allocated in TMPDIR "
            f"(unnamed); files in TMPDIR still open after predict_file: {len(left)} "
            + ctx.verdict(not left, "0: the space is given back on close"))  # fmt: skip


COLD = """
import sys
import numpy as np
from model.network.engines.loading import load_inference_model
from model.options import PredictOptions
model = load_inference_model(sys.argv[1], engine=sys.argv[2], precision=sys.argv[3])
tile = np.zeros((len(model.card.bands), 512, 512), np.float32)
model.tile_engine(PredictOptions(precision=sys.argv[3]), one_tile=False)([tile])
"""


def cold(ctx, repeats: int = 3) -> None:
    times = {}
    for engine, precision in (("torch", "fp32"), ("auto", "auto")):
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", COLD, str(ctx.card_path), engine, precision], check=True, cwd=ctx.root
            )
            runs.append(time.perf_counter() - start)
        times[engine] = statistics.median(runs)
    ratio = times["torch"] / times["auto"]
    ctx.row("cold start to first tile, default engine", f"{times['auto']:.2f} s vs torch {times['torch']:.2f} s: "
            f"{ratio:.2f}x faster   " + ctx.verdict(ratio >= TARGETS["cold"], f">= {TARGETS['cold']}x"))  # fmt: skip
