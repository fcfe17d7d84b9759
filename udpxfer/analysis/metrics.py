"""Trace -> loss, burst, reordering and delay statistics, vectorised with numpy.

Pure functions: no sockets, no files, no clocks. The low-level functions take plain arrays so
they can be checked on synthetic sequences; ``analyse`` takes a ``Trace`` and returns the report
sections the receiver merges into its JSON report. Every value it returns is JSON-safe: plain
ints, floats and lists, ``None`` where a figure is undefined (never NaN).

Conventions: chunk indexes are in send order (the first pass sends chunks 0..N-1 in order, so a
chunk's index is its first transmission number); ``lost`` is a boolean array over chunk indexes,
True where the chunk's first transmission never arrived.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from udpxfer.analysis.lossruns import MomentCounts
from udpxfer.analysis.trace import DUPLICATE, RESENT, Trace

Bools = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

Z95: Final = 1.959963984540054  # standard normal quantile for a two-sided 95% interval
GMIN: Final = 16  # RFC 3611 §4.7.2: gap threshold recommended for VoIP metrics
JITTER_GAIN: Final = 1 / 16  # RFC 3550 §6.4.1: J += (|D| - J) / 16
NS_PER_MS: Final = 1e6
NS_PER_S: Final = 1e9
# "Nice" bin widths for the time series: 1, 2, 5 x 10^k nanoseconds.
_NICE_STEPS: Final = (1, 2, 5)
SERIES_MAX_BINS: Final = 200
# Datagrams per time bin, at least: a bin's loss rate then moves in steps of 5% or less, not
# the 0/50/100% of bins holding one or two datagrams.
SERIES_MIN_DATAGRAMS: Final = 20


def _num(value: float | np.floating[Any] | None) -> float | None:
    """A float for JSON: ``None`` for undefined or non-finite values."""
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or ``None`` when the denominator is zero."""
    return numerator / denominator if denominator else None


# --------------------------------------------------------------------------------------------
# First-pass loss sequence and its confidence interval


def first_transmissions(pass_no: npt.NDArray[np.uint8], flags: npt.NDArray[np.uint8]) -> Bools:
    """Mask of datagrams that are first transmissions: ``pass_no == 0`` and not RESENT."""
    mask: Bools = (pass_no == 0) & ((flags & RESENT) == 0)
    return mask


def first_pass_lost(
    index: I64, pass_no: npt.NDArray[np.uint8], flags: npt.NDArray[np.uint8], chunk_count: int
) -> Bools:
    """Lost mask over chunk indexes: True where no first transmission of the chunk arrived.

    A first transmission has ``pass_no == 0`` and no RESENT flag (DESIGN.md: "A chunk is a
    first-pass gap when its first transmission never arrived").
    """
    received = np.zeros(chunk_count, dtype=np.bool_)
    received[index[first_transmissions(pass_no, flags)]] = True
    return ~received


def wilson_interval(lost: int, total: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion ``lost / total``.

    Wilson (1927), as recommended by Brown, Cai & DasGupta (2001) for small rates:
    centre = (p + z²/2n) / (1 + z²/n), half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²).

    Returns:
        ``(low, high)`` within [0, 1], or ``None`` when ``total`` is 0.
    """
    if total <= 0:
        return None
    p = lost / total
    z2n = z * z / total
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / total + z2n / (4 * total))
    # Exact at the ends: no loss has a lower bound of 0, all lost an upper bound of 1 (the
    # formula gives them only to rounding).
    low = 0.0 if lost == 0 else max(0.0, centre - half)
    high = 1.0 if lost == total else min(1.0, centre + half)
    return low, high


def span_mask(first: I64, last: I64, count: int) -> Bools:
    """Boolean mask over ``count`` chunks, True inside every inclusive span ``first..last``."""
    marks = np.zeros(count + 1, dtype=np.int64)
    np.add.at(marks, np.clip(first, 0, count), 1)
    np.add.at(marks, np.clip(last + 1, 0, count), -1)
    mask: Bools = np.cumsum(marks[:count]) > 0
    return mask


def ranges_to_mask(ranges: list[list[int]], count: int) -> Bools:
    """``span_mask`` of a report's ``gaps``/``first_pass_gaps`` (``[[first, last], ...]``)."""
    bounds = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    return span_mask(bounds[:, 0], bounds[:, 1], count)


# --------------------------------------------------------------------------------------------
# Runs: bursts (consecutive lost chunks) and gaps (consecutive received chunks)


def runs(mask: Bools) -> tuple[I64, I64]:
    """Maximal runs of True in ``mask``.

    Returns:
        ``(starts, lengths)``: the first index and the length of each run, in order.
    """
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return starts.astype(np.int64), (ends - starts).astype(np.int64)


@dataclass(frozen=True, slots=True)
class RunStats:
    """Distribution of run lengths: count, mean, max and a ``[length, count]`` histogram."""

    count: int
    mean_length: float | None
    max_length: int
    histogram: list[list[int]]


def run_stats(lengths: I64) -> RunStats:
    """Summarise run lengths (``mean_length`` is ``None`` when there is no run)."""
    if lengths.size == 0:
        return RunStats(0, None, 0, [])
    values, counts = np.unique(lengths, return_counts=True)
    return RunStats(
        count=int(lengths.size),
        mean_length=float(lengths.mean()),
        max_length=int(values[-1]),
        histogram=np.column_stack((values, counts)).tolist(),
    )


def geometric_run_pmf(loss_rate: float, lengths: I64) -> F64:
    """P(burst length = l) on a Bernoulli channel with this loss rate: (1 - q) q^(l-1).

    The yardstick for burstiness: a memoryless channel's loss runs are geometric with mean
    1 / (1 - q) (Gilbert 1960, the k=1, h=0 limit of the Gilbert-Elliott model).
    """
    q = min(max(loss_rate, 0.0), 1.0)
    return (1.0 - q) * np.power(q, lengths.astype(np.float64) - 1.0)


# --------------------------------------------------------------------------------------------
# Gilbert and Gilbert-Elliott models


@dataclass(frozen=True, slots=True)
class GilbertFit:
    """Two-state Gilbert estimates and, where identifiable, the 4-parameter Gilbert-Elliott fit.

    Attributes:
        p: P(received -> lost) between consecutive chunks (simple Gilbert, k=1, h=0).
        r: P(lost -> received).
        steady_state_loss: p / (p + r), the long-run loss the two-state chain implies.
        h: P(received | Bad state) in the 4-parameter model.
        k: P(received | Good state) in the 4-parameter model.
        ge_p, ge_r: the 4-parameter model's own Good->Bad and Bad->Good probabilities.
        ge_loss: its implied loss rate, pi_G (1 - k) + pi_B (1 - h).
    """

    p: float | None
    r: float | None
    steady_state_loss: float | None
    h: float | None = None
    k: float | None = None
    ge_p: float | None = None
    ge_r: float | None = None
    ge_loss: float | None = None


def gilbert_two_state(lost: Bools) -> tuple[float | None, float | None, float | None]:
    """Simple Gilbert model (k=1, h=0) estimated by counting transitions in send order.

    p = #(received -> lost) / #(received chunks with a successor),
    r = #(lost -> received) / #(lost chunks with a successor) (Gilbert 1960: with k=1, h=0
    the hidden state is the observed one, so these counts are its maximum-likelihood fit).

    Returns:
        ``(p, r, steady_state_loss)``; each ``None`` when its denominator is empty. The
        steady-state loss p / (p + r) is 0 when p = 0 and no loss has a successor, 1 when r = 0
        and no received chunk has a successor, and ``None`` when the chain never moved.
    """
    prev, nxt = lost[:-1], lost[1:]
    from_received = int(np.count_nonzero(~prev))
    from_lost = int(prev.size - from_received)
    to_lost = int(np.count_nonzero(~prev & nxt))
    to_received = int(np.count_nonzero(prev & ~nxt))
    return gilbert_from_counts(to_lost, from_received, to_received, from_lost)


def gilbert_from_counts(
    to_lost: int, from_received: int, to_received: int, from_lost: int
) -> tuple[float | None, float | None, float | None]:
    """``gilbert_two_state`` from its transition counts (as ``lossruns.LossRuns`` keeps them)."""
    p = _ratio(to_lost, from_received)
    r = _ratio(to_received, from_lost)
    if p is not None and r is not None:
        steady = _ratio(p, p + r)
    elif p == 0.0:
        steady = 0.0
    elif r == 0.0:
        steady = 1.0
    else:
        steady = None
    return p, r, steady


def gilbert_elliott_moments(lost: Bools, z: float = 3.0) -> GilbertFit | None:
    """Method-of-moments fit of the 4-parameter Gilbert-Elliott model (p, r, h, k).

    Model (Gilbert 1960, Elliott 1963, notation of Hasslinger & Hohlfeld 2008): a hidden Good/Bad
    Markov chain with P(G->B) = p, P(B->G) = r; a chunk is received with probability k in Good
    and h in Bad. With e_G = 1-k, e_B = 1-h, D = e_B - e_G, pi = p/(p+r), lambda = 1-p-r and x the
    loss indicator, the stationary moments are (the state is a two-state Markov chain, the
    per-chunk noise is independent given the state):

        E[x]                                  = e_G + D pi
        Cov(x_t, x_t+m)                       = D² pi(1-pi) lambda^m           (m >= 1)
        E[(x_t-Ex)(x_t+1-Ex)(x_t+2-Ex)]       = D³ pi(1-pi)(1-2pi) lambda²

    so lambda = C2/C1, A = C1/lambda = D² pi(1-pi), B = K3/lambda² = D A (1-2pi) give
    D = sqrt((B/A)² + 4A), pi = (1 - B/(A D))/2, then e_G, e_B, p = pi(1-lambda),
    r = (1-pi)(1-lambda). Probabilities are clipped to [0, 1].

    Returns:
        The fit (``p``/``r``/``steady_state_loss`` left ``None``: they are the two-state
        estimates, see ``gilbert_two_state``), or ``None`` when the model is not identifiable:
        fewer than 3 chunks, a lag-1 autocorrelation not above ``z / sqrt(n)`` (losses look
        independent, so any h, k with the same mean fits), or lag moments that no
        Gilbert-Elliott chain can produce (C2 <= 0 or C2 >= C1).
    """
    return gilbert_elliott_from_counts(MomentCounts.of(lost), z)


def gilbert_elliott_from_counts(counts: MomentCounts, z: float = 3.0) -> GilbertFit | None:
    """``gilbert_elliott_moments`` from the exact integer lag sums of the lost mask (the
    centred moments follow from them: ``MomentCounts.centred``), as kept block by block."""
    moments = counts.centred()
    if moments is None:
        return None
    n = counts.n
    mean, var, c1, c2, k3 = moments
    if var <= 0 or c1 <= z * var / math.sqrt(n) or c2 <= 0 or c2 >= c1:
        return None
    lam = c2 / c1
    a = c1 / lam
    u = k3 / (lam * lam) / a
    spread = math.sqrt(u * u + 4 * a)
    pi_bad = min(max((1 - u / spread) / 2, 0.0), 1.0)
    e_good = min(max(mean - spread * pi_bad, 0.0), 1.0)
    e_bad = min(max(e_good + spread, 0.0), 1.0)
    ge_p, ge_r = pi_bad * (1 - lam), (1 - pi_bad) * (1 - lam)
    return GilbertFit(
        p=None,
        r=None,
        steady_state_loss=None,
        h=1 - e_bad,
        k=1 - e_good,
        ge_p=ge_p,
        ge_r=ge_r,
        ge_loss=(1 - pi_bad) * e_good + pi_bad * e_bad,
    )


def gilbert_fit(lost: Bools) -> GilbertFit:
    """Two-state Gilbert estimates plus the Gilbert-Elliott moments fit where identifiable."""
    p, r, steady = gilbert_two_state(lost)
    ge = gilbert_elliott_moments(lost)
    if ge is None:
        return GilbertFit(p, r, steady)
    return GilbertFit(p, r, steady, ge.h, ge.k, ge.ge_p, ge.ge_r, ge.ge_loss)


# --------------------------------------------------------------------------------------------
# RFC 3611 §4.7.2 burst/gap metrics


@dataclass(frozen=True, slots=True)
class Rfc3611Bursts:
    """RFC 3611 §4.7.2 VoIP-metrics burst and gap figures (densities as fractions, not /256)."""

    gmin: int
    bursts: int
    burst_density: float
    gap_density: float
    burst_duration_ms: float | None
    gap_duration_ms: float | None


def rfc3611_bursts(lost: Bools, slot_ns: F64 | None, gmin: int = GMIN) -> Rfc3611Bursts:
    """Burst and gap density and mean duration per RFC 3611 §4.7.2.

    A burst is a longest run that starts and ends with a lost chunk and holds no Gmin or more
    consecutive received chunks; the sequence is taken as preceded and followed by Gmin
    received chunks. A lone loss separated from others by >= Gmin received chunks stays in
    the gap ("gaps correspond to periods of time during which only isolated lost packets may
    occur", §4.7.2; Appendix A.2 counts such a loss in the gap), so a burst holds >= 2 losses.
    Gaps are the periods between bursts (the whole sequence when there is none).

    Args:
        lost: lost mask in send order.
        slot_ns: send time of each chunk plus one trailing end time (``chunk_count + 1``
            values, see ``chunk_send_times``); a period [a, b] lasts slot_ns[b+1] - slot_ns[a].
            ``None`` leaves the durations undefined.
        gmin: the gap threshold (RFC 3611 recommends 16).

    Returns:
        Densities (lost / chunks inside bursts, resp. gaps; 0 where there is no such period)
        and mean burst and gap durations in ms (burst 0 when there is no burst).
    """
    n = lost.size
    pos = np.flatnonzero(lost)
    if pos.size:
        new = np.concatenate(([True], np.diff(pos) - 1 >= gmin))
        first = np.flatnonzero(new)
        losses = np.diff(np.concatenate((first, [pos.size])))
        starts = pos[first]
        ends = pos[np.concatenate((first[1:] - 1, [pos.size - 1]))]
        is_burst = losses >= 2
        starts, ends, losses = starts[is_burst], ends[is_burst], losses[is_burst]
    else:
        starts = ends = losses = np.zeros(0, dtype=np.int64)
    in_burst = span_mask(starts, ends, n)
    burst_chunks = int(np.count_nonzero(in_burst))
    burst_lost = int(losses.sum())
    gap_lost = int(pos.size) - burst_lost
    gap_starts, gap_lengths = runs(~in_burst)

    burst_ms: float | None = None
    gap_ms: float | None = None
    if slot_ns is not None:
        burst_ms = float((slot_ns[ends + 1] - slot_ns[starts]).mean()) if starts.size else 0.0
        burst_ms /= NS_PER_MS
        if gap_starts.size:
            gap_ends = gap_starts + gap_lengths
            gap_ms = float((slot_ns[gap_ends] - slot_ns[gap_starts]).mean()) / NS_PER_MS
    return Rfc3611Bursts(
        gmin=gmin,
        bursts=int(starts.size),
        burst_density=burst_lost / burst_chunks if burst_chunks else 0.0,
        gap_density=gap_lost / (n - burst_chunks) if n - burst_chunks else 0.0,
        burst_duration_ms=burst_ms,
        gap_duration_ms=gap_ms,
    )


def chunk_send_times(chunk_count: int, index: I64, sent_ns: I64, origin_ns: int) -> F64 | None:
    """First-pass send time of every chunk, plus the end of the last chunk's slot.

    Received first transmissions give their own ``sent_ns``; lost ones are interpolated
    linearly between their neighbours (the sender paces the first pass evenly) and extrapolated
    at either end with the mean send interval.

    Args:
        chunk_count: number of chunks N.
        index, sent_ns: chunk index and send time of the first transmissions that arrived.
        origin_ns: the sender-clock instant that becomes time 0.

    Returns:
        N + 1 times in ns since ``origin_ns`` (float), or ``None`` when no first transmission
        arrived.
    """
    if index.size == 0:
        return None
    idx, first = np.unique(index, return_index=True)
    times = (sent_ns[first] - origin_ns).astype(np.float64)
    span = int(idx[-1] - idx[0])
    slope = (times[-1] - times[0]) / span if span else 0.0
    grid = np.arange(chunk_count + 1, dtype=np.float64)
    out = np.interp(grid, idx.astype(np.float64), times)
    before, after = grid < idx[0], grid > idx[-1]
    out[before] = times[0] + (grid[before] - idx[0]) * slope
    out[after] = times[-1] + (grid[after] - idx[-1]) * slope
    return out


# --------------------------------------------------------------------------------------------
# Reordering (RFC 4737) and duplicates


@dataclass(frozen=True, slots=True)
class Reordering:
    """RFC 4737 reordering over the sender's transmission numbers, in arrival order."""

    count: int
    ratio: float | None
    max_extent: int
    mean_extent: float | None
    network_duplicates: int  # arrivals repeating a transmission number seen before (RFC 5560)


def reordering(tx: I64) -> Reordering:
    """Reordered packets, reordered ratio and reordering extent per RFC 4737.

    Duplicated arrivals of one transmission are set aside first (RFC 4737 §3.3 assumes unique
    sequence numbers). Then with NextExp = max(seq seen so far) + 1 (§3.3), an arrival with
    s < NextExp is reordered; the reordered ratio is reordered / received (§4.1); the extent of
    a reordered arrival j is j - i, i the earliest arrival with s[i] > s[j] (§4.2.1).
    """
    if tx.size == 0:
        return Reordering(0, None, 0, None, 0)
    _, first = np.unique(tx, return_index=True)
    first.sort()
    seq = tx[first]
    running_max = np.maximum.accumulate(seq)
    late = np.flatnonzero(seq[1:] <= running_max[:-1]) + 1
    extents = late - np.searchsorted(running_max, seq[late], side="right")
    return Reordering(
        count=int(late.size),
        ratio=late.size / seq.size,
        max_extent=int(extents.max()) if extents.size else 0,
        mean_extent=float(extents.mean()) if extents.size else None,
        network_duplicates=int(tx.size - seq.size),
    )


# --------------------------------------------------------------------------------------------
# Delay: RFC 3550 interarrival jitter and RFC 5481 packet delay variation


def first_order_iir(x: F64, a: float) -> F64:
    """y[t] = a y[t-1] + (1 - a) x[t] with y[-1] = 0, vectorised in blocks.

    Inside a block of B samples starting at s, y[s+m] = a^(m+1) y[s-1] +
    (1-a) a^m sum_{j<=m} a^-j x[s+j]: one cumulative sum per block, all blocks at once. B is
    chosen so that a^-B <= 2^20 (no overflow, at most 20 bits of the sum's precision at stake
    for signed inputs, none for the non-negative |D| of RFC 3550); only the carry between
    blocks (one scalar per block) runs in Python.

    Args:
        x: the input samples.
        a: the pole, 0 <= a < 1.
    """
    if not 0.0 <= a < 1.0:
        raise ValueError(f"pole must be in [0, 1), not {a}")
    n = x.size
    if n == 0 or a == 0.0:
        return x.astype(np.float64, copy=True)
    block = int(min(4096, max(1, math.floor(20 * math.log(2) / -math.log(a)))))
    blocks = -(-n // block)
    padded = np.zeros(blocks * block, dtype=np.float64)
    padded[:n] = x
    grid = padded.reshape(blocks, block)
    m = np.arange(block, dtype=np.float64)
    grow, decay = np.power(a, -m), np.power(a, m)
    zero_state = (1 - a) * decay * np.cumsum(grid * grow, axis=1)
    carry_gain = a * decay  # a^(m+1): how y[s-1] reaches y[s+m]
    carry = np.empty(blocks, dtype=np.float64)  # y just before each block
    y_prev = 0.0
    tail_gain = float(carry_gain[-1])
    for b, tail in enumerate(zero_state[:, -1].tolist()):
        carry[b] = y_prev
        y_prev = tail + tail_gain * y_prev
    return (zero_state + carry[:, None] * carry_gain).ravel()[:n]


def interarrival_jitter_ns(sent_ns: I64, arrival_ns: I64) -> F64:
    """RFC 3550 interarrival jitter after each arrival (ns; 0 at the first arrival).

    RFC 3550 §6.4.1 / A.8: D(i-1, i) = (R_i - R_(i-1)) - (S_i - S_(i-1)) over consecutive
    arrivals, J = J + (|D| - J) / 16, i.e. a first-order IIR filter with pole 15/16 on |D|. The
    clock offset between sender and receiver cancels in D.
    """
    if sent_ns.size < 2:
        return np.zeros(sent_ns.size, dtype=np.float64)
    d = np.diff(arrival_ns) - np.diff(sent_ns)
    jitter = first_order_iir(np.abs(d).astype(np.float64), 1 - JITTER_GAIN)
    return np.concatenate(([0.0], jitter))


def delay_variation_ns(sent_ns: I64, arrival_ns: I64) -> I64:
    """RFC 5481 §4.2 packet delay variation: PDV(i) = D(i) - min_j D(j), per arrival (ns).

    D is the one-way delay arrival - sent; the unknown clock offset between the two ends is
    the same in every D and cancels in the difference.
    """
    delay = arrival_ns - sent_ns
    return delay - delay.min() if delay.size else delay


# --------------------------------------------------------------------------------------------
# Time series for plots


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


def _json_list(values: F64) -> list[float | None]:
    """A float array as a JSON list, NaN -> ``None``."""
    return [None if math.isnan(v) else v for v in values.tolist()]


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
        "loss_rate": _json_list(loss),
        "pdv_mean_ms": _json_list(pdv_mean),
        "pdv_max_ms": _json_list(pdv_max),
        "jitter_ms": _json_list(jitter_at),
    }


# --------------------------------------------------------------------------------------------
# The report sections


def lost_chunks(trace: Trace) -> Bools:
    """First-pass lost mask of a trace, over its chunk indexes."""
    return first_pass_lost(trace.index, trace.pass_no, trace.flags, trace.chunk_count)


def trace_send_times(trace: Trace) -> F64 | None:
    """First-pass send time of each chunk (``chunk_send_times``) on the receiver's time axis.

    Sender times are mapped onto the receiver clock by the smallest one-way delay seen, so a
    chunk's time is the earliest it could have arrived; ns since ``started_ns``.
    """
    if len(trace) == 0:
        return None
    min_delay = int((trace.arrival_ns - trace.sent_ns).min())
    first = first_transmissions(trace.pass_no, trace.flags)
    origin = trace.started_ns - min_delay
    return chunk_send_times(trace.chunk_count, trace.index[first], trace.sent_ns[first], origin)


def _run_section(lengths: I64) -> dict[str, Any]:
    return asdict(run_stats(lengths))


def analyse(trace: Trace) -> dict[str, Any]:
    """The analysis sections of a transfer's report, to merge into the JSON document.

    Returns:
        ``loss`` {ci95, datagram_rate, bursts, gaps, gilbert, rfc3611}, ``reorder``,
        ``duplicates``,
        ``timing`` {jitter_ms, pdv_ms}, ``series`` and ``analysis`` (what was analysed). Plain
        JSON values; ``None`` where undefined. Merged into the core report, ``loss`` and
        ``timing`` extend the core sections of the same name.
    """
    lost = lost_chunks(trace)
    send_ns = trace_send_times(trace)
    if trace.held_before.size:
        # A resumed transfer: chunks that were on disk already were not sent, so neither
        # received nor lost; the analysis runs over the chunks this transfer sent.
        held = np.unpackbits(trace.held_before, bitorder="little")[: lost.size].astype(bool)
        held = np.pad(held, (0, lost.size - held.size))
        if 0 <= trace.chunks_sent < lost.size:
            held[trace.chunks_sent :] = True  # and never sent at all (interrupted)
        keep = ~held
        lost = lost[keep]
        send_ns = np.append(send_ns[:-1][keep], send_ns[-1]) if send_ns is not None else None
    elif 0 <= trace.chunks_sent < lost.size:
        # An interrupted transfer: chunks the sender never sent are not lost.
        lost = lost[: trace.chunks_sent]
        send_ns = send_ns[: trace.chunks_sent + 1] if send_ns is not None else None
    n_lost = int(np.count_nonzero(lost))
    _, loss_lengths = runs(lost)
    _, gap_lengths = runs(~lost)
    ci = wilson_interval(n_lost, lost.size)
    bursts = _run_section(loss_lengths)
    # Mean run length of a memoryless channel with the same loss rate: 1 / (1 - q).
    bursts["bernoulli_mean_length"] = _ratio(lost.size, lost.size - n_lost)
    pdv = delay_variation_ns(trace.sent_ns, trace.arrival_ns).astype(np.float64) / NS_PER_MS
    jitter = interarrival_jitter_ns(trace.sent_ns, trace.arrival_ns) / NS_PER_MS
    pdv_ms: dict[str, float | None] = dict.fromkeys(("p50", "p95", "p99", "max"))
    if pdv.size:
        percentiles = np.percentile(pdv, [50, 95, 99]).tolist()
        pdv_ms.update(zip(("p50", "p95", "p99"), percentiles, strict=True), max=float(pdv.max()))
    first = first_transmissions(trace.pass_no, trace.flags)
    # Every DATA datagram the sender reported, resends included, against those that arrived.
    order = reordering(trace.tx)
    tx_arrived = len(trace) - order.network_duplicates
    sent = trace.tx_sent
    datagram_loss = 1 - tx_arrived / sent if sent > 0 and tx_arrived <= sent else None
    return {
        "loss": {
            "ci95": list(ci) if ci is not None else None,
            "ci_method": "wilson",
            "datagram_rate": datagram_loss,
            "bursts": bursts,
            "gaps": _run_section(gap_lengths),
            "gilbert": {key: _num(v) for key, v in asdict(gilbert_fit(lost)).items()},
            "rfc3611": asdict(rfc3611_bursts(lost, send_ns)),
        },
        "reorder": asdict(order),
        "duplicates": int(np.count_nonzero(trace.flags & DUPLICATE)),
        "timing": {
            "jitter_ms": float(jitter[-1]) if jitter.size else None,
            "pdv_ms": pdv_ms,
        },
        "series": time_series(trace, lost, send_ns, pdv, jitter),
        "analysis": {
            "datagrams": len(trace),
            "chunks": int(lost.size),
            "first_pass_received": int(np.count_nonzero(first)),
            "resent": int(np.count_nonzero(trace.flags & RESENT)),
        },
    }
