"""``make bench``'s outputs section: ``OUTPUTS=npy,cog,stac`` against ``npy`` alone, side by side in one run.

Each run is a child process that loads the serving model (as a container does, once) and makes one scene's
outputs with :func:`handler.products.make_products` (and, for ``stac``, the Item with :func:`describe`), in a
private temp dir; it reports its wall time from the first pixel read to the last file written, and its peak RSS
(VmHWM). The two kinds alternate (npy, all, npy, all, ...) so a machine that drifts hits both alike; the
figures are medians, the ratio is of medians. The scene is ``scripts/bench.py``'s: N x N x 10 uint16, tiled
512, pixel-interleaved, mirroring data/test-1.tif, no overviews (a quicklook read from it would decode every
block again; the predictor's statistics pass picks its pixels instead), generated once into .bench/ (gitignored).

    .venv/bin/python scripts/bench_outputs.py [--size 8192] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".bench"
TARGETS = {"ratio": 1.15, "rss_gb": 1.2}
KINDS = {"npy": ("npy",), "all": ("npy", "cog", "stac")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="the scene's side in pixels (a multiple of 512)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each kind, alternating")
    parser.add_argument("--child", nargs=2, metavar=("SCENE", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), args.child[1])

    from scripts.bench import cpu_flags, make_big  # the main benchmark's scene (torch: the parent only)

    CACHE.mkdir(exist_ok=True)
    scene = make_big(args.size)
    print(f"\n[outputs] {args.size} x {args.size} x 10 uint16 (make bench's scene), OUTPUTS=npy,cog,stac vs npy "
          f"({args.rounds} runs each, alternating, one child process each)")  # fmt: skip
    print(f"  CPU flags: {' '.join(cpu_flags()) or 'none of avx2/avx512*/amx'}")
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            runs[kind].append(run_child(scene, kind))
    wall = {kind: statistics.median(r["seconds"] for r in runs[kind]) for kind in KINDS}
    rss = {kind: max(r["hwm_kb"] for r in runs[kind]) / 1024**2 for kind in KINDS}
    ratio = wall["all"] / wall["npy"]
    row("npy alone", f"{wall['npy']:.1f} s, peak RSS {rss['npy']:.2f} GB")
    last = runs["all"][-1]
    row("npy,cog,stac", f"{wall['all']:.1f} s, peak RSS {rss['all']:.2f} GB")
    row("  of which the STAC Item (checksums included)", f"{last['item_s']:.1f} s (last run)")
    row(
        "  COG / quicklook / Item sizes",
        f"{last['cog_mb']:.2f} MB / {last['png_kb']:.0f} KB / {last['item_kb']:.0f} KB",
    )
    row(f"wall ratio (target <= {TARGETS['ratio']}x)", verdict(ratio, ratio <= TARGETS["ratio"], "x"))
    row(f"peak RSS (target <= {TARGETS['rss_gb']} GB)", verdict(rss["all"], rss["all"] <= TARGETS["rss_gb"], " GB"))


def run_child(scene: Path, kind: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(scene), kind], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        sys.exit(f"bench child ({kind}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(scene: Path, kind: str) -> None:
    from handler.model_source import load_runtime_model
    from handler.products import Published, describe, make_products
    from handler.runtime import options_from_settings
    from handler.settings import Settings

    settings = Settings.from_env()
    model = load_runtime_model(settings)
    options = options_from_settings(settings)
    formats = KINDS[kind]
    with tempfile.TemporaryDirectory(prefix="rasterfn-bench-", dir=CACHE) as workdir:
        work = Path(workdir)
        started = time.perf_counter()
        products = make_products(model, scene, work, options, formats)
        made = time.perf_counter()
        report = {"item_s": 0.0, "cog_mb": 0.0, "png_kb": 0.0, "item_kb": 0.0}
        if "stac" in formats:
            published = [Published(k, f"./s.{k}", path) for k, path in products.files.items()]
            item = describe(model, products.result, "s", published, "./s.tif", datetime.now(UTC), work / "item.json")
            report.update(
                item_s=time.perf_counter() - made,
                cog_mb=products.files["cog"].stat().st_size / 1e6,
                png_kb=products.files["thumbnail"].stat().st_size / 1e3,
                item_kb=item.stat().st_size / 1e3,
            )
        report["seconds"] = time.perf_counter() - started
        report["hwm_kb"] = vm_kb("VmHWM")
    print(json.dumps(report))


def vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def verdict(value: float, met: bool, unit: str) -> str:
    return f"{value:.2f}{unit}  {'met' if met else 'NOT MET'}"


def row(label: str, value: str) -> None:
    print(f"  {label:<46} {value}")


if __name__ == "__main__":
    main()
