"""Per-bin time series of a transfer for the plots: goodput, first-pass loss, delay variation."""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

from udpxfer.analysis.trace import DUPLICATE, Trace
from udpxfer.analysis.values import F64, I64, NS_PER_S, Bools, json_list

# "Nice" bin widths for the time series: 1, 2, 5 x 10^k nanoseconds.
_NICE_STEPS: Final = (1, 2, 5)
SERIES_MAX_BINS: Final = 200
# Datagrams per time bin, at least: a bin's loss rate then moves in steps of 5% or less, not
# the 0/50/100% of bins holding one or two datagrams.
SERIES_MIN_DATAGRAMS: Final = 20


def nice_bin_ns(span_ns: float, max_bins: int = SERIES_MAX_BINS) -> int:
    """The smallest 1-2-5 x 10^k ns width giving at most ``max_bins`` bins over ``span_ns``."""
    target = max(span_ns / max_bins, 1.0)
    exponent = math.floor(math.log10(target))
    for power in (exponent, exponent + 1):
        for step in _NICE_STEPS:
            width = step * 10**power
            if width >= target:
                return int(width)
    raise AssertionError("unreachable")


def _bin_means(bins: I64, values: F64, nbins: int) -> tuple[F64, F64]:
    """Per-bin sample count and mean (NaN where a bin is empty)."""
    count = np.bincount(bins, minlength=nbins).astype(np.float64)
    total = np.bincount(bins, weights=values, minlength=nbins)
    mean = np.full(nbins, np.nan)
    np.divide(total, count, out=mean, where=count > 0)
    return count, mean


def empty_series() -> dict[str, Any]:
    """The ``series`` section of a transfer with no datagram (its keys, no bins)."""
    return {
        "bin_s": None,
        "clock": "receiver, seconds since the first datagram",
        "time_s": [],
        "goodput_bps": [],
        "loss_rate": [],
        "pdv_mean_ms": [],
        "pdv_max_ms": [],
        "jitter_ms": [],
    }


def time_series(
    trace: Trace, lost: Bools, send_ns: F64 | None, pdv_ms: F64, jitter_ms: F64
) -> dict[str, Any]:
    """Per-bin goodput, first-pass loss and delay variation over the transfer, for plots.

    Time is the receiver clock in seconds since ``started_ns``. Goodput counts the bytes of
    chunks arriving for the first time (new unique bytes). Loss counts first transmissions by
    the bin they were sent in (``send_ns``, from ``trace_send_times``). Bins are 1-2-5 widths,
    at most ``SERIES_MAX_BINS`` of them and about ``SERIES_MIN_DATAGRAMS`` datagrams or more
    each; the first starts at 0.

    Args:
        trace: the transfer's trace.
        lost: its first-pass lost mask.
        send_ns: per-chunk send times on the receiver axis (``trace_send_times``).
        pdv_ms: RFC 5481 PDV per arrival, in ms.
        jitter_ms: RFC 3550 jitter after each arrival, in ms.
    """
    empty = empty_series()
    if len(trace) == 0:
        return empty
    arrival = (trace.arrival_ns - trace.started_ns).astype(np.float64)
    send_t = send_ns[:-1] if send_ns is not None and lost.size else None
    end = float(arrival.max())
    if send_t is not None:
        end = max(end, float(send_t.max()))
    # The axis starts at the first datagram: a chunk sent (on this clock) before it counts in
    # the first bin.
    bins = max(1, min(SERIES_MAX_BINS, len(trace) // SERIES_MIN_DATAGRAMS))
    width = nice_bin_ns(end, bins)
    origin = 0.0
    nbins = int(end // width) + 1

    def to_bins(t: F64) -> I64:
        # A multiply and a cast (truncation; below 0 is clipped anyway): a float floor
        # division costs several times more over millions of datagrams.
        return np.clip(((t - origin) * (1.0 / width)).astype(np.int64), 0, nbins - 1)

    arr_bins = to_bins(arrival)
    # A chunk's new bytes arrive with the datagram that is not marked a duplicate (the
    # receiver marks every copy of a chunk it already held): no sort of the trace needed.
    fresh = (trace.flags & DUPLICATE) == 0
    new_bytes = trace.chunk_bytes(trace.index[fresh]).astype(np.float64)
    new_bits = np.bincount(arr_bins[fresh], weights=new_bytes, minlength=nbins) * 8.0
    goodput = new_bits * (NS_PER_S / width)
    loss = np.full(nbins, np.nan)
    if send_t is not None:
        _, loss = _bin_means(to_bins(send_t), lost.astype(np.float64), nbins)
    count, pdv_mean = _bin_means(arr_bins, pdv_ms, nbins)
    pdv_max = np.full(nbins, -np.inf)
    np.maximum.at(pdv_max, arr_bins, pdv_ms)
    pdv_max[count == 0] = np.nan
    last = np.full(nbins, -1, dtype=np.int64)
    np.maximum.at(last, arr_bins, np.arange(arr_bins.size, dtype=np.int64))
    jitter_at = np.where(last >= 0, jitter_ms[np.maximum(last, 0)], np.nan)
    return {
        **empty,
        "bin_s": width / NS_PER_S,
        "time_s": ((origin + width * np.arange(nbins)) / NS_PER_S).tolist(),
        "goodput_bps": goodput.tolist(),
        "loss_rate": json_list(loss),
        "pdv_mean_ms": json_list(pdv_mean),
        "pdv_max_ms": json_list(pdv_max),
        "jitter_ms": json_list(jitter_at),
    }
