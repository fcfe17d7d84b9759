"""Pacer, RTT estimator and delay-based window on a fake clock: plain numbers in, numbers out."""

from __future__ import annotations

import itertools
import math

import pytest

from udpxfer.pacing import DelayWindow, Pacer, RttEstimator


def run_pacer(pacer: Pacer, size: int, start: float, end: float) -> list[float]:
    """Release ``size``-byte datagrams as fast as the pacer allows in ``[start, end)``.

    The fake clock jumps to ``next_release()`` whenever the pacer holds back.
    """
    releases: list[float] = []
    now = start
    for _ in range(1_000_000):
        if now >= end:
            return releases
        if pacer.ready(now):
            pacer.consume(size)
            releases.append(now)
        else:
            wake = pacer.next_release()
            assert wake is not None
            assert wake > now
            now = wake
    raise AssertionError("the pacer never got past the end of the second")


def burst_at(pacer: Pacer, now: float, size: int) -> int:
    """How many ``size``-byte datagrams the pacer lets out at the one instant ``now``."""
    released = 0
    while pacer.ready(now):
        pacer.consume(size)
        released += 1
    return released


def capacity(rate_bps: int, burst_s: float = 0.002, min_burst: int = 3000) -> float:
    return max(float(min_burst), rate_bps / 8 * burst_s)


# (rate in bit/s, datagram bytes)
RATES = [(8_000_000, 1000), (100_000_000, 1400), (1_000_000_000, 1472), (2_400_000, 100)]


@pytest.mark.parametrize(("rate_bps", "size"), RATES)
def test_pacer_releases_at_the_rate_over_a_second(rate_bps: int, size: int) -> None:
    pacer = Pacer(rate_bps, now=100.0)
    releases = run_pacer(pacer, size, 100.0, 101.0)
    released = len(releases) * size
    per_second = rate_bps / 8
    # One second's worth, plus the full bucket at the start, plus one datagram of overdraft.
    assert per_second <= released <= per_second + capacity(rate_bps) + size
    # After the initial burst, datagrams leave evenly spaced at the rate.
    steady = [t for t in releases if t >= 100.5]
    assert len(steady) * size == pytest.approx(per_second / 2, abs=size)
    gaps = [b - a for a, b in itertools.pairwise(steady)]
    assert min(gaps) == pytest.approx(size / per_second, rel=1e-6)
    assert max(gaps) == pytest.approx(size / per_second, rel=1e-6)


@pytest.mark.parametrize(("rate_bps", "size"), RATES)
def test_pacer_bursts_no_more_than_the_bucket_after_idle(rate_bps: int, size: int) -> None:
    pacer = Pacer(rate_bps, now=0.0)
    run_pacer(pacer, size, 0.0, 0.1)
    idle_until = 10.0  # long enough to refill the bucket thousands of times over
    assert burst_at(pacer, idle_until, size) == math.ceil(capacity(rate_bps) / size)
    wake = pacer.next_release()
    assert wake is not None
    assert wake > idle_until


@pytest.mark.parametrize(
    ("pacer", "released"),
    [
        pytest.param(Pacer(8_000_000, now=0.0, burst_s=0.01), 10, id="10 ms of 1 MB/s"),
        pytest.param(Pacer(8_000, now=0.0, min_burst=5000), 5, id="min_burst at a low rate"),
    ],
)
def test_pacer_starts_with_a_full_bucket(pacer: Pacer, released: int) -> None:
    assert burst_at(pacer, 0.0, 1000) == released


def test_pacer_ignores_a_clock_that_goes_back() -> None:
    pacer = Pacer(8_000_000, now=10.0)
    assert burst_at(pacer, 10.0, 1000) == 3
    assert not pacer.ready(9.0)
    assert not pacer.ready(10.0)
    wake = pacer.next_release()
    assert wake is not None
    assert pacer.ready(wake)


def test_pacer_next_release_is_none_while_tokens_remain() -> None:
    pacer = Pacer(8_000_000, now=0.0)
    assert pacer.ready(0.0)
    assert pacer.next_release() is None


def test_unpaced_is_always_ready() -> None:
    pacer = Pacer(0, now=0.0)
    for step in range(10_000):
        assert pacer.ready(step * 1e-9)
        pacer.consume(65_000)
        assert pacer.next_release() is None
    assert pacer.ready(0.0)


# --- RttEstimator (RFC 6298) ----------------------------------------------------------------


def test_rtt_before_any_sample_uses_the_initial_timeout() -> None:
    assert RttEstimator().rto_s == 0.5
    assert RttEstimator(initial_rto_s=1.0).rto_s == 1.0
    assert RttEstimator(initial_rto_s=10.0, max_rto_s=2.0).rto_s == 2.0
    assert RttEstimator().srtt_s is None


def test_rtt_first_sample() -> None:
    rtt = RttEstimator()
    rtt.sample(0.1)
    assert rtt.srtt_s == pytest.approx(0.1)
    assert rtt.rttvar_s == pytest.approx(0.05)
    assert rtt.rto_s == pytest.approx(0.1 + 4 * 0.05)


def test_rtt_smoothing_follows_rfc_6298() -> None:
    rtt = RttEstimator()
    rtt.sample(0.1)
    rtt.sample(0.2)
    # RTTVAR first, with the old SRTT: 3/4 * 0.05 + 1/4 * |0.1 - 0.2|
    assert rtt.rttvar_s == pytest.approx(0.0625)
    assert rtt.srtt_s == pytest.approx(7 / 8 * 0.1 + 1 / 8 * 0.2)
    assert rtt.rto_s == pytest.approx(0.1125 + 4 * 0.0625)


def test_rtt_converges_on_a_steady_path() -> None:
    rtt = RttEstimator()
    rtt.sample(0.3)
    for _ in range(200):
        rtt.sample(0.08)
    assert rtt.srtt_s == pytest.approx(0.08)
    assert rtt.rttvar_s == pytest.approx(0.0, abs=1e-9)
    assert rtt.rto_s == pytest.approx(0.08)


def test_rtt_ignores_negative_samples() -> None:
    rtt = RttEstimator()
    rtt.sample(-0.1)
    assert rtt.srtt_s is None
    rtt.sample(0.1)
    rtt.sample(-5.0)
    assert rtt.srtt_s == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("sample_s", "expected_rto_s"),
    [(0.0001, 0.05), (0.01, 0.05), (0.02, 0.06), (0.5, 1.5), (5.0, 2.0)],
)
def test_rto_is_clamped(sample_s: float, expected_rto_s: float) -> None:
    rtt = RttEstimator(min_rto_s=0.05, max_rto_s=2.0)
    rtt.sample(sample_s)
    assert rtt.rto_s == pytest.approx(expected_rto_s)


def test_backoff_doubles_up_to_the_maximum_and_resets_on_a_sample() -> None:
    rtt = RttEstimator(max_rto_s=2.0)
    rtt.sample(0.1)  # RTO 0.3
    timeouts = []
    for _ in range(4):
        rtt.back_off()
        timeouts.append(rtt.rto_s)
    assert timeouts == pytest.approx([0.6, 1.2, 2.0, 2.0])
    rtt.sample(0.1)
    assert rtt.backoff == 1
    assert rtt.rto_s < 0.6


def test_backoff_doubles_the_clamped_minimum_and_stops_at_64() -> None:
    rtt = RttEstimator(min_rto_s=0.05, max_rto_s=100.0)
    rtt.sample(0.001)  # RTO clamped to 0.05
    rtt.back_off()
    assert rtt.rto_s == pytest.approx(0.1)
    for _ in range(20):
        rtt.back_off()
    assert rtt.backoff == 64
    assert rtt.rto_s == pytest.approx(0.05 * 64)


# --- DelayWindow (Vegas-style) ---------------------------------------------------------------

BASE = 0.010  # base round trip: 10 ms


def test_window_grows_by_half_of_each_ack_in_slow_start() -> None:
    window = DelayWindow(initial=32)
    window.on_ack(10, BASE)
    assert window.cwnd == 37
    assert window.slow_start
    window.on_ack(10, BASE * 1.1)  # a queue of 32 * (1 - 1/1.1) = 2.9 < alpha: still small
    assert window.cwnd == 42
    assert window.slow_start


def test_window_leaves_slow_start_at_the_limit() -> None:
    window = DelayWindow(initial=32, slow_start_limit=64)
    sizes = []
    while window.slow_start:
        window.on_ack(20, BASE)
        sizes.append(window.cwnd)
    assert sizes == [42, 52, 62, 72]
    window.on_ack(72, BASE)  # a window's worth acknowledged: about two more per round trip
    assert window.cwnd == pytest.approx(74)
    assert not window.slow_start


def test_window_holds_and_leaves_slow_start_between_alpha_and_beta() -> None:
    window = DelayWindow(initial=60, alpha=16, beta=48, samples=4, slow_start_limit=1000)
    window.on_ack(0, BASE)
    for _ in range(3):
        window.on_ack(10, 2 * BASE)  # the older BASE sample is still the recent minimum
    assert window.cwnd == 75
    assert window.slow_start
    window.on_ack(10, 2 * BASE)  # BASE aged out: a standing queue of 75 / 2, alpha..beta
    assert window.cwnd == 75
    assert not window.slow_start


def test_window_ignores_one_late_sample() -> None:
    window = DelayWindow(initial=32, samples=4)
    for _ in range(3):
        window.on_ack(0, BASE)
    window.on_ack(10, 50 * BASE)  # a lone slow report: the minimum of recent ones is BASE
    assert window.cwnd == 37
    assert window.slow_start


def test_window_shrinks_toward_beta_under_a_standing_queue() -> None:
    window = DelayWindow(initial=200, alpha=16, beta=48, samples=4)
    window.on_ack(0, BASE)
    sizes = []
    for _ in range(60):
        window.on_ack(10, 2 * BASE)
        sizes.append(window.cwnd)
    assert not window.slow_start
    shrinking = sizes[3:]  # from the fourth report on, every recent sample shows the queue
    assert all(b < a for a, b in itertools.pairwise(shrinking) if a > 96 + 1e-6)
    # cwnd * (1 - base / rtt) = beta at cwnd = 96: it settles there, never below.
    assert min(shrinking) >= 96 - 1e-9
    assert sizes[-1] == pytest.approx(96, abs=0.01)


def test_window_shrinks_no_lower_than_the_minimum() -> None:
    window = DelayWindow(initial=100, minimum=8, beta=4, alpha=2)
    window.on_ack(0, BASE)
    for _ in range(10):
        window.on_ack(0, 100 * BASE)
    assert window.cwnd == 8


@pytest.mark.parametrize("event", ["on_loss", "on_timeout"])
def test_window_halves_on_loss_and_timeout_not_below_minimum(event: str) -> None:
    window = DelayWindow(initial=100, minimum=8)
    assert window.slow_start
    window.queued = window.alpha + 1  # loss comes with a queue building up: congestion
    halving = []
    for _ in range(6):
        getattr(window, event)()
        halving.append(window.cwnd)
    assert halving == [50, 25, 12.5, 8, 8, 8]
    assert not window.slow_start


def test_loss_without_a_queue_keeps_the_window() -> None:
    window = DelayWindow(initial=32)
    window.on_ack(0, BASE)  # no queue: the round trip is the base one
    assert window.queued == 0
    window.on_loss()  # a lossy link, not congestion
    assert window.cwnd == 32
    assert window.slow_start


def test_window_after_loss_grows_in_congestion_avoidance() -> None:
    window = DelayWindow(initial=64)
    window.queued = window.alpha + 1
    window.on_loss()
    window.on_ack(32, BASE)
    assert window.cwnd == pytest.approx(34)
    assert not window.slow_start


@pytest.mark.parametrize(
    ("cwnd", "advertised", "expected"),
    [(40.7, 100, 40), (40.7, 10, 10), (40.7, 40, 40), (40.7, 0, 1), (0.5, 100, 1)],
)
def test_limit_respects_the_advertised_window(cwnd: float, advertised: int, expected: int) -> None:
    window = DelayWindow()
    window.cwnd = cwnd
    assert window.limit(advertised) == expected


def test_tiny_rtt_samples_are_floored() -> None:
    window = DelayWindow(initial=32, rtt_floor_s=100e-6)
    window.on_ack(0, 1e-6)
    assert window.base_rtt_s == 100e-6
    # Jitter below the floor (1 us vs 60 us would read as a 98 % queue) is not a queue.
    for _ in range(4):
        window.on_ack(10, 60e-6)
    assert window.cwnd == 52
    assert window.slow_start
    window.on_ack(0, 200e-6)  # above the floor it counts: still one old sample at the floor
    assert window.base_rtt_s == 100e-6


def test_negative_ack_counts_are_ignored() -> None:
    window = DelayWindow(initial=32)
    window.on_ack(-10, BASE)
    assert window.cwnd == 32
