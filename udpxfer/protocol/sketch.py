"""Bounded summaries of unbounded streams: a log histogram for quantiles, time bins that merge.

Both take numpy batches and keep a fixed amount of memory however many values they see, so a
receiver can summarise a transfer of any size as it arrives (issue 11). Pure, no I/O.

``LogHistogram`` is the bucketing of DDSketch (Masson, Rim & Lee, "DDSketch: a fast and
fully-mergeable quantile sketch with relative-error guarantees", VLDB 2019): a value ``y`` with
``|y| >= 1`` goes to bucket ``k = ceil(log_gamma |y|)``, ``gamma = (1 + a) / (1 - a)``, whose
representative ``2 gamma^k / (gamma + 1)`` is within a relative ``a`` of every value in
``(gamma^(k-1), gamma^k]``. With ``a = 0.5%`` the buckets of int64 nanoseconds are 2 x 4,400
counters at most (70 KB), whatever the count; only the span of buckets in use is kept.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

RELATIVE_ACCURACY: Final = 0.005
_GAMMA: Final = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_INV_LOG_GAMMA: Final = 1 / math.log(_GAMMA)
_K_MAX: Final = math.ceil(math.log(2.0**63) * _INV_LOG_GAMMA) + 2  # |int64| < gamma^K_MAX
_ZERO: Final = _K_MAX  # the bucket of 0; positive k at _ZERO + 1 + k, negative at _ZERO - 1 - k


class LogHistogram:
    """Counts of integers in logarithmic buckets (DDSketch's), for quantiles within a relative
    error: each estimate is within ``RELATIVE_ACCURACY`` of |the exact order statistic|."""

    __slots__ = ("_low", "_window", "total")

    def __init__(self) -> None:
        self._window = np.zeros(0, dtype=np.int64)  # counts of buckets _low, _low + 1, ...
        self._low = 0
        self.total = 0

    @property
    def counts(self) -> I64:
        """The count of every bucket (2 x 4,400 + 1 of them)."""
        out = np.zeros(2 * _K_MAX + 1, dtype=np.int64)
        out[self._low : self._low + self._window.size] = self._window
        return out

    def _span(self, low: int, high: int) -> None:
        """Keep buckets ``low .. high`` (and those in use) in the window."""
        start, end = self._low, self._low + self._window.size
        if self._window.size and start <= low and high < end:
            return
        if self._window.size:
            low, high = min(low, start), max(high, end - 1)
        # Some room either side: the window grows rarely (delays drift slowly).
        low, high = max(0, low - 64), min(2 * _K_MAX, high + 64)
        window = np.zeros(high - low + 1, dtype=np.int64)
        if self._window.size:
            window[start - low : end - low] = self._window
        self._window, self._low = window, low

    @staticmethod
    def bucket(values: I64) -> I64:
        """The bucket of each value."""
        magnitude = np.abs(values).astype(np.float64)
        k = np.ceil(np.log(np.maximum(magnitude, 1.0)) * _INV_LOG_GAMMA).astype(np.int64)
        out: I64 = np.where(values > 0, _ZERO + 1 + k, _ZERO - 1 - k)
        out[values == 0] = _ZERO
        return out

    def add(self, values: I64) -> None:
        """Count every value of ``values``."""
        if values.size == 0:
            return
        buckets = self.bucket(values)
        self._span(int(buckets.min()), int(buckets.max()))
        np.add.at(self._window, buckets - self._low, 1)
        self.total += int(values.size)

    def add_same(self, value: int, count: int) -> None:
        """Count ``value`` ``count`` times (one bucket lookup)."""
        if value == 0:
            bucket = _ZERO
        else:
            k = math.ceil(math.log(max(abs(value), 1)) * _INV_LOG_GAMMA)
            bucket = _ZERO + 1 + k if value > 0 else _ZERO - 1 - k
        self._span(bucket, bucket)
        self._window[bucket - self._low] += count
        self.total += count

    @staticmethod
    def _edges(buckets: I64) -> tuple[F64, F64]:
        """Representative value and largest magnitude of each bucket."""
        k = buckets - _ZERO
        magnitude = np.power(_GAMMA, np.abs(k).astype(np.float64) - 1)  # gamma^k of |bucket|
        sign = np.sign(k).astype(np.float64)
        middle = sign * 2 * magnitude / (_GAMMA + 1)
        return middle, np.where(k == 0, 0.0, magnitude)

    def quantiles(self, fractions: list[float]) -> list[tuple[float, float]]:
        """Estimates of ``np.percentile(values, 100 * q)`` (linear interpolation between the
        order statistics at ranks floor and ceil of q (n - 1)) and a bound on each estimate's
        absolute error (``RELATIVE_ACCURACY`` times the larger magnitude of the two buckets).

        Returns:
            ``(estimate, error bound)`` per fraction; empty when nothing was counted.
        """
        if self.total == 0:
            return []
        cumulative = np.cumsum(self.counts)
        ranks = np.array(fractions, dtype=np.float64) * (self.total - 1)
        low, high = np.floor(ranks), np.ceil(ranks)
        buckets = np.searchsorted(cumulative, np.concatenate((low, high)), side="right")
        middle, magnitude = self._edges(buckets.astype(np.int64))
        n = len(fractions)
        weight = ranks - low
        estimate = middle[:n] * (1 - weight) + middle[n:] * weight
        bound = RELATIVE_ACCURACY * np.maximum(magnitude[:n], magnitude[n:])
        return list(zip(estimate.tolist(), bound.tolist(), strict=True))


class TimeBins:
    """Per-bin sums over a time axis in a fixed number of bins: when a time falls beyond the
    last bin, neighbouring bins merge in pairs (the width doubles), so the memory is fixed and
    a bin always covers a whole number of the narrowest bins.

    Columns are named at creation with how they merge: ``"sum"``, ``"min"``, ``"max"`` or
    ``"last"`` (the later bin's value where it has one, for a level such as the jitter).
    """

    __slots__ = ("bins", "columns", "kinds", "width_ns")

    def __init__(self, kinds: dict[str, str], *, bins: int = 256, width_ns: int = 100_000) -> None:
        if bins % 2:
            raise ValueError("bins must be even")
        self.bins = bins
        self.width_ns = width_ns
        self.kinds = kinds
        self.columns: dict[str, npt.NDArray[Any]] = {
            name: np.full(bins, _INITIAL[kind], dtype=np.float64) for name, kind in kinds.items()
        }

    def reach(self, t_ns: int) -> None:
        """Widen the bins until time ``t_ns`` (ns since the axis' origin) falls in one."""
        while t_ns >= self.bins * self.width_ns:
            for name, kind in self.kinds.items():
                self.columns[name] = _merge_pairs(self.columns[name], kind)
            self.width_ns *= 2

    def index(self, t_ns: I64) -> I64:
        """The bin of each time (times before the origin go to bin 0); call ``reach`` first."""
        out: I64 = np.clip(t_ns // self.width_ns, 0, self.bins - 1)
        return out

    def slot(self, t_ns: int) -> int:
        """``index`` of one time."""
        return min(max(t_ns // self.width_ns, 0), self.bins - 1)

    def update(self, name: str, bins: I64, values: F64 | float) -> None:
        """Fold ``values`` into column ``name`` at ``bins`` (unbuffered: repeats all count)."""
        column, kind = self.columns[name], self.kinds[name]
        if kind == "sum":
            np.add.at(column, bins, values)
        elif kind == "min":
            np.minimum.at(column, bins, values)
        elif kind == "max":
            np.maximum.at(column, bins, values)
        else:
            column[bins] = values  # in time order: the last write to a bin is its latest value

    def update_one(self, name: str, at: int, value: float) -> None:
        """``update`` of one bin with one value."""
        column, kind = self.columns[name], self.kinds[name]
        if kind == "sum":
            column[at] += value
        elif kind == "min":
            column[at] = min(column[at], value)
        elif kind == "max":
            column[at] = max(column[at], value)
        else:
            column[at] = value

    def coarsened(self, factor: int) -> dict[str, npt.NDArray[Any]]:
        """The columns with every ``factor`` (a power of two) neighbouring bins merged."""
        out = dict(self.columns)
        while factor > 1:
            out = {name: _merge_pairs(column, self.kinds[name]) for name, column in out.items()}
            factor //= 2
        return out


_INITIAL: Final = {"sum": 0.0, "min": math.inf, "max": -math.inf, "last": math.nan}


def _merge_pairs(column: F64, kind: str) -> F64:
    """Bins ``2i`` and ``2i + 1`` into bin ``i``; the upper half becomes empty."""
    pairs = column.reshape(-1, 2)
    if kind == "sum":
        merged = pairs.sum(axis=1)
    elif kind == "min":
        merged = pairs.min(axis=1)
    elif kind == "max":
        merged = pairs.max(axis=1)
    else:
        merged = np.where(np.isnan(pairs[:, 1]), pairs[:, 0], pairs[:, 1])
    out = np.full(column.size, _INITIAL[kind], dtype=np.float64)
    out[: merged.size] = merged
    return out
