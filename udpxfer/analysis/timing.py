"""When datagrams left and arrived: send times, RFC 4737 reordering, RFC 3550 jitter, RFC 5481 PDV.

The clock offset between sender and receiver is unknown; every figure here is one it cancels in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from udpxfer.analysis.loss import first_transmissions
from udpxfer.analysis.trace import Trace
from udpxfer.analysis.values import F64, I64

JITTER_GAIN: Final = 1 / 16  # RFC 3550 §6.4.1: J += (|D| - J) / 16


# --------------------------------------------------------------------------------------------
# First-pass send times


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
