"""``OnlineStats`` -> the report's analysis sections (the keys ``analysis.sections.analyse`` gives).

Runs once, when a transfer ends: one pass over the first-pass bitmap in blocks
(``lossruns.LossRuns``) for the loss runs, Gilbert counts and RFC 3611 bursts, then formatting.
Memory: a block of the mask at a time, whatever the number of chunks.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt

from udpxfer.analysis.bursts import GMIN, RunStats
from udpxfer.analysis.loss import (
    GilbertFit,
    datagram_loss_rate,
    gilbert_elliott_from_counts,
    gilbert_from_counts,
    loss_section,
)
from udpxfer.analysis.lossruns import LossRuns, iter_lost_blocks
from udpxfer.analysis.series import SERIES_MAX_BINS, SERIES_MIN_DATAGRAMS, empty_series
from udpxfer.analysis.values import NS_PER_MS, NS_PER_S, json_list, ratio
from udpxfer.protocol.online import PDV_METHOD, OnlineStats, delay_quantiles

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def run_section(histogram: Counter[int]) -> dict[str, Any]:
    """``bursts.run_stats`` of the lengths a histogram counts (same numbers)."""
    if not histogram:
        return asdict(RunStats(0, None, 0, []))
    lengths = sorted(histogram)
    count = histogram.total()
    total = sum(length * histogram[length] for length in lengths)
    return asdict(RunStats(count, total / count, lengths[-1], [[k, histogram[k]] for k in lengths]))


def _anchors(stats: OnlineStats) -> tuple[F64, F64, float] | None:
    """(chunk index, send time) centroids of the first transmissions in each time bin, and
    the least-squares pace (ns per chunk) over all of them: the sender paces its first pass,
    so send times between and beyond the centroids are close to linear."""
    cols = stats.bins.columns
    count = cols["first"]
    used = count > 0
    if not used.any():
        return None
    xs = np.maximum.accumulate(cols["index_sum"][used] / count[used])
    ys = np.maximum.accumulate(cols["send_sum"][used] / count[used])
    n, si, st, sii, sit = stats.fit.tolist()
    spread = sii - si * si / n
    slope = (sit - si * st / n) / spread if spread > 0 else 0.0
    return xs, ys, slope


def _slot_time(anchors: tuple[F64, F64, float]) -> Any:
    xs, ys, slope = anchors

    def at(index: I64) -> F64:
        grid = index.astype(np.float64)
        out = np.interp(grid, xs, ys)
        out = np.where(grid < xs[0], ys[0] + (grid - xs[0]) * slope, out)
        out = np.where(grid > xs[-1], ys[-1] + (grid - xs[-1]) * slope, out)
        return out

    return at


def sections(
    stats: OnlineStats, *, held_before: bytes = b"", chunks_sent: int = -1, tx_sent: int = -1
) -> dict[str, Any]:
    """The analysis sections of the report (see ``analysis.sections.analyse``) from online state."""
    stats.flush_bins()
    anchors = _anchors(stats)
    slot_time = _slot_time(anchors) if anchors is not None else None
    runs = LossRuns(GMIN, slot_time)
    factor, nbins = _series_shape(stats)
    cols = stats.bins.coarsened(factor)
    bounds, owners = _send_bounds(cols, nbins)
    lost_per_bin = np.zeros(nbins, dtype=np.int64)
    kept_per_bin = np.zeros(nbins, dtype=np.int64)
    first_kept = last_kept = -1
    compressed = False
    for lost, original, start in iter_lost_blocks(
        stats.first_pass.bits, stats.chunk_count, held_before, chunks_sent
    ):
        runs.feed(lost, original)
        if lost.size == 0:
            continue
        where = original if original is not None else None
        positions = np.flatnonzero(lost)
        at = where[positions] if where is not None else positions + start
        first_kept = int(where[0]) if first_kept < 0 and where is not None else first_kept
        first_kept = start if first_kept < 0 else first_kept
        last_kept = int(where[-1]) if where is not None else start + lost.size - 1
        if bounds.size:
            np.add.at(lost_per_bin, owners[np.searchsorted(bounds, at, side="right") - 1], 1)
            if where is not None:
                compressed = True
                np.add.at(kept_per_bin, owners[np.searchsorted(bounds, where, "right") - 1], 1)
    runs.finish()
    if bounds.size and not compressed:
        edges = np.append(bounds, max(last_kept + 1, int(bounds[-1])))
        np.add.at(kept_per_bin, owners, np.maximum(np.diff(edges), 0))
    n, n_lost = runs.n, runs.lost
    bursts = run_section(runs.loss_runs)
    bursts["bernoulli_mean_length"] = ratio(n, n - n_lost)
    p, r, steady = gilbert_from_counts(*runs.transitions())
    ge = gilbert_elliott_from_counts(runs.moments) if n else None
    fit = GilbertFit(p, r, steady)
    if ge is not None:
        fit = GilbertFit(p, r, steady, ge.h, ge.k, ge.ge_p, ge.ge_r, ge.ge_loss)
    order = stats.order
    tx_arrived = stats.datagrams - order.duplicates
    measured = order.count - order.extent_unknown
    pdv, pdv_error = delay_quantiles(stats)
    return {
        "loss": loss_section(
            n_lost,
            n,
            datagram_loss_rate(tx_arrived, tx_sent),
            (bursts, run_section(runs.gap_runs)),
            fit,
            _rfc3611(runs, slot_time, first_kept, last_kept),
        ),
        "reorder": {
            "count": order.count,
            "ratio": order.count / order.unique if order.unique else None,
            "max_extent": order.extent_max,
            "mean_extent": order.extent_sum / measured if measured else None,
            "network_duplicates": order.duplicates,
            "extent_unknown": order.extent_unknown,
        },
        "duplicates": stats.duplicates,
        "timing": {
            "jitter_ms": stats.jitter / NS_PER_MS if stats.datagrams else None,
            "pdv_ms": pdv,
            "pdv_error_ms": pdv_error,
            "pdv_method": PDV_METHOD,
        },
        "series": _series(stats, cols, factor, nbins, lost_per_bin, kept_per_bin),
        "analysis": {
            "datagrams": stats.datagrams,
            "chunks": n,
            "first_pass_received": stats.first_rows,
            "resent": stats.resent,
        },
    }


def _rfc3611(runs: LossRuns, slot_time: Any, first: int, last: int) -> dict[str, Any]:
    """RFC 3611 4.7.2 figures; durations from the send-time anchors (``_anchors``)."""
    b, n = runs.bursts, runs.n
    burst_ms: float | None = None
    gap_ms: float | None = None
    if slot_time is not None:
        burst_ms = b.duration_ns / b.bursts / NS_PER_MS if b.bursts else 0.0
        periods = runs.gap_periods()
        if periods:
            span = slot_time(np.array([first, last + 1], dtype=np.int64))
            gap_ms = (float(span[1] - span[0]) - b.duration_ns) / periods / NS_PER_MS
    return {
        "gmin": runs.gmin,
        "bursts": b.bursts,
        "burst_density": b.burst_lost / b.burst_chunks if b.burst_chunks else 0.0,
        "gap_density": (b.lost - b.burst_lost) / (n - b.burst_chunks)
        if n - b.burst_chunks
        else 0.0,
        "burst_duration_ms": burst_ms,
        "gap_duration_ms": gap_ms,
    }


def _series_shape(stats: OnlineStats) -> tuple[int, int]:
    """(merge factor, bins shown): at most ``SERIES_MAX_BINS`` bins of about
    ``SERIES_MIN_DATAGRAMS`` datagrams or more each, as ``analysis.time_series`` shows."""
    cols = stats.bins.columns
    used_at = np.flatnonzero((cols["datagrams"] > 0) | (cols["first"] > 0))
    used = int(used_at[-1]) + 1 if used_at.size else 0
    target = max(1, min(SERIES_MAX_BINS, stats.datagrams // SERIES_MIN_DATAGRAMS))
    factor = 1
    while math.ceil(used / factor) > target:
        factor *= 2
    return factor, math.ceil(used / factor)


def _send_bounds(cols: dict[str, F64], nbins: int) -> tuple[I64, I64]:
    """First chunk index of each time bin with first transmissions, and those bins: a chunk
    belongs to the last bin whose first index is at or below its own (chunks lost between
    two bins count in the earlier one)."""
    owners = np.flatnonzero(cols["first"][:nbins] > 0)
    bounds = np.maximum.accumulate(cols["first_min"][owners]).astype(np.int64)
    if bounds.size:
        bounds[0] = 0
    return bounds, owners


def _series(
    stats: OnlineStats,
    cols: dict[str, F64],
    factor: int,
    nbins: int,
    lost: I64,
    kept: I64,
) -> dict[str, Any]:
    width = stats.bins.width_ns * factor
    out = empty_series()
    if stats.datagrams == 0 or nbins == 0:
        return out
    count = cols["datagrams"][:nbins]
    floor = stats.delay_min
    pdv_mean = np.full(nbins, np.nan)
    np.divide(cols["delay_sum"][:nbins] - floor * count, count, out=pdv_mean, where=count > 0)
    pdv_max = np.where(count > 0, cols["delay_max"][:nbins] - floor, np.nan)
    loss = np.full(nbins, np.nan)
    np.divide(lost, kept, out=loss, where=kept > 0)
    return {
        **out,
        "bin_s": width / NS_PER_S,
        "time_s": (width * np.arange(nbins) / NS_PER_S).tolist(),
        "goodput_bps": (cols["new_bytes"][:nbins] * 8.0 * (NS_PER_S / width)).tolist(),
        "loss_rate": json_list(loss),
        "pdv_mean_ms": json_list(pdv_mean / NS_PER_MS),
        "pdv_max_ms": json_list(pdv_max / NS_PER_MS),
        "jitter_ms": json_list(np.where(count > 0, cols["jitter"][:nbins], np.nan) / 1e6),
    }


def replay(trace: Any, rows: int = 1 << 16) -> OnlineStats:
    """``OnlineStats`` of a trace's records (anything with the six columns and the scalars),
    fed ``rows`` at a time as a receiver would."""
    stats = OnlineStats(trace.chunk_count, trace.chunk_size, trace.file_size, trace.started_ns)
    for start in range(0, len(trace), rows):
        part = slice(start, start + rows)
        stats.add(
            trace.index[part],
            trace.tx[part],
            trace.sent_ns[part],
            trace.arrival_ns[part],
            trace.pass_no[part],
            trace.flags[part],
        )
    return stats
