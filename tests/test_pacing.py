"""Pacer and RTT estimator on a fake clock: plain numbers in, numbers out."""

from __future__ import annotations

import itertools
import math

import pytest

from udpxfer.protocol.pacing import Pacer, RttEstimator


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


def test_set_rate_paces_at_the_new_rate_from_then_on() -> None:
    pacer = Pacer(8_000_000, 0.0)  # 1 MB/s
    first = run_pacer(pacer, 1000, 0.0, 1.0)
    pacer.set_rate(16_000_000, 1.0)
    second = run_pacer(pacer, 1000, 1.0, 2.0)
    assert len(first) == pytest.approx(1000, abs=20)
    assert len(second) == pytest.approx(2000, abs=40)


def test_set_rate_keeps_no_more_than_a_burst_of_the_new_rate() -> None:
    pacer = Pacer(800_000_000, 0.0)  # a 200 KB bucket at 2 ms
    pacer.set_rate(8_000_000, 0.5)  # idle for long: the full bucket would be 200 datagrams
    assert burst_at(pacer, 0.5, 1000) <= 4  # but the new rate's bucket holds 3000 bytes


def test_set_rate_to_and_from_unpaced() -> None:
    pacer = Pacer(8_000_000, 0.0)
    pacer.set_rate(0, 0.0)
    for _ in range(10_000):
        assert pacer.ready(0.0)
        pacer.consume(1000)
    assert pacer.next_release() is None
    pacer.set_rate(8_000_000, 1.0)  # unpaced debts are forgotten: a fresh small bucket
    assert 1 <= burst_at(pacer, 1.0, 1000) <= 4
    assert pacer.next_release() is not None


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
