"""Runs of lost and received chunks: their statistics, the memoryless yardstick, RFC 3611."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from udpxfer.analysis.loss import span_mask
from udpxfer.analysis.values import F64, I64, NS_PER_MS, Bools

GMIN: Final = 16  # RFC 3611 §4.7.2: gap threshold recommended for VoIP metrics


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
