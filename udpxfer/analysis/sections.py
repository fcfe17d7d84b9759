"""Trace -> the analysis sections of a transfer's JSON report (loss, reorder, timing, series).

``analyse`` is the whole-trace reference; ``online_report`` gives the same keys from the
receiver's online state.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from udpxfer.analysis.bursts import rfc3611_bursts, run_stats, runs
from udpxfer.analysis.loss import (
    datagram_loss_rate,
    first_transmissions,
    gilbert_fit,
    loss_section,
    lost_chunks,
)
from udpxfer.analysis.series import time_series
from udpxfer.analysis.timing import (
    delay_variation_ns,
    interarrival_jitter_ns,
    reordering,
    trace_send_times,
)
from udpxfer.analysis.trace import DUPLICATE, RESENT, Trace
from udpxfer.analysis.values import I64, NS_PER_MS, ratio


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
    bursts = _run_section(loss_lengths)
    # Mean run length of a memoryless channel with the same loss rate: 1 / (1 - q).
    bursts["bernoulli_mean_length"] = ratio(lost.size, lost.size - n_lost)
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
    return {
        "loss": loss_section(
            n_lost,
            lost.size,
            datagram_loss_rate(tx_arrived, trace.tx_sent),
            (bursts, _run_section(gap_lengths)),
            gilbert_fit(lost),
            asdict(rfc3611_bursts(lost, send_ns)),
        ),
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
