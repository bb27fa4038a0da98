"""Time and size of the GIS outputs (issue 20) on an 8192 x 8192 raster: the mask COG, the score COG, the quicklook.

    .venv/bin/python scripts/bench_outputs.py [--size 8192]

The scores are smooth blobs with a little noise (like a network's canopy scores) and a nodata stripe; the
quicklook's input is an N x N x 10 uint16 DEFLATE scene mirroring data/test-1.tif (tiled 512,
pixel-interleaved, no overviews: the worst case, every block decoded), generated once into .bench/.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.io.cog import CogWriter  # noqa: E402
from model.io.quicklook import write_quicklook  # noqa: E402

CACHE = ROOT / ".bench"
SCENE = ROOT / "data" / "test-1.tif"
TRANSFORM = (10.0, 0.0, 399_960.0, 0.0, -10.0, 5_300_040.0)


def smooth_scores(size: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.linspace(0, 1, size // 8)[:, None], np.linspace(0, 1, size // 8)[None, :]
    coarse = np.zeros((size // 8, size // 8))
    for scale in (1.5, 4.0, 11.0):
        fy, fx, py, px = rng.uniform(0.5, 1.5, 2).tolist() + rng.uniform(0, 6.3, 2).tolist()
        coarse += np.sin(scale * fy * 6.3 * yy + py) * np.cos(scale * fx * 6.3 * xx + px) / scale
    coarse = (coarse - coarse.min()) / np.ptp(coarse)
    # A network's scores are never piecewise constant: a little noise in the low bits, as a sigmoid gives.
    noise = rng.normal(0, 0.002, (size, size)).astype(np.float32)
    return np.kron(coarse, np.ones((8, 8))).astype(np.float32) + noise


def deflate_scene(size: int) -> Path:
    path = CACHE / f"deflate-{size}.tif"
    if path.exists():
        return path
    CACHE.mkdir(exist_ok=True)
    with rasterio.open(SCENE) as src:
        scene, profile = src.read(), src.profile
    row = np.concatenate([scene if i % 2 == 0 else scene[:, :, ::-1] for i in range(size // 512)], 2)
    profile.update(width=size, height=size, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   predictor=2, interleave="pixel", BIGTIFF="IF_SAFER")  # fmt: skip
    tmp = path.with_suffix(".tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i in range(size // 512):
            strip = row if i % 2 == 0 else row[:, ::-1, :]
            dst.write(np.ascontiguousarray(strip), window=((i * 512, (i + 1) * 512), (0, size)))
    tmp.rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    size = parser.parse_args().size
    scores = smooth_scores(size)
    valid = np.ones(scores.shape, bool)
    valid[:300] = False
    threshold = float(np.percentile(scores, 60))
    with tempfile.TemporaryDirectory(dir=ROOT) as work:
        for kind in ("mask", "score"):
            out = Path(work) / f"{kind}.tif"
            start = time.perf_counter()
            with CogWriter(out, scores.shape, kind, "EPSG:32633", TRANSFORM, threshold) as cog:
                for top in range(0, size, 448):  # the predictor's strips: tile 512 less the 64-pixel overlap
                    cog.write_rows(scores[top : top + 448], valid[top : top + 448])
            print(f"{kind} COG {size}^2: {time.perf_counter() - start:.2f} s, {out.stat().st_size / 1e6:.2f} MB")
        scene = deflate_scene(size)
        start = time.perf_counter()
        write_quicklook(Path(work) / "mask.tif", scene, (3, 2, 1), Path(work) / "q.png")
        print(f"quicklook from {size}^2 x 10 uint16 DEFLATE (no overviews): {time.perf_counter() - start:.2f} s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (scores array included)")


if __name__ == "__main__":
    main()
