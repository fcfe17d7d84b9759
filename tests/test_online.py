"""Online statistics (issue 11): equal to the whole-trace analysis, in bounded memory."""

from __future__ import annotations

import dataclasses
import math
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_analysis import small_reliable_trace, synthetic_trace

from udpxfer.analysis import online_report
from udpxfer.analysis.online_report import replay
from udpxfer.analysis.sections import analyse
from udpxfer.analysis.series import SERIES_MAX_BINS
from udpxfer.analysis.trace import Trace
from udpxfer.analysis.tracefile import COLUMNS, RECORD, TraceReader
from udpxfer.protocol.batch import DataBatch
from udpxfer.protocol.receiver import ReceiverConfig, ReceiverSession
from udpxfer.protocol.receiver_core import EventSink
from udpxfer.protocol.sketch import RELATIVE_ACCURACY, LogHistogram
from udpxfer.protocol.wire import Meta, Mode
from udpxfer.reports.reading import load_report
from udpxfer.reports.report import udp_report

# Keys whose online value equals the batch one exactly; the rest is checked against bounds.
EXACT_LOSS = ("ci95", "ci_method", "datagram_rate", "bursts", "gaps", "gilbert")


def online_sections(trace: Trace, rows: int) -> dict[str, Any]:
    return online_report.sections(
        replay(trace, rows),
        held_before=trace.held_before.tobytes(),
        chunks_sent=trace.chunks_sent,
        tx_sent=trace.tx_sent,
    )


def assert_same_as_batch(trace: Trace, rows: int) -> None:
    batch, online = analyse(trace), online_sections(trace, rows)
    for key in EXACT_LOSS:
        assert online["loss"][key] == batch["loss"][key], key
    rfc_batch, rfc_online = dict(batch["loss"]["rfc3611"]), dict(online["loss"]["rfc3611"])
    for key in ("burst_duration_ms", "gap_duration_ms"):  # from send-time anchors
        a, b = rfc_batch.pop(key), rfc_online.pop(key)
        assert (a is None) == (b is None), key
        # (analyse times a resumed transfer's last period to the file's end, not to the last
        # chunk sent: compared on whole first passes only)
        if a is not None and b is not None and trace.chunks_sent < 0:
            assert b == pytest.approx(a, rel=1e-6, abs=1e-6), key
    assert rfc_online == rfc_batch
    online["reorder"].pop("extent_unknown")
    assert online["reorder"] == batch["reorder"]
    assert online["duplicates"] == batch["duplicates"]
    assert online["analysis"] == batch["analysis"]
    jitter_b, jitter_o = batch["timing"]["jitter_ms"], online["timing"]["jitter_ms"]
    assert (jitter_b is None) == (jitter_o is None)
    if jitter_b is not None:
        assert jitter_o == pytest.approx(jitter_b, rel=1e-9, abs=1e-12)
    pdv_b, pdv_o = batch["timing"]["pdv_ms"], online["timing"]["pdv_ms"]
    assert pdv_o["max"] == pdv_b["max"]
    for key in ("p50", "p95", "p99"):
        if pdv_b[key] is None:
            assert pdv_o[key] is None
            continue
        bound = online["timing"]["pdv_error_ms"][key]
        assert abs(pdv_o[key] - pdv_b[key]) <= bound + 1e-9, (key, pdv_o, pdv_b, bound)
    # The time series: same totals (new bytes, chunks lost), bounded bins.
    series_b, series_o = batch["series"], online["series"]
    assert set(series_o) == set(series_b)
    assert len(series_o["time_s"]) <= SERIES_MAX_BINS
    if series_b["bin_s"] is not None:
        bytes_b = sum(series_b["goodput_bps"]) * series_b["bin_s"]
        bytes_o = sum(series_o["goodput_bps"]) * series_o["bin_s"]
        assert bytes_o == pytest.approx(bytes_b, rel=1e-9)


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    n = draw(st.integers(0, 300))
    kind = draw(st.sampled_from(["random", "none", "all", "bursty"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "none":
        lost = np.zeros(n, dtype=np.bool_)
    elif kind == "all":
        lost = np.ones(n, dtype=np.bool_)
    elif kind == "bursty":
        lost = np.repeat(rng.random(n // 8 + 1) < 0.3, 8)[:n]
    else:
        lost = rng.random(n) < draw(st.sampled_from([0.01, 0.1, 0.5]))
    received = int(n - lost.sum())
    trace = synthetic_trace(
        lost,
        mode=draw(st.sampled_from(["blast", "reliable"])),
        short_tail=draw(st.sampled_from([0, 300])) if n else 0,
        jitter_ns=draw(st.sampled_from([0.0, 5_000.0, 80_000.0])),  # above 10 us: reordered
        duplicates=draw(st.integers(0, min(received, 5))),
        seed=draw(st.integers(0, 1000)),
    )
    if n and draw(st.booleans()):  # an interrupted or resumed transfer
        held = rng.random(n) < 0.2
        trace = dataclasses.replace(
            trace,
            chunks_sent=draw(st.integers(0, n)),
            held_before=np.packbits(held, bitorder="little"),
        )
    return trace


@given(traces(), st.sampled_from([1, 7, 64, 1 << 16]))
@settings(max_examples=150, deadline=None)
def test_online_statistics_equal_the_batch_computation(trace: Trace, rows: int) -> None:
    """All lost, none lost, bursts, reordering, duplicates, resends, interrupted and resumed
    transfers, fed one datagram at a time or in batches: the same report figures."""
    assert_same_as_batch(trace, rows)


def test_online_statistics_of_a_long_bursty_transfer() -> None:
    lost = np.random.default_rng(5).random(60_000) < 0.02
    lost |= np.roll(lost, 1) | np.roll(lost, 2)
    trace = synthetic_trace(lost, mode="reliable", jitter_ns=30_000, duplicates=50, seed=4)
    assert_same_as_batch(trace, 64)


@given(
    st.lists(
        st.one_of(st.integers(-(10**15), 10**15), st.integers(-5, 5), st.just(0)),
        min_size=1,
        max_size=400,
    ),
    st.floats(0.0, 1.0),
)
@example([-4503599628, 0, 0, 0], 1 / 3)
@settings(max_examples=300, deadline=None)
def test_log_histogram_quantiles_within_their_bound(values: list[int], q: float) -> None:
    """Each estimate is within its stated bound of numpy's (linearly interpolated) percentile,
    and the bound is the relative accuracy times the values' magnitude there."""
    data = np.array(values, dtype=np.int64)
    sketch = LogHistogram()
    half = data.size // 2
    sketch.add(data[:half])
    for value in data[half:].tolist():
        sketch.add_same(value, 1)
    [(estimate, bound)] = sketch.quantiles([q])
    exact = float(np.percentile(data, 100 * q))
    # numpy's position q * (n - 1) is rounded: a weight of 1e-16 on a neighbour 4.5e9 away
    # moves an exact 0 to -1e-6, so the slack scales with the values' span.
    rounding = 1e-6 + 1e-12 * float(np.abs(data).max())
    assert abs(estimate - exact) <= bound * (1 + 1e-9) + rounding
    low = np.sort(data)[math.floor(q * (data.size - 1))]
    high = np.sort(data)[math.ceil(q * (data.size - 1))]
    assert bound <= RELATIVE_ACCURACY * max(abs(int(low)), abs(int(high))) * (
        1 + 2.1 * RELATIVE_ACCURACY
    )


# -- traces on disk --------------------------------------------------------------------------


def test_streamed_trace_round_trips(tmp_path: Path) -> None:
    trace = dataclasses.replace(
        small_reliable_trace(), chunks_sent=7, held_before=np.array([0b101], dtype=np.uint8)
    )
    path = trace.save(tmp_path / "run.trace")
    loaded = Trace.load(path)
    for name in (*COLUMNS, "chunk_count", "chunk_size", "file_size", "mode", "started_ns"):
        assert np.array_equal(getattr(loaded, name), getattr(trace, name)), name
    assert (loaded.tx_sent, loaded.chunks_sent) == (trace.tx_sent, trace.chunks_sent)
    assert np.array_equal(loaded.held_before, trace.held_before)
    # Plain numpy reads it: np.load on an open file gives the arrays in order.
    with path.open("rb") as handle:
        header = np.load(handle)
        chunk = np.load(handle)
    assert b"udpxfer.trace/2" in header.tobytes()
    assert chunk.dtype == RECORD
    assert np.array_equal(chunk["tx"], trace.tx)


def test_a_cut_trace_keeps_its_whole_chunks(tmp_path: Path) -> None:
    trace = synthetic_trace(np.zeros(200_000, dtype=np.bool_))
    path = trace.save(tmp_path / "big.trace")
    data = path.read_bytes()
    cut = tmp_path / "cut.trace"
    cut.write_bytes(data[: len(data) // 2])  # a receiver killed mid-transfer
    with cut.open("rb") as handle:
        reader = TraceReader(handle)
        sizes = [chunk.size for chunk in reader.chunks()]
    assert sizes == [1 << 16]  # the first chunk whole, the one cut off left out
    assert reader.footer == {"tx_sent": -1, "chunks_sent": -1}


def test_report_of_a_trace_file_equals_the_in_memory_analysis(tmp_path: Path) -> None:
    lost = np.random.default_rng(2).random(5000) < 0.05
    trace = synthetic_trace(lost, mode="reliable", jitter_ns=20_000, duplicates=9, seed=3)
    doc = load_report(trace.save(tmp_path / "t.trace"))
    batch = analyse(trace)
    for key in EXACT_LOSS:
        assert doc["loss"][key] == batch["loss"][key]
    assert doc["chunks"]["duplicates"] == batch["duplicates"]
    assert doc["reorder"]["count"] == batch["reorder"]["count"]


# -- the receiver's memory -------------------------------------------------------------------

ROWS = 64
CHUNK = 1400


def batch_of(first: int, n: int, tx_first: int, sent_ns: int, skip: int = -1) -> DataBatch:
    rows = np.arange(n, dtype=np.int64)
    index = rows + first
    tx = rows + tx_first
    if skip >= 0:  # one datagram lost inside the buffer: the general path
        keep = rows != skip
        rows, index, tx = np.arange(n - 1, dtype=np.int64), index[keep], tx[keep]
    size = rows.size
    return DataBatch(
        CHUNK + 44,
        rows,
        np.full(size, 7, dtype=np.uint64),
        index,
        tx,
        np.full(size, sent_ns, dtype=np.int64),
        np.zeros(size, dtype=np.uint8),
        np.zeros(size, dtype=np.uint8),
        np.full(size, CHUNK, dtype=np.int64),
        [],
    )


def run_receiver(chunks: int) -> ReceiverSession:
    """A blast transfer of ``chunks`` chunks through the sans-IO receiver, 1 in 50 buffers
    losing a datagram."""
    sink = EventSink()
    session = ReceiverSession("peer", 7, 0.0, ReceiverConfig(), sink)
    meta = Meta(7, "big", chunks * CHUNK, CHUNK, chunks, bytes(32), Mode.BLAST, sent_ns=10**15)
    session.open_validated(meta, 0.0)
    sink.queue.clear()
    now, sent = 0.001, 10**15
    for k, first in enumerate(range(0, chunks, ROWS)):
        n = min(ROWS, chunks - first)
        skip = 5 if k % 50 == 49 and n > 5 else -1
        session.on_data_batch(batch_of(first, n, first, sent, skip), now)
        now += 2e-6 * n
        sent += 2000 * n
    return session


@pytest.mark.timeout(600)
def test_receiver_memory_is_bounded_for_ten_million_chunks() -> None:
    """10^7 chunks (14 GB at 1,400 bytes) through ``on_data_batch`` without sockets: the
    session keeps bits per chunk and fixed-size summaries, never a record per datagram, and
    its report is computed in blocks."""
    chunks = 10**7
    tracemalloc.start()
    try:
        start = time.perf_counter()
        session = run_receiver(chunks)
        elapsed = time.perf_counter() - start
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        doc = udp_report(session, None, datagrams_received=0, datagrams_rejected=0)
        _, report_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    lost = chunks // ROWS // 50
    assert doc["chunks"]["received"] == chunks - lost
    assert doc["loss"]["bursts"]["count"] == lost
    assert doc["loss"]["first_pass_missing"] == lost
    # Two chunk bitmaps, the first-pass bits of the statistics and the transmission bits:
    # 1.25 MB each at 10^7 chunks. The per-datagram trace of before took 340 MB.
    assert kept < 8 << 20, kept
    assert peak < 10 << 20, peak
    assert report_peak < 64 << 20, report_peak  # blocks of the lost mask, not all of it
    print(f"10^7 chunks: {elapsed:.1f} s, kept {kept >> 20} MiB, peak {peak >> 20} MiB, "
          f"report peak {report_peak >> 20} MiB")  # fmt: skip


def test_a_report_of_ten_million_chunks_renders_in_seconds(tmp_path: Path) -> None:
    """10^7 chunks with 100,000 gap ranges: the loss map aggregates per cell from the ranges,
    the summary names a few ranges, and the page stays small."""
    from test_render import make_report

    from udpxfer.reports.render import render_html

    doc = make_report(synthetic_trace(np.random.default_rng(1).random(20_000) < 0.01))
    n = 10**7
    starts = np.sort(np.random.default_rng(2).choice(n - 10, 100_000, replace=False))
    doc["chunks"]["total"] = n
    doc["first_pass_gaps"] = doc["gaps"] = [[int(a), int(a)] for a in starts]
    start = time.perf_counter()
    page = render_html(doc, tmp_path)
    assert time.perf_counter() - start < 30  # about 2 s here; 100 s before
    assert page.stat().st_size < 1 << 20
