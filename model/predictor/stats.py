"""Streaming percentiles over a whole raster, equal to ``np.percentile(values, q)`` (method "linear").

The old service normalised each band by its 90th percentile over the whole image. Here the image arrives strip
by strip, so each band gets a :class:`PercentileAccumulator` that sees every strip once and then answers with
the value ``np.percentile`` would have given on all valid pixels of the band at once.

- 8- and 16-bit integers (Sentinel-2 L1C/L2A are uint16): a histogram (``np.bincount`` with an offset for
  signed types, at most 65 536 bins). Exact, with memory independent of the raster size.
- 32/64-bit integers and floats: the valid values are collected (in their own dtype) while they fit
  ``exact_budget_bytes``; the percentile is then exact. Past the budget the collected values are folded into
  a histogram over the top :data:`APPROX_KEY_BITS` bits of an order-preserving float32 key (sign, exponent
  and 11 mantissa bits), and the percentile is interpolated inside the bin holding each order statistic:
  the result is **approximate**, off by at most one bin width (relative error below ``2**-11``, about 0.05%).
- NaN and +-inf are never valid: they are dropped before counting (the caller also drops nodata pixels).

The two order statistics at rank ``(n - 1) * q / 100`` are interpolated exactly as NumPy's ``_lerp`` does, so
the result is bit-identical to ``np.percentile`` on the float64 values.

Example:
    >>> acc = PercentileAccumulator(np.dtype("uint16"))
    >>> acc.add(np.arange(11, dtype="uint16"))
    >>> acc.result()
    9.0
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_PERCENTILE = 90.0
DEFAULT_EXACT_BUDGET_BYTES = 512 * 1024**2  # per raster, shared by its bands (see split_budget)
HISTOGRAM_MAX_BITS = 16
# Values counted per bincount call: it widens them to intp, and a small scratch array is reused by malloc
# where a whole window's (32 MB for 4 M pixels) would be fresh pages every time.
BINCOUNT_CHUNK = 1 << 20
APPROX_KEY_BITS = 20


def percentile_of_sorted_pair(n: int, q: float, order_stat) -> float:
    """``np.percentile`` (linear) of ``n`` values, given ``order_stat(k)`` -> the k-th smallest (0-based).

    Mirrors NumPy: virtual index ``(n - 1) * (q / 100)``, clamped to the last value, then ``_lerp``.
    """
    if n <= 0:
        raise ValueError("percentile of no values")
    quantile = np.true_divide(q, 100)
    virtual = float((n - 1) * quantile)
    if virtual >= n - 1:
        return float(order_stat(n - 1))
    previous = math.floor(virtual)
    gamma = virtual - previous
    a = float(order_stat(previous))
    b = float(order_stat(previous + 1))
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1 - gamma)
    return a + diff * gamma


def split_budget(total_bytes: int, bands: int) -> int:
    """Each band's share of the exact-percentile memory budget."""
    return max(1, total_bytes // max(1, bands))


class PercentileAccumulator:
    """One band's running percentile; feed valid values with :meth:`add`, then call :meth:`result`."""

    def __init__(
        self,
        dtype: np.dtype,
        q: float = DEFAULT_PERCENTILE,
        exact_budget_bytes: int = DEFAULT_EXACT_BUDGET_BYTES,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.q = q
        self.budget = exact_budget_bytes
        self.count = 0
        self.exact = True
        self._is_float = self.dtype.kind == "f"
        if self.dtype.kind in "iub" and self.dtype.itemsize * 8 <= HISTOGRAM_MAX_BITS:
            info = np.iinfo(self.dtype) if self.dtype.kind != "b" else None
            self._offset = int(info.min) if info is not None else 0
            self._bins = (int(info.max) - int(info.min) + 1) if info is not None else 2
            self._hist: np.ndarray | None = np.zeros(self._bins, dtype=np.int64)
            self._mode = "hist"
        elif self.dtype.kind in "iuf":
            self._chunks: list[np.ndarray] = []
            self._bytes = 0
            self._hist = None
            self._mode = "collect"
        else:
            raise TypeError(f"no percentile for dtype {self.dtype}")

    @property
    def mode(self) -> str:
        """``hist`` (exact histogram), ``collect`` (exact values) or ``approx`` (float key histogram)."""
        return self._mode

    def add(self, values: np.ndarray) -> None:
        """Count a 1-D array of valid values of this band (any order, any length)."""
        values = np.asarray(values).reshape(-1)
        if self._is_float:
            finite = np.isfinite(values)
            if not finite.all():
                values = values[finite]
        if values.size == 0:
            return
        self.count += values.size
        if self._mode == "hist":
            for start in range(0, values.size, BINCOUNT_CHUNK):
                chunk = values[start : start + BINCOUNT_CHUNK]
                shifted = chunk.astype(np.int64) - self._offset if self._offset else chunk
                self._hist += np.bincount(shifted, minlength=self._bins)
        elif self._mode == "collect":
            self._chunks.append(np.array(values, dtype=self.dtype, copy=True))
            self._bytes += values.nbytes
            if self._bytes > self.budget:
                self._switch_to_approx()
        else:
            self._add_approx(values)

    def result(self) -> float:
        """The percentile of everything added, as a float64 (0.0 when nothing valid was added)."""
        if self.count == 0:
            return 0.0
        if self._mode == "hist":
            cumulative = np.cumsum(self._hist)
            return percentile_of_sorted_pair(
                self.count,
                self.q,
                lambda k: int(np.searchsorted(cumulative, k, side="right")) + self._offset,
            )
        if self._mode == "collect":
            values = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            needed = _needed_ranks(self.count, self.q)
            values = values.copy() if len(self._chunks) == 1 else values
            values.partition(needed)
            return percentile_of_sorted_pair(self.count, self.q, lambda k: float(values[k]))
        return self._approx_result()

    # -- merging (sharded rasters: each shard counts its rows, one reduction answers) --------------------------

    def histogram(self) -> tuple[str, np.ndarray]:
        """This accumulator's counts in a form another one can merge: ``(mode, counts)``.

        ``hist`` counts are exact; collected values (floats, wide integers) are first folded into the ``approx``
        key histogram, so a merged float percentile is the documented approximation (as past the budget).
        """
        if self._mode == "collect":
            self._switch_to_approx()
        assert self._hist is not None
        return self._mode, self._hist.copy()

    def merge_histogram(self, mode: str, counts: np.ndarray) -> None:
        """Add another accumulator's :meth:`histogram` (same dtype) to this one."""
        if self._mode == "collect" and mode == "approx":
            self._switch_to_approx()
        if mode != self._mode or self._hist is None or counts.shape != self._hist.shape:
            raise ValueError(f"cannot merge a {mode} histogram of {counts.shape} into a {self._mode} accumulator")
        self._hist += counts.astype(np.int64, copy=False)
        self.count += int(counts.sum())

    # -- approximate mode (floats or wide integers past the budget) ------------------------------------------

    def _switch_to_approx(self) -> None:
        self._mode = "approx"
        self.exact = False
        self._hist = np.zeros(1 << APPROX_KEY_BITS, dtype=np.int64)
        chunks, self._chunks = self._chunks, []
        for chunk in chunks:
            self._add_approx(chunk)

    def _add_approx(self, values: np.ndarray) -> None:
        self._hist += np.bincount(_float_keys(values), minlength=1 << APPROX_KEY_BITS)

    def _approx_result(self) -> float:
        cumulative = np.cumsum(self._hist)

        def order_stat(k: int) -> float:
            # Spread the bin's count evenly between its lower and upper edge values.
            key = int(np.searchsorted(cumulative, k, side="right"))
            before = int(cumulative[key - 1]) if key else 0
            inside = int(self._hist[key])
            low, high = _key_edges(key)
            return low + (high - low) * ((k - before + 0.5) / inside)

        return percentile_of_sorted_pair(self.count, self.q, order_stat)


def _needed_ranks(n: int, q: float) -> list[int]:
    virtual = float((n - 1) * np.true_divide(q, 100))
    low = min(math.floor(virtual), n - 1)
    return sorted({low, min(low + 1, n - 1)})


_SHIFT = 32 - APPROX_KEY_BITS


def _float_keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of the float32 values, cut to their top APPROX_KEY_BITS bits."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    negative = (bits >> 31).astype(bool)
    keys = np.where(negative, ~bits, bits | np.uint32(0x80000000))
    return (keys >> _SHIFT).astype(np.intp)


def _key_edges(key: int) -> tuple[float, float]:
    """The float values at the lower and upper edge of a key bin (inverse of _float_keys)."""

    def to_float(full_key: int) -> float:
        full_key &= 0xFFFFFFFF
        bits = full_key & 0x7FFFFFFF if full_key & 0x80000000 else ~full_key & 0xFFFFFFFF
        return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])

    first = key << _SHIFT
    last = first + (1 << _SHIFT) - 1
    a, b = to_float(first), to_float(last)
    return (a, b) if a <= b else (b, a)
