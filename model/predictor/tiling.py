"""Sliding-window tile geometry and seam weights (pure: no I/O, no torch).

A raster no larger than one tile is ONE tile, padded on the bottom/right to the network's size multiple (not
padded at all when it already is one), so a 512 x 512 input runs exactly like the old service. Larger axes
get the fewest windows of ``tile`` pixels that overlap by at least ``overlap``, spread evenly from edge to
edge, so only axes shorter than a tile are ever padded.

Seams: every output pixel takes a weighted sum of the tiles covering it; per axis the weights of the tiles
covering a pixel add up to 1, so the 2-D weights (an outer product) add up to 1 as well, and a pixel covered
by one tile keeps that tile's score bit for bit.

- ``crop`` (default): weight 1 in the part of the overlap nearer to a tile's centre, 0 elsewhere: each pixel
  comes from the tile in which it lies furthest from an edge.
- ``blend``: linear ramps across each overlap (the two weights at a pixel add up to 1).

Measured (scripted, seeded random U-Net of the demo architecture, two 1024 x 1024 x 10 uint16 scenes: smooth
blobs and a model.training.synthetic scene), tile 512, overlap 64, against one forward pass over the whole raster:
``crop`` 100.000% mask agreement on both (mean |score difference| < 5e-6), ``blend`` 99.998% on both (mean
|score difference| 1.2e-4). Spreading the tiles evenly makes the overlaps 256 pixels here, so every pixel
``crop`` keeps is at least 128 pixels from a tile edge, about the U-Net's receptive radius, while ``blend``
still gives weight to pixels near an edge. ``crop`` is the default: better, simpler, exact for lone tiles.
The test (tests/test_predict.py::test_tiled_agrees_with_one_pass) asserts >= 99.5%.

Fitted grids (:func:`fit_tile`, :func:`plan_fitted`): the card's tile wastes up to a quarter of the work on
overlap (4096 = 9 windows of 512: 4608 pixels computed per axis, 1.27x per raster). Per axis, a window size
between the card's tile and ``max_tile`` is chosen to compute the fewest pixels with the same minimum overlap
(4096: 4 windows of 1072, 1.10x). The network is fully convolutional and the graphs take any size, so a larger
window changes only which pixels lie near a seam; an axis no longer than the card's tile is planned exactly as
before (one span), so a one-tile raster keeps its single-pass semantics.

Example:
    >>> [(s.start, s.size, s.own_start, s.own_stop) for s in plan_axis(900, 512, 64, 16)]
    [(0, 512, 0, 450), (388, 512, 450, 900)]
    >>> fit_tile(4096, 512, 64, 16, 1152), fit_tile(900, 512, 64, 16, 1152), fit_tile(500, 512, 64, 16, 1152)
    (1072, 912, 512)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEAM_MODES = ("crop", "blend")
DEFAULT_SEAM = "crop"


@dataclass(frozen=True)
class Span:
    """One tile's extent along one axis, in raster pixels."""

    index: int
    start: int
    size: int  # pixels read from the raster
    padded: int  # size fed to the network (>= size, a multiple of the network's size multiple)
    own_start: int  # the pixels this tile alone decides under "crop"
    own_stop: int
    overlap_before: int  # pixels shared with the previous span
    overlap_after: int  # pixels shared with the next span

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class TilePlan:
    """The tile grid of a raster: every row span combined with every column span."""

    height: int
    width: int
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]

    @property
    def tiles(self) -> int:
        return len(self.rows) * len(self.cols)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def plan_axis(length: int, tile: int, overlap: int, multiple: int) -> tuple[Span, ...]:
    """Spans covering ``range(length)``: windows of ``tile`` pixels overlapping by at least ``overlap``."""
    if length < 1:
        raise ValueError(f"axis length must be >= 1, got {length}")
    if tile < 1 or tile % multiple:
        raise ValueError(f"tile {tile} must be a positive multiple of {multiple}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, {tile})")
    if length <= tile:
        return (Span(0, 0, length, round_up(length, multiple), 0, length, 0, 0),)
    # As few windows as keep every overlap >= ``overlap``, spread evenly: no thin sliver of a last tile.
    count = -(-(length - overlap) // (tile - overlap))
    starts = [i * (length - tile) // (count - 1) for i in range(count)]
    # A pixel in an overlap belongs to the tile whose centre is nearer: the cut is the overlap's midpoint.
    cuts = [0] + [(starts[i + 1] + starts[i] + tile) // 2 for i in range(len(starts) - 1)] + [length]
    spans = []
    for i, start in enumerate(starts):
        before = starts[i - 1] + tile - start if i else 0
        after = start + tile - starts[i + 1] if i + 1 < len(starts) else 0
        spans.append(Span(i, start, tile, tile, cuts[i], cuts[i + 1], before, after))
    return tuple(spans)


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int) -> TilePlan:
    """The tile grid for a ``height`` x ``width`` raster."""
    return TilePlan(
        height,
        width,
        plan_axis(height, tile, overlap, multiple),
        plan_axis(width, tile, overlap, multiple),
    )


def computed_pixels(length: int, tile: int, overlap: int, multiple: int) -> int:
    """Pixels the network computes along one axis of ``length`` planned with windows of ``tile``."""
    return sum(span.padded for span in plan_axis(length, tile, overlap, multiple))


def fit_tile(length: int, tile: int, overlap: int, multiple: int, max_tile: int) -> int:
    """The window size in ``[tile, max_tile]`` that computes the fewest pixels along an axis of ``length``.

    Candidates are the smallest sizes (multiples of ``multiple``) that cover the axis with ``n`` windows
    overlapping by ``overlap``, for every ``n``; ties go to the smaller size (less memory). An axis no longer
    than ``tile`` keeps ``tile``.
    """
    if length <= tile or max_tile <= tile:
        return tile
    best = (computed_pixels(length, tile, overlap, multiple), tile)
    count = 1
    while True:
        size = round_up(-(-(length + (count - 1) * overlap) // count), multiple)
        if size < tile:
            break
        if size <= max_tile:
            best = min(best, (computed_pixels(length, size, overlap, multiple), size))
        count += 1
    return best[1]


def plan_fitted(height: int, width: int, tile: int, overlap: int, multiple: int, max_tile: int) -> TilePlan:
    """The tile grid with each axis' window size chosen by :func:`fit_tile` (``max_tile == tile``: today's)."""
    return TilePlan(
        height,
        width,
        plan_axis(height, fit_tile(height, tile, overlap, multiple, max_tile), overlap, multiple),
        plan_axis(width, fit_tile(width, tile, overlap, multiple, max_tile), overlap, multiple),
    )


def axis_weights(spans: tuple[Span, ...], seam: str = DEFAULT_SEAM) -> tuple[np.ndarray, ...]:
    """float32 weights over each span's pixels; at any pixel those of the spans covering it sum to 1."""
    if seam not in SEAM_MODES:
        raise ValueError(f"seam must be one of {SEAM_MODES}, not {seam!r}")
    raw = []
    for span in spans:
        weights = np.ones(span.size, dtype=np.float64)
        if seam == "crop":
            weights[: span.own_start - span.start] = 0
            weights[span.own_stop - span.start :] = 0
        else:
            t = np.arange(span.size, dtype=np.float64) + 0.5
            if span.overlap_before:
                weights *= np.minimum(1.0, t / span.overlap_before)
            if span.overlap_after:
                weights *= np.minimum(1.0, (span.size - t) / span.overlap_after)
        raw.append(weights)
    total = np.zeros(spans[-1].stop, dtype=np.float64)
    for span, weights in zip(spans, raw, strict=True):
        total[span.start : span.stop] += weights
    # Crop weights are 0/1 and already sum to 1: dividing leaves them (and single tiles) exact.
    return tuple((w / total[s.start : s.stop]).astype(np.float32) for s, w in zip(spans, raw, strict=True))


def pad_tile(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad a (..., h, w) array on the bottom/right to (..., height, width).

    Reflect where an axis has more than one pixel (no artificial edge for the network to see), otherwise
    repeat the pixel (reflect is undefined on a single pixel). Returns ``array`` itself when no pad is needed.
    """
    h, w = array.shape[-2:]
    if (h, w) == (height, width):
        return array
    lead = [(0, 0)] * (array.ndim - 2)
    if h < height:
        array = np.pad(array, [*lead, (0, height - h), (0, 0)], mode="reflect" if h > 1 else "edge")
    if w < width:
        array = np.pad(array, [*lead, (0, 0), (0, width - w)], mode="reflect" if w > 1 else "edge")
    return array
