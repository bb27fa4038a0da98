"""Synthetic Sentinel-2-like scenes with a canopy label, for the demo weights and the tests.

Pure numpy and deterministic from a seed. A scene is 10 bands (B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12) of
surface reflectance x 10000 as uint16, painted from land-cover objects: crop and grass fields (Voronoi cells),
bare soil, water bodies, built-up blocks, roads, and tree canopy (forest blobs, polygons of varied size,
hedgerows, clumps). Green crops are as green as canopy in NDVI, so a model must also use the visible and SWIR
bands and texture (canopy is darker in the visible and SWIR and has rough crown texture in the NIR).

Example:
    >>> image, label = make_scene(7, size=128)
    >>> image.shape, image.dtype, label.shape, label.dtype
    ((10, 128, 128), dtype('uint16'), (128, 128), dtype('uint8'))
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
# Sentinel-2 delivers these at 20 m; at 10 m they look blocky (2x2 pixels).
TWENTY_M_BANDS = ("B5", "B6", "B7", "B8A", "B11", "B12")
REFLECTANCE_SCALE = 10_000
DEFAULT_SIZE = 512
DEFAULT_CRS = "EPSG:32633"  # WGS 84 / UTM zone 33N
DEFAULT_ORIGIN = (399_960.0, 5_300_040.0)  # upper-left corner of a Sentinel-2 tile in zone 33N
DEFAULT_PIXEL_SIZE = 10.0

# Surface reflectance per land cover, band order as BANDS (typical values from spectral libraries).
GRASS, CROP_GREEN, CROP_DRY, SOIL, WATER, BUILT, ROAD, BROADLEAF, CONIFER = range(9)
CANOPY_CLASSES = (BROADLEAF, CONIFER)
SPECTRA = np.array(
    [
        [0.035, 0.075, 0.045, 0.110, 0.270, 0.330, 0.360, 0.380, 0.260, 0.150],  # grass
        [0.032, 0.075, 0.038, 0.105, 0.300, 0.380, 0.420, 0.440, 0.250, 0.140],  # green crop
        [0.060, 0.090, 0.110, 0.150, 0.200, 0.230, 0.250, 0.260, 0.300, 0.220],  # senescent crop
        [0.090, 0.120, 0.160, 0.190, 0.210, 0.230, 0.250, 0.260, 0.320, 0.270],  # bare soil
        [0.055, 0.045, 0.030, 0.022, 0.016, 0.013, 0.011, 0.010, 0.006, 0.004],  # water
        [0.110, 0.120, 0.130, 0.140, 0.150, 0.160, 0.170, 0.170, 0.210, 0.190],  # built-up
        [0.080, 0.085, 0.090, 0.095, 0.100, 0.105, 0.110, 0.110, 0.130, 0.120],  # road (asphalt)
        [0.020, 0.040, 0.022, 0.070, 0.220, 0.280, 0.310, 0.320, 0.130, 0.055],  # broadleaf canopy
        [0.015, 0.028, 0.016, 0.050, 0.140, 0.180, 0.200, 0.210, 0.085, 0.035],  # conifer canopy
    ],
    dtype=np.float32,
)
# Multiplicative within-object texture (std): canopy crowns and their shadows are rough, fields smooth.
TEXTURE = np.array([0.03, 0.04, 0.05, 0.06, 0.02, 0.12, 0.05, 0.12, 0.14], dtype=np.float32)
# Canopy has extra crown texture in the red edge and NIR (bands B6..B8A).
NIR_BANDS = slice(4, 8)
NIR_TEXTURE = np.array([0, 0, 0, 0, 0, 0, 0, 0.08, 0.10], dtype=np.float32)
SENSOR_NOISE = 0.002  # reflectance units


def make_scene(seed: int, size: int = DEFAULT_SIZE, *, illumination: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Generate one scene: ``(image (10, size, size) uint16, canopy label (size, size) uint8 0/1)``."""
    if size < 16:
        raise ValueError(f"size must be at least 16, not {size}")
    rng = np.random.default_rng(seed)
    shape = (size, size)
    painter = _Painter(rng, shape)
    _paint_fields(painter)
    _paint_water(painter)
    _paint_built_up(painter)
    _paint_roads(painter)
    _paint_canopy(painter)
    refl = painter.render()
    if illumination:
        refl = _illuminate(rng, refl)
    refl = refl + rng.normal(0.0, SENSOR_NOISE, refl.shape).astype(np.float32)
    image = np.clip(np.rint(refl * REFLECTANCE_SCALE), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    label = np.isin(painter.cls, CANOPY_CLASSES).astype(np.uint8)
    return image, label


def write_scene_tif(
    path: str | Path,
    image: np.ndarray,
    *,
    crs: str = DEFAULT_CRS,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    pixel_size: float = DEFAULT_PIXEL_SIZE,
) -> Path:
    """Write ``image`` (bands, rows, cols) as a tiled, DEFLATE-compressed, georeferenced GeoTIFF."""
    path = Path(path)
    bands, height, width = image.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": image.dtype.name,
        "crs": crs,
        "transform": Affine(pixel_size, 0.0, origin[0], 0.0, -pixel_size, origin[1]),
        "compress": "deflate",
        "predictor": 2,
        "interleave": "band",
    }
    if height % 16 == 0 and width % 16 == 0:
        profile.update(tiled=True, blockxsize=min(256, width), blockysize=min(256, height))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
        if bands == len(BANDS):
            dst.descriptions = BANDS
    return path


class _Painter:
    """Land cover and per-object reflectance, painted object by object (later objects cover earlier ones)."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int]) -> None:
        self.rng = rng
        self.shape = shape
        self.cls = np.full(shape, GRASS, dtype=np.uint8)
        self.refl = np.broadcast_to(SPECTRA[GRASS], (*shape, len(BANDS))).copy()

    def paint(self, mask: np.ndarray, cls: int, gain_sd: float = 0.1) -> None:
        # Each object gets its own brightness and a slight spectral tilt, as real fields and stands do.
        gain = np.float32(np.clip(1.0 + self.rng.normal(0.0, gain_sd), 0.7, 1.3))
        tilt = (1.0 + self.rng.normal(0.0, 0.03, len(BANDS))).astype(np.float32)
        self.cls[mask] = cls
        self.refl[mask] = SPECTRA[cls] * gain * tilt

    def render(self) -> np.ndarray:
        """Reflectance (bands, rows, cols) with texture, mixed edges and 20 m band resolution."""
        rng, shape = self.rng, self.shape
        fine = _fractal_noise(rng, shape, scales=(1.5, 3.0), weights=(0.7, 0.3))
        refl = self.refl * (1.0 + TEXTURE[self.cls] * fine)[..., None]
        crowns = _fractal_noise(rng, shape, scales=(1.0, 2.0), weights=(0.6, 0.4))
        refl[..., NIR_BANDS] *= (1.0 + NIR_TEXTURE[self.cls] * crowns)[..., None]
        refl = np.moveaxis(np.clip(refl, 0.0, None), -1, 0).astype(np.float32)
        # Pixels on an edge mix the two covers a little, as real 10 m pixels do.
        refl = 0.5 * refl + 0.5 * _box3(refl)
        for i, band in enumerate(BANDS):
            if band in TWENTY_M_BANDS:
                refl[i] = _to_20m(refl[i])
        return refl


def _paint_fields(p: _Painter) -> None:
    h, w = p.shape
    n = int(p.rng.integers(8, 30) * h * w / DEFAULT_SIZE**2) + 2
    centres = p.rng.uniform(0, [h, w], size=(n, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    best = np.full(p.shape, np.inf, dtype=np.float32)
    cell = np.zeros(p.shape, dtype=np.int32)
    for i, (cy, cx) in enumerate(centres):
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        closer = d < best
        best[closer] = d[closer]
        cell[closer] = i
    covers = p.rng.choice([GRASS, CROP_GREEN, CROP_DRY, SOIL], size=n, p=[0.3, 0.35, 0.15, 0.2])
    for i, cover in enumerate(covers):
        p.paint(cell == i, int(cover), gain_sd=0.12)


def _paint_water(p: _Painter) -> None:
    if p.rng.random() < 0.5:
        blob = _fractal_noise(p.rng, p.shape, scales=(96.0, 32.0), weights=(0.8, 0.2))
        p.paint(blob > p.rng.uniform(1.2, 1.8), WATER, gain_sd=0.1)
    if p.rng.random() < 0.35:
        p.paint(_polyline_mask(p.rng, p.shape, width=p.rng.uniform(4, 12), wiggle=0.25), WATER, gain_sd=0.1)


def _paint_built_up(p: _Painter) -> None:
    h, w = p.shape
    for _ in range(int(p.rng.integers(0, 4))):
        cy, cx = p.rng.uniform(0, h), p.rng.uniform(0, w)
        spread = p.rng.uniform(15, 60)
        angle = p.rng.uniform(0, np.pi)
        for _ in range(int(p.rng.integers(4, 20))):
            by, bx = cy + p.rng.normal(0, spread), cx + p.rng.normal(0, spread)
            half = p.rng.uniform(2, 9, size=2)
            p.paint(_rectangle_mask(p.shape, by, bx, half[0], half[1], angle), BUILT, gain_sd=0.15)


def _paint_roads(p: _Painter) -> None:
    for _ in range(int(p.rng.integers(1, 5))):
        p.paint(_polyline_mask(p.rng, p.shape, width=p.rng.uniform(1.5, 3.5), wiggle=0.05), ROAD, 0.08)


def _paint_canopy(p: _Painter) -> None:
    h, w = p.shape
    rng = p.rng
    area = h * w / DEFAULT_SIZE**2

    def species() -> int:
        return BROADLEAF if rng.random() < 0.65 else CONIFER

    # Forests: irregular blobs of smooth noise.
    for _ in range(int(rng.integers(0, 3))):
        blob = _fractal_noise(rng, p.shape, scales=(64.0, 16.0), weights=(0.8, 0.2))
        p.paint(blob > rng.uniform(1.0, 1.8), species(), gain_sd=0.1)
    # Woods and copses: star-shaped polygons of very different sizes.
    for _ in range(int(rng.integers(3, 14) * area) + 1):
        radius = float(np.exp(rng.uniform(np.log(5), np.log(60))))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        p.paint(_star_mask(rng, p.shape, cy, cx, radius), species(), gain_sd=0.1)
    # Hedgerows and tree lines.
    for _ in range(int(rng.integers(0, 4))):
        p.paint(_polyline_mask(rng, p.shape, width=rng.uniform(3, 6), wiggle=0.1), BROADLEAF, 0.1)
    # Clumps of a few trees.
    for _ in range(int(rng.integers(5, 25) * area)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        p.paint(_star_mask(rng, p.shape, cy, cx, rng.uniform(3, 6)), species(), gain_sd=0.1)


def _illuminate(rng: np.random.Generator, refl: np.ndarray) -> np.ndarray:
    """Smooth brightness changes (thin cloud shadow, terrain) and a little haze in the blue and green."""
    _, h, w = refl.shape
    light = np.clip(1.0 + 0.08 * _fractal_noise(rng, (h, w), scales=(192.0,), weights=(1.0,)), 0.75, 1.25)
    haze = np.clip(_fractal_noise(rng, (h, w), scales=(128.0,), weights=(1.0,)), 0, None) * rng.uniform(0, 0.015)
    refl = refl * light.astype(np.float32)
    refl[:2] += haze.astype(np.float32)
    return refl


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth noise: a random grid every ``scale`` pixels, interpolated with smoothstep weights."""
    h, w = shape
    grid = rng.standard_normal((int(np.ceil(h / scale)) + 2, int(np.ceil(w / scale)) + 2)).astype(np.float32)
    y = np.arange(h, dtype=np.float32) / scale + rng.uniform(0, 1)
    x = np.arange(w, dtype=np.float32) / scale + rng.uniform(0, 1)
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    fy, fx = y - y0, x - x0
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], scales: tuple[float, ...], weights: tuple[float, ...]
) -> np.ndarray:
    """Weighted sum of value noise at several scales, scaled to unit standard deviation."""
    total = sum(wt * _value_noise(rng, shape, s) for s, wt in zip(scales, weights, strict=True))
    return (total / (total.std() + 1e-6)).astype(np.float32)


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean over the last two axes, edges replicated."""
    pad = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = a.shape[-2:]
    out = np.zeros_like(a)
    for dy in range(3):
        for dx in range(3):
            out += pad[..., dy : dy + h, dx : dx + w]
    return out / 9.0


def _to_20m(band: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks and repeat them, as if the band were resampled from 20 m."""
    h, w = band.shape
    hh, ww = h // 2 * 2, w // 2 * 2
    blocks = band[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2).mean(axis=(1, 3))
    out = band.copy()
    out[:hh, :ww] = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)
    return out


def _bbox(shape: tuple[int, int], cy: float, cx: float, r: float) -> tuple[slice, slice]:
    h, w = shape
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, h)
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, w)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _star_mask(rng: np.random.Generator, shape: tuple[int, int], cy: float, cx: float, radius: float) -> np.ndarray:
    """A star-shaped polygon: radii at a few random angles, interpolated around the centre."""
    n = int(rng.integers(5, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.5, 1.0, n)
    mask = np.zeros(shape, dtype=bool)
    ys, xs = _bbox(shape, cy, cx, radius)
    yy, xx = np.mgrid[ys, xs]
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    theta = np.mod(np.arctan2(dy, dx), 2 * np.pi)
    mask[ys, xs] = np.hypot(dy, dx) <= np.interp(theta, angles, radii, period=2 * np.pi)
    return mask


def _rectangle_mask(
    shape: tuple[int, int], cy: float, cx: float, half_h: float, half_w: float, angle: float
) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    ys, xs = _bbox(shape, cy, cx, float(np.hypot(half_h, half_w)))
    yy, xx = np.mgrid[ys, xs]
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    u = dy * np.cos(angle) - dx * np.sin(angle)
    v = dy * np.sin(angle) + dx * np.cos(angle)
    mask[ys, xs] = (np.abs(u) <= half_h) & (np.abs(v) <= half_w)
    return mask


def _polyline_mask(rng: np.random.Generator, shape: tuple[int, int], width: float, wiggle: float) -> np.ndarray:
    """A line of a few segments crossing the scene from one edge to another, ``width`` pixels wide."""
    h, w = shape
    start = np.array([rng.uniform(0, h), 0.0]) if rng.random() < 0.5 else np.array([0.0, rng.uniform(0, w)])
    end = np.array([h - start[0], w]) if start[1] == 0 else np.array([h, w - start[1]])
    n = int(rng.integers(2, 6))
    t = np.linspace(0, 1, n + 1)[:, None]
    points = start + t * (end - start)
    points[1:-1] += rng.normal(0, wiggle * max(h, w), size=(n - 1, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy + 0.5, xx + 0.5
    mask = np.zeros(shape, dtype=bool)
    for (ay, ax), (by, bx) in itertools.pairwise(points):
        vy, vx = by - ay, bx - ax
        t_seg = np.clip(((yy - ay) * vy + (xx - ax) * vx) / max(vy * vy + vx * vx, 1e-9), 0, 1)
        mask |= (yy - ay - t_seg * vy) ** 2 + (xx - ax - t_seg * vx) ** 2 <= (width / 2) ** 2
    return mask
