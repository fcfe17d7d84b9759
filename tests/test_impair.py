"""The impairment policy, driven with a fake clock and fixed seeds (no sockets)."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udpxfer.errors import MalformedPacket, UsageError
from udpxfer.lab.impair.models import (
    Direction,
    GilbertElliott,
    Impairment,
    JitterDistribution,
    parse_gilbert,
    parse_queue_limit,
    split_by_direction,
)
from udpxfer.lab.impair.policy import ImpairmentPolicy, direction_rng
from udpxfer.lab.impair.records import LOG_COLUMNS, DropCause, classify
from udpxfer.protocol import codec, framing, wire
from udpxfer.units import parse_duration, parse_probability

Released = list[tuple[float, bytes]]  # (release time, datagram)


def numbered(seq: int, size: int = 100) -> bytes:
    """A datagram that says which one it is in its first 8 bytes."""
    return seq.to_bytes(8, "big") + bytes(size - 8)


def number_of(data: bytes) -> int:
    return int.from_bytes(data[:8], "big")


def release_until(policy: ImpairmentPolicy[None], limit: float, out: Released) -> None:
    """Jump the fake clock from deadline to deadline up to ``limit``, collecting releases."""
    last = out[-1][0] if out else -math.inf
    while (deadline := policy.next_deadline()) is not None and deadline <= limit:
        now = max(deadline, last)
        out.extend((now, bytes(data)) for data, _ in policy.due(now))
        last = now


def drive(
    config: Impairment,
    arrivals: list[tuple[float, bytes]],
    *,
    seed: int = 1,
    record: bool = True,
) -> tuple[ImpairmentPolicy[None], Released]:
    """Feed ``arrivals`` (time, datagram) to a policy and release everything, in time order."""
    policy: ImpairmentPolicy[None] = ImpairmentPolicy(
        config, direction_rng(seed, Direction.FORWARD), record=record
    )
    out: Released = []
    for now, data in arrivals:
        release_until(policy, now, out)
        policy.on_datagram(data, now, None)
        out.extend((now, bytes(d)) for d, _ in policy.due(now))
    release_until(policy, math.inf, out)
    assert policy.pending == 0
    return policy, out


def evenly(n: int, interval: float = 1e-4, size: int = 100) -> list[tuple[float, bytes]]:
    return [(i * interval, numbered(i, size)) for i in range(n)]


def within_binomial(observed: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(observed / n - p) < sigmas * math.sqrt(p * (1 - p) / n)


# --- no impairment --------------------------------------------------------------------------


def test_no_impairment_passes_everything_at_once_in_order() -> None:
    policy, out = drive(Impairment(), evenly(100))
    assert not policy.holds_data
    assert [number_of(d) for _, d in out] == list(range(100))
    assert all(t == i * 1e-4 for i, (t, _) in enumerate(out))
    records = policy.take_records()
    assert [r.seq for r in records] == list(range(100))
    assert all(r.delivered and r.delay_s == 0.0 for r in records)
    assert policy.stats.delivered == 100
    assert policy.stats.dropped == 0


# --- loss -----------------------------------------------------------------------------------


def test_random_loss_rate_is_binomial() -> None:
    n, p = 100_000, 0.05
    policy, out = drive(Impairment(loss=p), evenly(n), record=False)
    dropped = policy.stats.dropped_loss
    assert within_binomial(dropped, n, p)
    assert len(out) == n - dropped == policy.stats.delivered


def lost_sequence(config: Impairment, n: int) -> list[bool]:
    policy, _ = drive(config, evenly(n, size=16))
    records = sorted(policy.take_records(), key=lambda r: r.seq)
    return [not r.delivered for r in records]


def bursts(lost: list[bool]) -> list[int]:
    lengths, run = [], 0
    for is_lost in lost:
        if is_lost:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths + ([run] if run else [])


def test_gilbert_elliott_loss_rate_and_mean_burst_length() -> None:
    ge = GilbertElliott(p=0.02, r=0.25)
    lost = lost_sequence(Impairment(gilbert=ge), 200_000)
    rate = sum(lost) / len(lost)
    assert ge.loss_rate == pytest.approx(0.02 / 0.27)
    assert rate == pytest.approx(ge.loss_rate, rel=0.08)
    lengths = bursts(lost)
    # Geometric burst lengths of mean 1/r = 4 (variance (1-r)/r^2 = 12): 4 sigma of the mean.
    assert abs(statistics.fmean(lengths) - 4.0) < 4 * math.sqrt(12 / len(lengths))


def test_gilbert_elliott_with_loss_in_both_states() -> None:
    ge = GilbertElliott(p=0.05, r=0.2, loss_bad=0.5, loss_good=0.01)
    lost = lost_sequence(Impairment(gilbert=ge), 100_000)
    assert ge.loss_rate == pytest.approx(0.2 * 0.5 + 0.8 * 0.01)
    assert sum(lost) / len(lost) == pytest.approx(ge.loss_rate, rel=0.08)


def test_loss_and_gilbert_combine_and_name_their_cause() -> None:
    config = Impairment(loss=0.1, gilbert=GilbertElliott(0.05, 0.5))
    policy, _ = drive(config, evenly(20_000))
    causes = {r.cause for r in policy.take_records() if not r.delivered}
    assert causes == {DropCause.LOSS, DropCause.GILBERT}
    stats = policy.stats
    assert stats.dropped_loss + stats.dropped_gilbert + stats.delivered == 20_000


# --- delay and jitter -----------------------------------------------------------------------


def delays_ms(policy: ImpairmentPolicy[None]) -> list[float]:
    return [r.delay_s * 1e3 for r in policy.take_records() if r.delay_s is not None]


@pytest.mark.parametrize(
    ("distribution", "delay_ms", "jitter_ms", "expected_sd_ms"),
    [
        (JitterDistribution.UNIFORM, 20.0, 5.0, 5.0 / math.sqrt(3)),
        (JitterDistribution.NORMAL, 50.0, 5.0, 5.0),
    ],
)
def test_delay_and_jitter_distribution(
    distribution: JitterDistribution, delay_ms: float, jitter_ms: float, expected_sd_ms: float
) -> None:
    n = 20_000
    config = Impairment(
        delay_s=delay_ms / 1e3,
        jitter_s=jitter_ms / 1e3,
        jitter_distribution=distribution,
        jitter_reorder=True,
    )
    policy, _ = drive(config, evenly(n))
    samples = delays_ms(policy)
    assert len(samples) == n
    assert abs(statistics.fmean(samples) - delay_ms) < 4 * expected_sd_ms / math.sqrt(n)
    assert statistics.stdev(samples) == pytest.approx(expected_sd_ms, rel=0.05)
    assert min(samples) >= 0.0
    if distribution is JitterDistribution.UNIFORM:
        assert delay_ms - jitter_ms <= min(samples) <= max(samples) <= delay_ms + jitter_ms
    assert policy.stats.mean_delay_s * 1e3 == pytest.approx(statistics.fmean(samples))


def test_fixed_delay_shifts_every_datagram() -> None:
    policy, out = drive(Impairment(delay_s=0.02), evenly(50, interval=1e-3))
    assert [number_of(d) for _, d in out] == list(range(50))
    assert all(t == pytest.approx(i * 1e-3 + 0.02) for i, (t, _) in enumerate(out))
    assert policy.holds_data


def test_jitter_keeps_order_by_default() -> None:
    config = Impairment(delay_s=0.01, jitter_s=0.005)
    policy, out = drive(config, evenly(5_000))
    assert [number_of(d) for _, d in out] == list(range(5_000))
    times = [t for t, _ in out]
    assert times == sorted(times)
    # Nothing leaves before its own sample: keeping order can only add delay.
    assert min(delays_ms(policy)) >= 5.0


def test_jitter_reorder_lets_datagrams_overtake() -> None:
    config = Impairment(delay_s=0.01, jitter_s=0.005, jitter_reorder=True)
    _, out = drive(config, evenly(5_000))
    order = [number_of(d) for _, d in out]
    assert sorted(order) == list(range(5_000))
    assert order != sorted(order)
    assert [t for t, _ in out] == sorted(t for t, _ in out)


# --- explicit reordering ---------------------------------------------------------------------


@pytest.mark.parametrize("gap", [1, 3])
def test_reordered_datagram_follows_the_gap_th_later_one(gap: int) -> None:
    n, p = 20_000, 0.05
    policy, out = drive(Impairment(reorder=p, reorder_gap=gap), evenly(n))
    order = [number_of(d) for _, d in out]
    assert sorted(order) == list(range(n))
    reordered = {r.seq for r in policy.take_records() if r.reordered}
    assert within_binomial(len(reordered), n, p)
    assert policy.stats.reordered == len(reordered)
    position = {seq: i for i, seq in enumerate(order)}
    checked = 0
    for seq in reordered:
        followers = range(seq + 1, seq + gap + 1)
        if seq + gap < n and not reordered.intersection(followers):
            # Released right after its gap-th follower (other held ones may share the slot).
            assert position[seq] > position[seq + gap]
            assert position[seq] - position[seq + gap] <= 1 + len(reordered & set(range(seq)))
            assert all(position[f] < position[seq] for f in followers)
            checked += 1
    assert checked > 0.8 * len(reordered)


def test_reorder_swaps_with_the_next_datagram() -> None:
    arrivals = evenly(4)
    config = Impairment(reorder=1.0, reorder_hold_s=1.0)
    policy: ImpairmentPolicy[None] = ImpairmentPolicy(config, direction_rng(0, Direction.FORWARD))
    # Hold every datagram: each is released after the next, the last by its hold timeout.
    out: Released = []
    for now, data in arrivals:
        policy.on_datagram(data, now, None)
        out.extend((now, bytes(d)) for d, _ in policy.due(now))
    assert out == []
    assert policy.next_deadline() == pytest.approx(1.0)
    release_until(policy, math.inf, out)
    assert [number_of(d) for _, d in out] == [0, 1, 2, 3]
    assert [t for t, _ in out] == pytest.approx([1.0, 1.0001, 1.0002, 1.0003])


def test_lone_reordered_datagram_leaves_after_its_hold() -> None:
    config = Impairment(reorder=1.0, reorder_hold_s=0.05)
    policy: ImpairmentPolicy[None] = ImpairmentPolicy(
        config, direction_rng(0, Direction.FORWARD), record=True
    )
    policy.on_datagram(numbered(0), 10.0, None)
    assert policy.due(10.049) == []
    assert policy.next_deadline() == pytest.approx(10.05)
    assert [bytes(d) for d, _ in policy.due(10.05)] == [numbered(0)]
    (record,) = policy.take_records()
    assert record.reordered
    assert record.delay_s == pytest.approx(0.05)


def test_reorder_with_one_follower_inside_the_hold() -> None:
    config = Impairment(reorder=0.5, reorder_hold_s=0.05)
    policy: ImpairmentPolicy[None] = ImpairmentPolicy(config, direction_rng(2, Direction.FORWARD))
    out: Released = []
    for now, data in evenly(200, interval=1e-3):
        release_until(policy, now, out)
        policy.on_datagram(data, now, None)
    release_until(policy, math.inf, out)
    assert sorted(number_of(d) for _, d in out) == list(range(200))
    assert policy.stats.reordered > 50


# --- duplication and corruption ---------------------------------------------------------------


def test_duplicate_sends_an_identical_copy_right_after() -> None:
    n, p = 20_000, 0.1
    policy, out = drive(Impairment(duplicate=p), evenly(n))
    order = [number_of(d) for _, d in out]
    copies = len(order) - n
    assert copies == policy.stats.duplicated
    assert within_binomial(copies, n, p)
    duplicated = {r.seq for r in policy.take_records() if r.duplicated}
    assert len(duplicated) == copies
    for i in range(1, len(order)):
        if order[i] == order[i - 1]:
            assert order[i] in duplicated
    assert sorted(set(order)) == list(range(n))


def data_datagram(index: int, resent: bool = False) -> bytes:
    flags = int(wire.Flags.RESENT) if resent else 0
    return framing.encode_data(0xABCDEF, index, index, bytes(range(200)), flags=flags)


def test_corrupt_flips_exactly_one_bit_and_logs_what_it_was() -> None:
    arrivals = [(i * 1e-4, data_datagram(i, resent=i % 2 == 1)) for i in range(300)]
    policy, out = drive(Impairment(corrupt=1.0), arrivals)
    records = sorted(policy.take_records(), key=lambda r: r.seq)
    assert policy.stats.corrupted == 300
    for (_, sent), (_, got), record in zip(arrivals, out, records, strict=True):
        diff = int.from_bytes(sent, "big") ^ int.from_bytes(got, "big")
        assert diff.bit_count() == 1
        assert record.corrupted
        assert record.corrupt_bit is not None
        assert got[record.corrupt_bit // 8] ^ sent[record.corrupt_bit // 8] == 1 << (
            record.corrupt_bit % 8
        )
        # The record says what the datagram was before the flip; after it, it no longer decodes.
        assert (record.packet_type, record.index, record.resent) == (
            "DATA",
            record.seq,
            record.seq % 2 == 1,
        )
        with pytest.raises(MalformedPacket):
            codec.decode_untrusted(got)


def test_corrupt_rate_is_binomial() -> None:
    n, p = 20_000, 0.02
    policy, out = drive(Impairment(corrupt=p), evenly(n))
    changed = sum(got != numbered(i) for i, (_, got) in enumerate(out))
    assert changed == policy.stats.corrupted
    assert within_binomial(changed, n, p)


# --- rate bottleneck and queue ------------------------------------------------------------------


def test_rate_releases_at_the_bottleneck_rate() -> None:
    # 1250 bytes at 1 Mbit/s take 10 ms: a burst leaves one every 10 ms.
    burst = [(0.0, numbered(i, 1250)) for i in range(5)]
    _, out = drive(Impairment(rate_bps=1_000_000, queue_limit=0), burst)
    assert [t for t, _ in out] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    assert [number_of(d) for _, d in out] == list(range(5))


def test_rate_below_the_bottleneck_adds_only_serialisation() -> None:
    spaced = evenly(20, interval=0.1, size=1250)
    policy, out = drive(Impairment(rate_bps=1_000_000), spaced)
    assert [t for t, _ in out] == pytest.approx([i * 0.1 + 0.01 for i in range(20)])
    assert policy.stats.mean_delay_s == pytest.approx(0.01)


def test_rate_long_run_throughput_matches_the_bottleneck() -> None:
    # Offered at twice the bottleneck rate into an unlimited queue.
    arrivals = evenly(1_000, interval=0.005, size=1250)
    _, out = drive(Impairment(rate_bps=1_000_000, queue_limit=0), arrivals)
    times = [t for t, _ in out]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([0.01] * len(gaps))


def test_rate_then_delay() -> None:
    burst = [(0.0, numbered(i, 1250)) for i in range(3)]
    _, out = drive(Impairment(rate_bps=1_000_000, delay_s=0.1), burst)
    assert [t for t, _ in out] == pytest.approx([0.11, 0.12, 0.13])


def test_tail_drop_at_the_datagram_queue_limit() -> None:
    burst = [(0.0, numbered(i, 1000)) for i in range(50)]
    policy, out = drive(Impairment(rate_bps=1_000_000, queue_limit=10), burst)
    # One in transmission plus ten waiting; the rest are tail-dropped.
    assert [number_of(d) for _, d in out] == list(range(11))
    dropped = sorted(r.seq for r in policy.take_records() if r.cause is DropCause.QUEUE)
    assert dropped == list(range(11, 50))
    assert policy.stats.dropped_queue == 39


def test_tail_drop_at_the_byte_queue_limit_and_recovery() -> None:
    arrivals = [(0.0, numbered(i, 1000)) for i in range(10)]
    # After 0.05 s, 6 datagrams (8 ms each at 1 Mbit/s) have started: room again.
    arrivals += [(0.05, numbered(10 + i, 1000)) for i in range(5)]
    config = Impairment(rate_bps=1_000_000, queue_limit=5000, queue_in_bytes=True)
    policy, out = drive(config, arrivals)
    # One in transmission and 5000 bytes waiting; by 0.05 s the waiting ones have all started.
    assert [number_of(d) for _, d in out] == [*range(6), *range(10, 15)]
    assert policy.stats.dropped_queue == 4


# --- reproducibility and independence -------------------------------------------------------


EVERYTHING = Impairment(
    loss=0.05,
    gilbert=GilbertElliott(0.01, 0.3),
    delay_s=0.005,
    jitter_s=0.002,
    reorder=0.02,
    duplicate=0.02,
    corrupt=0.02,
    rate_bps=50_000_000,
    queue_limit=20,
)


def test_same_seed_same_decisions() -> None:
    arrivals = evenly(5_000, interval=1e-5)
    first, out1 = drive(EVERYTHING, arrivals, seed=42)
    second, out2 = drive(EVERYTHING, arrivals, seed=42)
    other, out3 = drive(EVERYTHING, arrivals, seed=43)
    rows1 = [r.as_row() for r in first.take_records()]
    assert rows1 == [r.as_row() for r in second.take_records()]
    assert out1 == out2
    assert rows1 != [r.as_row() for r in other.take_records()]
    assert out1 != out3


def test_each_model_has_its_own_stream() -> None:
    arrivals = evenly(5_000)
    alone, _ = drive(Impairment(loss=0.1), arrivals, seed=5)
    combined, _ = drive(Impairment(loss=0.1, duplicate=0.3, delay_s=0.01), arrivals, seed=5)

    def lost(policy: ImpairmentPolicy[None]) -> set[int]:
        return {r.seq for r in policy.take_records() if not r.delivered}

    assert lost(alone) == lost(combined)


def test_directions_have_independent_reproducible_streams() -> None:
    forward = [direction_rng(9, Direction.FORWARD).random() for _ in range(2)]
    assert forward == [direction_rng(9, Direction.FORWARD).random() for _ in range(2)]
    assert forward != [direction_rng(9, Direction.REVERSE).random() for _ in range(2)]


def test_direction_selection() -> None:
    lossy = Impairment(loss=0.5)
    assert split_by_direction(lossy, "forward") == {
        Direction.FORWARD: lossy,
        Direction.REVERSE: Impairment(),
    }
    assert split_by_direction(lossy, "reverse") == {
        Direction.FORWARD: Impairment(),
        Direction.REVERSE: lossy,
    }
    assert split_by_direction(lossy, "both") == {
        Direction.FORWARD: lossy,
        Direction.REVERSE: lossy,
    }
    with pytest.raises(UsageError):
        split_by_direction(lossy, "sideways")


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 1500), max_size=60),
    gaps=st.lists(st.floats(0, 0.01), min_size=60, max_size=60),
    loss=st.sampled_from([0.0, 0.3]),
    duplicate=st.sampled_from([0.0, 0.3]),
    reorder=st.sampled_from([0.0, 0.3]),
    jitter=st.sampled_from([0.0, 0.003]),
    rate=st.sampled_from([0, 1_000_000]),
    seed=st.integers(0, 2**32),
)
def test_every_datagram_is_accounted_for(
    sizes: list[int],
    gaps: list[float],
    loss: float,
    duplicate: float,
    reorder: float,
    jitter: float,
    rate: int,
    seed: int,
) -> None:
    config = Impairment(
        loss=loss,
        duplicate=duplicate,
        reorder=reorder,
        delay_s=0.002,
        jitter_s=jitter,
        corrupt=0.1,
        rate_bps=rate,
        queue_limit=5,
    )
    now, arrivals = 0.0, []
    for size, gap in zip(sizes, gaps, strict=False):
        now += gap
        arrivals.append((now, bytes(size)))
    policy, out = drive(config, arrivals, seed=seed)
    stats = policy.stats
    records = policy.take_records()
    assert sorted(r.seq for r in records) == list(range(len(sizes)))
    assert stats.datagrams_in == len(sizes) == stats.delivered + stats.dropped
    assert len(out) == stats.delivered + stats.duplicated
    assert sum(r.delivered for r in records) == stats.delivered
    for record in records:
        assert (record.delay_s is not None) == record.delivered
        assert record.delay_s is None or record.delay_s >= 0.0


# --- records, stats, shutdown ------------------------------------------------------------------


def test_record_rows_have_the_documented_columns() -> None:
    meta = codec.encode(
        wire.Meta(7, "f.bin", 10, 4, 3, bytes(32), wire.Mode.BLAST, copy=2, sent_ns=5)
    )
    arrivals = [(1.0, meta), (1.5, data_datagram(4, resent=True)), (2.0, b"foreign")]
    policy, _ = drive(Impairment(delay_s=0.01), arrivals)
    rows = [r.as_row(epoch=1.0) for r in policy.take_records()]
    assert all(tuple(row) == LOG_COLUMNS for row in rows)
    assert rows[0] == {
        "dir": "forward",
        "seq": 0,
        "t_s": 0.0,
        "size": len(meta),
        "action": "delivered",
        "cause": None,
        "delay_ms": pytest.approx(10.0),
        "duplicated": False,
        "corrupted": False,
        "corrupt_bit": None,
        "reordered": False,
        "type": "META",
        "session": "0000000000000007",
        "index": None,
        "resent": None,
    }
    assert (rows[1]["type"], rows[1]["index"], rows[1]["resent"]) == ("DATA", 4, True)
    assert rows[1]["session"] == f"{0xABCDEF:016x}"
    assert (rows[2]["type"], rows[2]["session"], rows[2]["t_s"]) == (None, None, 1.0)


def test_classify_rejects_damaged_datagrams() -> None:
    damaged = bytearray(data_datagram(1))
    damaged[-1] ^= 0xFF
    assert classify(damaged) == (None, None, None, None)
    assert classify(b"") == (None, None, None, None)


def test_discard_pending_records_shutdown_drops() -> None:
    policy: ImpairmentPolicy[None] = ImpairmentPolicy(
        Impairment(delay_s=1.0, reorder=0.5), direction_rng(0, Direction.FORWARD), record=True
    )
    for now, data in evenly(10):
        policy.on_datagram(data, now, None)
    assert policy.due(0.5) == []
    assert policy.pending == 10
    assert policy.discard_pending() == 10
    assert policy.pending == 0
    assert policy.next_deadline() is None
    records = policy.take_records()
    assert len(records) == 10
    assert all(r.cause is DropCause.SHUTDOWN for r in records)
    assert policy.stats.dropped_shutdown == 10


def test_stats_summary() -> None:
    policy, _ = drive(Impairment(loss=0.5, delay_s=0.002), evenly(1_000), seed=3)
    stats = policy.stats
    line = stats.summary_line()
    assert line.startswith("forward: 1000 in, ")
    assert f"loss {stats.dropped_loss}" in line
    assert "mean delay 2.000 ms" in line
    summary = stats.as_dict()
    assert summary["delivered"] == stats.delivered
    assert summary["dropped"] == {
        "loss": stats.dropped_loss,
        "gilbert": 0,
        "queue": 0,
        "shutdown": 0,
    }


# --- configuration and parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"loss": 1.5},
        {"loss": -0.1},
        {"duplicate": math.nan},
        {"delay_s": -1.0},
        {"jitter_s": math.inf},
        {"reorder_gap": 0},
        {"rate_bps": -1},
        {"queue_limit": -1},
    ],
)
def test_bad_configuration_is_a_usage_error(bad: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        Impairment(**bad)  # type: ignore[arg-type]


def test_bad_gilbert_parameters() -> None:
    with pytest.raises(UsageError, match="gilbert"):
        GilbertElliott(p=0.1, r=1.2)


def test_describe() -> None:
    assert Impairment().describe() == "none"
    text = EVERYTHING.describe()
    for word in (
        "loss 0.05",
        "gilbert p=0.01",
        "delay 5 ms +- 2 ms",
        "reorder",
        "rate 50.0 Mbit/s queue 20 datagrams",
    ):
        assert word in text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("20", 0.02), ("0.5s", 0.5), ("250us", 250e-6), ("250µs", 250e-6)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "-5ms", "5 min", "fast"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "value"), [("0.05", 0.05), ("5%", 0.05), ("1", 1.0), ("0", 0)])
def test_parse_probability(text: str, value: float) -> None:
    assert parse_probability(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["1.5", "150%", "-0.1", "x", "5 %%"])
def test_parse_probability_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="probability"):
        parse_probability(text)


def test_parse_gilbert() -> None:
    assert parse_gilbert("1%,25%") == GilbertElliott(0.01, 0.25)
    assert parse_gilbert("0.01, 0.25, 0.5, 0.001") == GilbertElliott(0.01, 0.25, 0.5, 0.001)
    for bad in ("0.1", "0.1,0.2,0.3,0.4,0.5", "0.1,2"):
        with pytest.raises(UsageError):
            parse_gilbert(bad)


def test_parse_queue_limit() -> None:
    assert parse_queue_limit("100") == (100, False)
    assert parse_queue_limit("64K") == (65536, True)
    assert parse_queue_limit("1500B") == (1500, True)
