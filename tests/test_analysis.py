"""Loss-lab analysis and the trace file: hand-computed cases, large seeded channels, round trips."""

from __future__ import annotations

import array
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpxfer.analysis.bursts import geometric_run_pmf, rfc3611_bursts, run_stats, runs
from udpxfer.analysis.loss import (
    first_pass_lost,
    gilbert_elliott_moments,
    gilbert_fit,
    gilbert_two_state,
    wilson_interval,
)
from udpxfer.analysis.sections import analyse
from udpxfer.analysis.series import SERIES_MAX_BINS
from udpxfer.analysis.timing import (
    chunk_send_times,
    delay_variation_ns,
    first_order_iir,
    interarrival_jitter_ns,
    reordering,
)
from udpxfer.analysis.trace import DUPLICATE, RESENT, Trace
from udpxfer.analysis.values import json_float
from udpxfer.errors import UsageError

Bools = npt.NDArray[np.bool_]
EPOCH_SENDER_NS = 1_700_000_000_000_000_000  # a wall-clock-like sender epoch
EPOCH_RECEIVER_NS = 5_000_000_000  # a monotonic-like receiver epoch


# ----------------------------------------------------------------------------------------------
# Synthetic channels and traces (also used by test_render)


def gilbert_elliott_losses(
    n: int, p: float, r: float, h: float = 0.0, k: float = 1.0, seed: int = 0
) -> Bools:
    """A lost mask from a Gilbert-Elliott channel, simulated through geometric sojourns."""
    rng = np.random.default_rng(seed)
    pairs = int(n * p * r / (p + r) * 1.5) + 64
    sojourns = np.column_stack((rng.geometric(p, pairs), rng.geometric(r, pairs))).ravel()
    states = np.repeat(np.tile(np.array([0, 1], dtype=np.int8), pairs), sojourns)
    start = int(rng.integers(0, 1000))
    states = states[start : start + n]
    assert states.size == n, "simulate more sojourns"
    u = rng.random(n)
    return np.where(states == 1, u >= h, u >= k)


def synthetic_trace(
    lost: Bools,
    *,
    mode: str = "blast",
    chunk_size: int = 1000,
    short_tail: int = 0,
    interval_ns: int = 10_000,
    delay_ns: int = 2_000_000,
    jitter_ns: float = 0.0,
    duplicates: int = 0,
    seed: int = 0,
) -> Trace:
    """A trace of a transfer whose first pass lost exactly ``lost``.

    Chunks are sent every ``interval_ns``; each arrives after ``delay_ns`` plus exponential
    jitter of mean ``jitter_ns``. In reliable mode every lost chunk is resent once after the
    first pass (pass 1, RESENT) and arrives. ``duplicates`` first-pass datagrams arrive twice.
    """
    rng = np.random.default_rng(seed)
    n = lost.size
    index = np.flatnonzero(~lost)
    tx = index.copy()
    pass_no = np.zeros(index.size, dtype=np.uint8)
    flags = np.zeros(index.size, dtype=np.uint8)
    if mode == "reliable":
        resent = np.flatnonzero(lost)
        index = np.concatenate((index, resent))
        tx = np.concatenate((tx, n + np.arange(resent.size)))
        pass_no = np.concatenate((pass_no, np.ones(resent.size, dtype=np.uint8)))
        flags = np.concatenate((flags, np.full(resent.size, RESENT, dtype=np.uint8)))
    if duplicates:
        again = rng.choice(index.size, size=duplicates, replace=False)
        index, tx = np.concatenate((index, index[again])), np.concatenate((tx, tx[again]))
        pass_no = np.concatenate((pass_no, pass_no[again]))
        flags = np.concatenate((flags, flags[again] | DUPLICATE))
    sent = EPOCH_SENDER_NS + tx * interval_ns
    noise = rng.exponential(jitter_ns, index.size) if jitter_ns else np.zeros(index.size)
    arrival = EPOCH_RECEIVER_NS + (tx * interval_ns) + delay_ns + noise.astype(np.int64)
    if duplicates:
        arrival[-duplicates:] += 3 * interval_ns
    order = np.argsort(arrival, kind="stable")
    return Trace(
        index=index[order],
        tx=tx[order],
        sent_ns=sent[order],
        arrival_ns=arrival[order],
        pass_no=pass_no[order],
        flags=flags[order],
        chunk_count=n,
        chunk_size=chunk_size,
        file_size=n * chunk_size - short_tail,
        mode=mode,
        started_ns=int(arrival.min()) if arrival.size else EPOCH_RECEIVER_NS,
        tx_sent=n + (int(lost.sum()) if mode == "reliable" else 0),
    )


def mask(text: str) -> Bools:
    """``"..xx.x"`` -> lost mask (x = lost)."""
    return np.array([c == "x" for c in text], dtype=np.bool_)


# ----------------------------------------------------------------------------------------------
# First-pass loss and Wilson interval


def test_first_pass_lost_ignores_resends_and_counts_never_seen_chunks() -> None:
    index = np.array([0, 2, 3, 2], dtype=np.int64)
    pass_no = np.array([0, 0, 1, 1], dtype=np.uint8)
    flags = np.array([0, 0, RESENT, RESENT | DUPLICATE], dtype=np.uint8)
    lost = first_pass_lost(index, pass_no, flags, 5)
    assert lost.tolist() == [False, True, False, True, True]


@pytest.mark.parametrize(
    ("lost", "total", "expected"),
    [
        (0, 10, (0.0, 0.27753)),  # Wilson's closed form: z²/n / (1 + z²/n)
        (5, 10, (0.23659, 0.76341)),
        (10, 10, (0.72247, 1.0)),
        (1, 100, (0.00177, 0.05449)),
    ],
)
def test_wilson_interval_matches_known_values(
    lost: int, total: int, expected: tuple[float, float]
) -> None:
    interval = wilson_interval(lost, total)
    assert interval is not None
    assert interval == pytest.approx(expected, abs=5e-5)


def test_wilson_interval_of_nothing_is_undefined() -> None:
    assert wilson_interval(0, 0) is None


def test_wilson_interval_covers_a_bernoulli_channels_true_rate() -> None:
    truth, n = 0.01, 200_000
    covered = 0
    for seed in range(10):
        lost = np.random.default_rng(seed).random(n) < truth
        interval = wilson_interval(int(lost.sum()), n)
        assert interval is not None
        low, high = interval
        assert high - low < 0.002
        covered += low <= truth <= high
    assert covered >= 8  # 95% nominal coverage; 8 of 10 leaves room for honest misses


# ----------------------------------------------------------------------------------------------
# Runs


def test_runs_of_lost_and_received_chunks() -> None:
    lost = mask("xx.x..x")
    starts, lengths = runs(lost)
    assert starts.tolist() == [0, 3, 6]
    assert lengths.tolist() == [2, 1, 1]
    starts, lengths = runs(~lost)
    assert starts.tolist() == [2, 4]
    assert lengths.tolist() == [1, 2]


def test_run_stats_histogram_and_mean() -> None:
    stats = run_stats(np.array([2, 1, 1], dtype=np.int64))
    assert stats.count == 3
    assert stats.mean_length == pytest.approx(4 / 3)
    assert stats.max_length == 2
    assert stats.histogram == [[1, 2], [2, 1]]
    empty = run_stats(np.zeros(0, dtype=np.int64))
    assert (empty.count, empty.mean_length, empty.max_length, empty.histogram) == (0, None, 0, [])


def test_geometric_run_pmf_is_the_bernoulli_burst_law() -> None:
    pmf = geometric_run_pmf(0.2, np.array([1, 2, 3], dtype=np.int64))
    assert pmf.tolist() == pytest.approx([0.8, 0.16, 0.032])


@given(st.lists(st.booleans(), max_size=60))
def test_runs_partition_the_sequence(values: list[bool]) -> None:
    lost = np.array(values, dtype=np.bool_)
    _, lost_lengths = runs(lost)
    _, kept_lengths = runs(~lost)
    assert int(lost_lengths.sum()) == int(lost.sum())
    assert int(lost_lengths.sum() + kept_lengths.sum()) == lost.size
    assert abs(lost_lengths.size - kept_lengths.size) <= 1


# ----------------------------------------------------------------------------------------------
# Gilbert / Gilbert-Elliott


def test_gilbert_two_state_counts_transitions() -> None:
    # pairs: .. .x xx x. .x x. ..  -> from received 4 (2 to lost), from lost 3 (2 to received)
    p, r, steady = gilbert_two_state(mask("..xx.x.."))
    assert p == pytest.approx(0.5)
    assert r == pytest.approx(2 / 3)
    assert steady == pytest.approx(0.5 / (0.5 + 2 / 3))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("......", (0.0, None, 0.0)),
        ("xxxx", (None, 0.0, 1.0)),
        ("x", (None, None, None)),
        ("", (None, None, None)),
    ],
)
def test_gilbert_two_state_degenerate_sequences(
    pattern: str, expected: tuple[float | None, float | None, float | None]
) -> None:
    assert gilbert_two_state(mask(pattern)) == expected


def test_gilbert_estimates_on_a_million_chunks_are_within_ten_percent() -> None:
    lost = gilbert_elliott_losses(1_000_000, p=0.01, r=0.25, seed=1)
    fit = gilbert_fit(lost)
    assert fit.p == pytest.approx(0.01, rel=0.1)
    assert fit.r == pytest.approx(0.25, rel=0.1)
    assert fit.steady_state_loss == pytest.approx(0.01 / 0.26, rel=0.1)
    # The simple Gilbert channel is the h=0, k=1 corner of the 4-parameter model.
    assert fit.h is not None
    assert fit.h < 0.03
    assert fit.k is not None
    assert fit.k > 0.998
    assert fit.ge_p == pytest.approx(0.01, rel=0.1)
    assert fit.ge_r == pytest.approx(0.25, rel=0.1)


def test_gilbert_elliott_moments_recover_all_four_parameters() -> None:
    lost = gilbert_elliott_losses(1_000_000, p=0.02, r=0.2, h=0.3, k=0.99, seed=2)
    fit = gilbert_elliott_moments(lost)
    assert fit is not None
    assert fit.h == pytest.approx(0.3, abs=0.05)
    assert fit.k == pytest.approx(0.99, abs=0.003)
    assert fit.ge_p == pytest.approx(0.02, rel=0.15)
    assert fit.ge_r == pytest.approx(0.2, rel=0.15)
    assert fit.ge_loss == pytest.approx(float(lost.mean()), rel=0.02)
    # The two-state counts misread such a channel: losses inside Good inflate p.
    p, _, _ = gilbert_two_state(lost)
    assert p is not None
    assert p > 0.03


def test_gilbert_elliott_is_not_identifiable_on_independent_losses() -> None:
    lost = np.random.default_rng(3).random(200_000) < 0.02
    assert gilbert_elliott_moments(lost) is None
    fit = gilbert_fit(lost)
    assert (fit.h, fit.k) == (None, None)
    assert fit.p == pytest.approx(0.02, rel=0.1)
    assert gilbert_elliott_moments(mask("x.")) is None


# ----------------------------------------------------------------------------------------------
# RFC 3611 burst/gap metrics

# Losses at 10, 12, 13 (a burst over 10..13), a lone loss at 50 (stays in the gap), and 80, 96
# (15 received between them < Gmin: one burst over 80..96).
RFC3611_LOST = np.zeros(100, dtype=np.bool_)
RFC3611_LOST[[10, 12, 13, 50, 80, 96]] = True
MS_SLOTS = np.arange(101, dtype=np.float64) * 1e6  # one chunk per millisecond


def test_rfc3611_bursts_with_gmin_16() -> None:
    result = rfc3611_bursts(RFC3611_LOST, MS_SLOTS)
    assert result.bursts == 2
    assert result.burst_density == pytest.approx(5 / 21)  # 5 lost in 4 + 17 chunks
    assert result.gap_density == pytest.approx(1 / 79)
    assert result.burst_duration_ms == pytest.approx((4 + 17) / 2)
    assert result.gap_duration_ms == pytest.approx((10 + 66 + 3) / 3)


def test_rfc3611_gap_of_exactly_gmin_received_ends_a_burst() -> None:
    result = rfc3611_bursts(RFC3611_LOST, MS_SLOTS, gmin=15)
    assert result.bursts == 1
    assert result.burst_density == pytest.approx(3 / 4)
    assert result.gap_density == pytest.approx(3 / 96)
    lone = rfc3611_bursts(mask("x" + "." * 16 + "x"), None)
    assert (lone.bursts, lone.burst_density) == (0, 0.0)
    assert lone.gap_density == pytest.approx(2 / 18)
    assert (lone.burst_duration_ms, lone.gap_duration_ms) == (None, None)


def test_rfc3611_without_loss_is_one_long_gap() -> None:
    result = rfc3611_bursts(np.zeros(100, dtype=np.bool_), MS_SLOTS)
    assert (result.bursts, result.burst_density, result.gap_density) == (0, 0.0, 0.0)
    assert result.burst_duration_ms == 0.0
    assert result.gap_duration_ms == pytest.approx(100.0)


def _rfc3611_reference(lost: list[bool], gmin: int) -> tuple[int, float, float]:
    """Literal reading of RFC 3611 §4.7.2, one chunk at a time."""
    losses = [i for i, v in enumerate(lost) if v]
    clusters: list[list[int]] = []
    for i in losses:
        if clusters and i - clusters[-1][-1] - 1 < gmin:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    bursts = [c for c in clusters if len(c) >= 2]
    in_burst = sum(c[-1] - c[0] + 1 for c in bursts)
    burst_lost = sum(len(c) for c in bursts)
    gap = len(lost) - in_burst
    return (
        len(bursts),
        burst_lost / in_burst if in_burst else 0.0,
        (len(losses) - burst_lost) / gap if gap else 0.0,
    )


@given(st.lists(st.booleans(), max_size=80), st.integers(1, 5))
def test_rfc3611_matches_a_literal_reading(values: list[bool], gmin: int) -> None:
    result = rfc3611_bursts(np.array(values, dtype=np.bool_), None, gmin=gmin)
    bursts, burst_density, gap_density = _rfc3611_reference(values, gmin)
    assert result.bursts == bursts
    assert result.burst_density == pytest.approx(burst_density)
    assert result.gap_density == pytest.approx(gap_density)


def test_chunk_send_times_interpolate_lost_chunks_and_extrapolate_the_ends() -> None:
    times = chunk_send_times(
        6, np.array([1, 2, 4], dtype=np.int64), np.array([110, 120, 140], dtype=np.int64), 100
    )
    assert times is not None
    assert times.tolist() == pytest.approx([0, 10, 20, 30, 40, 50, 60])
    empty = np.zeros(0, dtype=np.int64)
    assert chunk_send_times(6, empty, empty, 0) is None


# ----------------------------------------------------------------------------------------------
# Reordering and duplicates


def _seq(*values: int) -> npt.NDArray[np.int64]:
    return np.array(values, dtype=np.int64)


def test_reordering_rfc4737_single_late_packet() -> None:
    result = reordering(_seq(0, 1, 3, 4, 2, 5, 6))
    assert result.count == 1
    assert result.ratio == pytest.approx(1 / 7)
    assert result.max_extent == 2  # 2 arrived 2 places after 3, the first larger number
    assert result.network_duplicates == 0


def test_reordering_sets_duplicates_aside() -> None:
    result = reordering(_seq(0, 1, 3, 4, 2, 2, 5, 6, 6))
    assert (result.count, result.max_extent, result.network_duplicates) == (1, 2, 2)
    assert result.ratio == pytest.approx(1 / 7)


def test_reordering_extent_grows_behind_an_early_packet() -> None:
    result = reordering(_seq(5, 0, 1, 2, 3, 4))
    assert result.count == 5
    assert result.max_extent == 5
    assert result.mean_extent == pytest.approx(3.0)
    in_order = reordering(_seq(0, 1, 2))
    assert (in_order.count, in_order.ratio, in_order.max_extent) == (0, 0.0, 0)
    nothing = reordering(_seq())
    assert (nothing.count, nothing.ratio, nothing.max_extent) == (0, None, 0)


def _reorder_reference(seq: list[int]) -> tuple[int, int]:
    """RFC 4737 §3.3 and §4.2.1, one packet at a time."""
    unique = list(dict.fromkeys(seq))
    next_exp, count, extent = -1, 0, 0
    for j, s in enumerate(unique):
        if j and s < next_exp:
            count += 1
            extent = max(extent, j - next(i for i in range(j) if unique[i] > s))
        else:
            next_exp = s + 1
    return count, extent


@given(st.lists(st.integers(0, 30), max_size=60))
def test_reordering_matches_the_rfc_loop(values: list[int]) -> None:
    result = reordering(np.array(values, dtype=np.int64))
    assert (result.count, result.max_extent) == _reorder_reference(values)


# ----------------------------------------------------------------------------------------------
# Jitter and delay variation


def test_rfc3550_jitter_by_hand() -> None:
    ms = 1_000_000
    sent = _seq(0, 10, 20, 30) * ms
    arrival = _seq(100, 112, 120, 131) * ms  # transit 100, 102, 100, 101 -> |D| = 2, 2, 1
    jitter = interarrival_jitter_ns(sent, arrival) / ms
    assert jitter.tolist() == pytest.approx([0.0, 0.125, 0.2421875, 0.28955078125])
    steady = interarrival_jitter_ns(sent, sent + 7 * ms)
    assert steady.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert interarrival_jitter_ns(_seq(1), _seq(2)).tolist() == [0.0]


@pytest.mark.parametrize("pole", [0.0, 0.5, 15 / 16, 0.999])
@pytest.mark.parametrize("n", [1, 213, 5000])
def test_first_order_iir_equals_the_recursion(pole: float, n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n) * 1e6
    expected = np.empty(n)
    y = 0.0
    for i, value in enumerate(x.tolist()):
        y = pole * y + (1 - pole) * value
        expected[i] = y
    assert first_order_iir(x, pole) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_first_order_iir_rejects_an_unstable_pole() -> None:
    with pytest.raises(ValueError, match="pole"):
        first_order_iir(np.ones(3), 1.0)


def test_pdv_is_delay_above_the_minimum() -> None:
    sent = _seq(0, 10, 20, 30)
    pdv = delay_variation_ns(sent, sent + _seq(5, 3, 4, 10) + 10**15)
    assert pdv.tolist() == [2, 0, 1, 7]


# ----------------------------------------------------------------------------------------------
# analyse(): the report sections


def small_reliable_trace() -> Trace:
    """10 chunks of 100 bytes (last 50) sent every 10 ms; 3 and 4 lost, resent; 5 duplicated."""
    lost = mask("...xx.....")
    return synthetic_trace(
        lost,
        mode="reliable",
        chunk_size=100,
        short_tail=50,
        interval_ns=10_000_000,
        delay_ns=1_000_000,
    )


def test_analyse_small_reliable_transfer() -> None:
    trace = small_reliable_trace()
    doc = analyse(trace)
    json.dumps(doc, allow_nan=False)
    loss = doc["loss"]
    assert loss["ci95"] == pytest.approx(list(wilson_interval(2, 10) or ()))
    assert loss["datagram_rate"] == pytest.approx(2 / 12)  # 12 sent, 10 arrived
    assert loss["bursts"] == {
        "count": 1,
        "mean_length": 2.0,
        "max_length": 2,
        "histogram": [[2, 1]],
        "bernoulli_mean_length": pytest.approx(1.25),
    }
    assert loss["gaps"]["histogram"] == [[3, 1], [5, 1]]
    assert loss["gilbert"]["p"] == pytest.approx(1 / 7)
    assert loss["gilbert"]["r"] == pytest.approx(1 / 2)
    assert loss["rfc3611"]["bursts"] == 1
    assert loss["rfc3611"]["burst_duration_ms"] == pytest.approx(20.0)
    assert doc["reorder"] == {
        "count": 0,
        "ratio": 0.0,
        "max_extent": 0,
        "mean_extent": None,
        "network_duplicates": 0,
    }
    assert doc["duplicates"] == 0
    assert doc["timing"]["jitter_ms"] == pytest.approx(0.0)
    assert doc["timing"]["pdv_ms"] == {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    assert doc["analysis"] == {
        "datagrams": 10,
        "chunks": 10,
        "first_pass_received": 8,
        "resent": 2,
    }


def test_analyse_series_accounts_for_every_byte_and_loss() -> None:
    doc = analyse(small_reliable_trace())
    series = doc["series"]
    n = len(series["time_s"])
    assert 1 <= n <= SERIES_MAX_BINS
    assert all(len(series[key]) == n for key in ("goodput_bps", "loss_rate", "pdv_max_ms"))
    assert sum(series["goodput_bps"]) * series["bin_s"] / 8 == pytest.approx(950)
    rates = [v for v in series["loss_rate"] if v is not None]
    # Ten datagrams are fewer than SERIES_MIN_DATAGRAMS: one bin, from 0, holds them all.
    assert rates == [pytest.approx(0.2)]
    assert series["time_s"] == [0.0]


def test_analyse_counts_duplicates_and_jitter() -> None:
    lost = np.zeros(2000, dtype=np.bool_)
    trace = synthetic_trace(lost, jitter_ns=30_000, duplicates=5, seed=4)
    doc = analyse(trace)
    assert doc["duplicates"] == 5
    assert doc["reorder"]["network_duplicates"] == 5
    assert doc["reorder"]["count"] > 0
    pdv = doc["timing"]["pdv_ms"]
    assert 0 < pdv["p50"] <= pdv["p95"] <= pdv["p99"] <= pdv["max"]
    # Exponential jitter of mean 30 us on a 10 us grid: |D| is a few tens of microseconds.
    assert 0.01 < doc["timing"]["jitter_ms"] < 0.1


@pytest.mark.parametrize("chunks", [0, 1, 5])
def test_analyse_empty_traces_do_not_crash(chunks: int) -> None:
    trace = synthetic_trace(np.ones(chunks, dtype=np.bool_))
    doc = analyse(trace)
    json.dumps(doc, allow_nan=False)
    assert doc["timing"]["jitter_ms"] is None
    assert doc["series"]["time_s"] == []
    assert doc["reorder"]["ratio"] is None
    assert doc["loss"]["datagram_rate"] == (1.0 if chunks else None)
    if chunks:
        assert doc["loss"]["bursts"]["max_length"] == chunks
        assert doc["loss"]["gilbert"]["steady_state_loss"] in (None, 1.0)
        assert doc["loss"]["bursts"]["bernoulli_mean_length"] is None
    else:
        assert doc["loss"]["ci95"] is None
        assert doc["loss"]["bursts"]["count"] == 0


def test_analyse_single_datagram() -> None:
    doc = analyse(synthetic_trace(mask(".")))
    json.dumps(doc, allow_nan=False)
    assert doc["loss"]["ci95"][0] == pytest.approx(0.0, abs=1e-12)
    assert doc["timing"]["jitter_ms"] == 0.0
    assert len(doc["series"]["time_s"]) == 1


def test_analyse_a_million_datagrams_quickly() -> None:
    lost = gilbert_elliott_losses(1_050_000, p=0.01, r=0.25, seed=5)
    trace = synthetic_trace(lost, jitter_ns=20_000, seed=5)
    assert len(trace) > 1_000_000
    started = time.perf_counter()
    doc = analyse(trace)
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0  # about 0.3 s on a laptop; generous for loaded CI machines
    assert doc["loss"]["gilbert"]["p"] == pytest.approx(0.01, rel=0.1)
    assert doc["loss"]["gilbert"]["r"] == pytest.approx(0.25, rel=0.1)
    assert 50 <= len(doc["series"]["time_s"]) <= SERIES_MAX_BINS
    json.dumps(doc, allow_nan=False)


# ----------------------------------------------------------------------------------------------
# Trace: construction, buffers, save/load


def test_trace_save_load_round_trip(tmp_path: Path) -> None:
    trace = small_reliable_trace()
    path = trace.save(tmp_path / "run.trace")
    assert path == tmp_path / "run.trace"  # the name is kept, no .npz appended
    loaded = Trace.load(path)
    for name in ("index", "tx", "sent_ns", "arrival_ns", "pass_no", "flags"):
        assert np.array_equal(getattr(loaded, name), getattr(trace, name))
        assert getattr(loaded, name).dtype == getattr(trace, name).dtype
    for name in ("chunk_count", "chunk_size", "file_size", "mode", "tx_sent", "started_ns"):
        assert getattr(loaded, name) == getattr(trace, name)
    assert analyse(loaded) == analyse(trace)


def _npz(path: Path, **members: object) -> Path:
    with path.open("wb") as handle:
        np.savez(handle, **members)  # type: ignore[arg-type]
    return path


def _text_file(directory: Path) -> Path:
    path = directory / "notes.trace"
    path.write_text("not a zip\n")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.npz", "cannot read trace"),
        (_text_file, "bad trace file"),
        (lambda d: _npz(d / "other.npz", x=np.arange(3)), "not a udpxfer.trace/1"),
        (lambda d: _npz(d / "old.npz", format=np.array("udpxfer.trace/0")), "not a udpxfer"),
        (lambda d: _npz(d / "part.npz", format=np.array("udpxfer.trace/1")), "missing"),
    ],
)
def test_trace_load_rejects_foreign_files(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    with pytest.raises(UsageError, match=message) as info:
        Trace.load(make(tmp_path))
    assert "\n" not in str(info.value)


def _legacy_members(trace: Trace) -> dict[str, Any]:
    """The members of a ``udpxfer.trace/1`` archive (the earlier .npz format)."""
    members: dict[str, Any] = {"format": np.array("udpxfer.trace/1"), "mode": np.array(trace.mode)}
    for name in ("index", "tx", "sent_ns", "arrival_ns", "pass_no", "flags"):
        members[name] = getattr(trace, name)
    for name in ("chunk_count", "chunk_size", "file_size", "tx_sent", "started_ns"):
        members[name] = np.array(getattr(trace, name), dtype=np.int64)
    return members


def test_earlier_npz_traces_still_load(tmp_path: Path) -> None:
    trace = small_reliable_trace()
    loaded = Trace.load(_npz(tmp_path / "old.npz", **_legacy_members(trace)))
    assert np.array_equal(loaded.arrival_ns, trace.arrival_ns)
    assert analyse(loaded) == analyse(trace)


def test_trace_load_rejects_npy_truncated_and_inconsistent_files(tmp_path: Path) -> None:
    npy = tmp_path / "a.npy"
    np.save(npy, np.arange(4))
    good = small_reliable_trace().save(tmp_path / "good.trace")
    truncated = tmp_path / "cut.trace"
    truncated.write_bytes(good.read_bytes()[:40])  # inside the header
    members = _legacy_members(small_reliable_trace())
    members["index"] = members["index"][:-1]
    short = _npz(tmp_path / "short.trace", **members)
    members = {**members, "index": np.arange(10), "mode": np.array("carrier-pigeon")}
    badmode = _npz(tmp_path / "mode.trace", **members)
    for path in (npy, truncated, short, badmode):
        with pytest.raises(UsageError, match="bad trace file"):
            Trace.load(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"index": np.array([0, 1, 2])}, "rows"),
        ({"index": np.array([0, 7])}, "outside"),
        ({"pass_no": np.array([0, 300])}, "outside uint8"),
        ({"sent_ns": np.array([0.5, 1.5])}, "integers"),
        ({"mode": "turbo"}, "mode"),
        ({"tx": np.zeros((2, 1), dtype=np.int64)}, "1-D"),
    ],
)
def test_trace_rejects_inconsistent_columns(change: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "index": np.array([0, 1]),
        "tx": np.array([0, 1]),
        "sent_ns": np.array([0, 1]),
        "arrival_ns": np.array([5, 6]),
        "pass_no": np.array([0, 0]),
        "flags": np.array([0, 0]),
        "chunk_count": 2,
        "chunk_size": 10,
        "file_size": 20,
        "mode": "blast",
        "started_ns": 5,
    }
    with pytest.raises(ValueError, match=message):
        Trace(**{**fields, **change})  # type: ignore[arg-type]


class Recorder:
    """The receiver's way of recording: one ``array.array`` per column."""

    def __init__(self) -> None:
        self.index, self.tx = array.array("q"), array.array("q")
        self.sent_ns, self.arrival_ns = array.array("q"), array.array("q")
        self.pass_no, self.flags = array.array("B"), array.array("B")

    def record(self, *row: int) -> None:
        for column, value in zip(
            (self.index, self.tx, self.sent_ns, self.arrival_ns, self.pass_no, self.flags),
            row,
            strict=True,
        ):
            column.append(value)


def test_trace_from_recorder_shares_memory_and_is_read_only() -> None:
    recorder = Recorder()
    for i in range(3):
        recorder.record(i, i, 100 * i, 100 * i + 7, 0, 0)
    recorder.record(1, 3, 300, 420, 1, RESENT | DUPLICATE)
    trace = Trace.from_recorder(
        recorder, chunk_count=3, chunk_size=10, file_size=25, mode="reliable", started_ns=7
    )
    assert len(trace) == 4
    assert trace.pass_no.tolist() == [0, 0, 0, 1]
    assert np.shares_memory(trace.arrival_ns, np.frombuffer(recorder.arrival_ns, np.int64))
    assert trace.chunk_bytes(np.arange(3, dtype=np.int64)).tolist() == [10, 10, 5]
    with pytest.raises(ValueError, match="read-only"):
        trace.index[0] = 2
    with pytest.raises(BufferError):
        recorder.record(2, 4, 0, 0, 0, 0)


def test_trace_from_buffers_converts_other_integer_types() -> None:
    ints = array.array("i", [0, 1])
    trace = Trace.from_buffers(
        index=ints,
        tx=ints,
        sent_ns=array.array("l", [0, 1]),
        arrival_ns=array.array("q", [2, 3]),
        pass_no=array.array("B", [0, 0]),
        flags=array.array("H", [0, 0]),
        chunk_count=2,
        chunk_size=1,
        file_size=2,
        mode="blast",
        started_ns=2,
    )
    assert trace.index.dtype == np.int64
    assert trace.flags.dtype == np.uint8
    with pytest.raises(ValueError, match="typecode"):
        Trace.from_buffers(
            index=array.array("d", [0.0]),  # type: ignore[arg-type]
            tx=ints,
            sent_ns=ints,
            arrival_ns=ints,
            pass_no=array.array("B"),
            flags=array.array("B"),
            chunk_count=1,
            chunk_size=1,
            file_size=1,
            mode="blast",
            started_ns=0,
        )


def test_json_numbers_are_finite() -> None:
    assert json_float(math.nan) is None
    assert json_float(math.inf) is None
    assert json_float(np.float64(2.5)) == 2.5
