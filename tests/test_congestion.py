"""The BBR-style controller against a fake clock and a seeded bottleneck model.

``Path`` is a pure simulation: a FIFO bottleneck of a given rate with a queue limit (tail
drop), a one-way delay each way and seeded random loss each way, fed by one or more flows. A
flow sends as the controller's window and a ``Pacer`` at its rate allow; the receiver side
counts DATA datagrams and answers every eighth of the window with a STATUS (highest tx seen,
DATA received, the echoed stamp), as udpxfer's receiver does. The clock is the simulation's.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field

import pytest

from udpxfer.protocol.congestion import BbrController, Phase
from udpxfer.protocol.pacing import Pacer

DATAGRAM = 1444  # bytes: a 1400-byte chunk and udpxfer's header
MBIT = 1_000_000


@dataclass
class Flow:
    """One sender and its receiver's counters."""

    cc: BbrController
    pacer: Pacer
    start_s: float
    tx: int = 0
    highest_acked: int = -1
    received: int = 0
    highest_seen: int = -1
    sent_at: dict[int, float] = field(default_factory=dict)
    wake_at: float | None = None  # the one pending pacer wake-up
    pace_share: float = 1.0  # a busy sender achieves only this share of its pace
    delivered_log: list[tuple[float, int]] = field(default_factory=list)  # (time, received)

    def goodput_bps(self, start: float, end: float) -> float:
        """Delivered bits per second in [start, end)."""
        inside = [n for t, n in self.delivered_log if start <= t < end]
        if len(inside) < 2:
            return 0.0
        return (inside[-1] - inside[0]) * DATAGRAM * 8 / (end - start)


class Path:
    """A bottleneck link with a queue, a delay each way and random loss, on a fake clock."""

    def __init__(
        self,
        *,
        rate_bps: float,
        delay_s: float,
        queue_limit: int,
        loss: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.rate_bps = rate_bps
        self.delay_s = delay_s
        self.queue_limit = queue_limit
        self.loss = loss
        self.rng = random.Random(seed)
        self.now = 1.0
        self.flows: list[Flow] = []
        self._events: list[tuple[float, int, str, int, tuple[int, ...]]] = []
        self._order = itertools.count()
        self._link_free = 0.0
        self._queue: list[float] = []  # departure times of datagrams in the bottleneck
        self.tail_drops = 0
        self.sent = 0
        self.queue_samples: list[tuple[float, int]] = []
        self.rate_changes: list[tuple[float, float]] = []

    def add_flow(self, start_s: float = 0.0, **controller: float) -> Flow:
        now = self.now + start_s
        cc = BbrController(now, datagram_bytes=DATAGRAM, **controller)  # type: ignore[arg-type]
        flow = Flow(cc, Pacer(cc.pacing_rate_bps, now), now)
        self.flows.append(flow)
        self._push(now, "wake", len(self.flows) - 1, ())
        return flow

    def _push(self, at: float, kind: str, flow: int, data: tuple[int, ...]) -> None:
        heapq.heappush(self._events, (at, next(self._order), kind, flow, data))

    def queue_length(self, now: float) -> int:
        """Datagrams waiting in or crossing the bottleneck at ``now``."""
        while self._queue and self._queue[0] <= now:
            heapq.heappop(self._queue)
        return len(self._queue)

    def _enqueue(self, now: float, flow: int, data: tuple[int, ...]) -> None:
        self.sent += 1
        if self.rng.random() < self.loss:
            return
        if self.queue_length(now) >= self.queue_limit:
            self.tail_drops += 1
            return
        start = max(now, self._link_free)
        self._link_free = start + DATAGRAM * 8 / self.rate_bps
        heapq.heappush(self._queue, self._link_free)
        self._push(self._link_free + self.delay_s, "data", flow, data)

    def _send(self, index: int, now: float) -> None:
        flow = self.flows[index]
        cc, pacer = flow.cc, flow.pacer
        window = cc.limit(1 << 30)
        while flow.tx - flow.highest_acked - 1 < window:
            if not pacer.ready(now):
                release = pacer.next_release()
                assert release is not None
                if flow.wake_at is None or flow.wake_at <= now:
                    flow.wake_at = release
                    self._push(release, "wake", index, ())
                return
            tx = flow.tx
            ask = tx % max(1, window // 8) == 0
            stamp = 0
            if ask:
                stamp = next(self._order) + 1
                flow.sent_at[stamp] = now
                cc.on_sent(stamp, tx, now)
            pacer.consume(DATAGRAM)
            flow.tx += 1
            self._enqueue(now, index, (tx, stamp))

    def _on_data(self, index: int, now: float, tx: int, stamp: int) -> None:
        flow = self.flows[index]
        flow.received += 1
        flow.highest_seen = max(flow.highest_seen, tx)
        flow.delivered_log.append((now, flow.received))
        if stamp and self.rng.random() >= self.loss:
            status = (stamp, flow.highest_seen, flow.received)
            self._push(now + self.delay_s, "status", index, status)

    def _on_status(self, index: int, now: float, stamp: int, highest: int, received: int) -> None:
        flow = self.flows[index]
        flow.highest_acked = max(flow.highest_acked, highest)
        sent = flow.sent_at.pop(stamp)
        flow.cc.on_status(
            stamp,
            highest_tx=highest,
            received=received,
            tx_sent=flow.tx - 1,
            rtt_s=now - sent,
            now=now,
        )
        flow.pacer.set_rate(int(flow.cc.pacing_rate_bps * flow.pace_share), now)

    def run(self, until_s: float, *, sample_every_s: float = 0.01) -> None:
        """Advance the simulation to ``until_s`` seconds after its start."""
        end = 1.0 + until_s
        next_sample = self.now
        while self._events and self._events[0][0] < end:
            at, _, kind, index, data = heapq.heappop(self._events)
            self.now = at
            while next_sample <= at:
                self.queue_samples.append((next_sample, self.queue_length(next_sample)))
                next_sample += sample_every_s
            for change_at, rate in self.rate_changes:
                if change_at <= at and self.rate_bps != rate:
                    self.rate_bps = rate
            if kind == "data":
                self._on_data(index, at, *data)
            elif kind == "status":
                self._on_status(index, at, *data)
            self._send(index, at)  # feedback, a wake-up or a delivery: try to send more
        self.now = end

    def mean_queue(self, start_s: float, end_s: float) -> float:
        """Mean datagrams in the bottleneck between two times (seconds from the start)."""
        inside = [n for t, n in self.queue_samples if 1.0 + start_s <= t < 1.0 + end_s]
        return sum(inside) / len(inside)


def steady_goodput(flow: Flow, start_s: float, end_s: float) -> float:
    return flow.goodput_bps(1.0 + start_s, 1.0 + end_s)


# -- one flow on a long fat path ----------------------------------------------------------


def test_fills_a_long_fat_path_and_leaves_startup() -> None:
    path = Path(rate_bps=20 * MBIT, delay_s=0.05, queue_limit=1000)
    flow = path.add_flow()
    path.run(8.0)
    assert flow.cc.phase is Phase.PROBE_BW
    assert flow.cc.min_rtt_s == pytest.approx(0.1, rel=0.02)  # the propagation round trip
    assert flow.cc.btl_bw * DATAGRAM * 8 == pytest.approx(20 * MBIT, rel=0.1)
    assert steady_goodput(flow, 3.0, 8.0) > 0.93 * 20 * MBIT
    assert path.tail_drops == 0  # a queue of 1000 datagrams holds startup's overshoot


def test_startup_doubles_each_round_trip() -> None:
    path = Path(rate_bps=50 * MBIT, delay_s=0.05, queue_limit=5000)
    flow = path.add_flow()
    path.run(1.0)  # ten round trips: 64 datagrams -> the BDP of 433 needs three doublings
    assert flow.cc.rounds >= 8
    assert steady_goodput(flow, 0.7, 1.0) > 0.8 * 50 * MBIT


@pytest.mark.parametrize("loss", [0.01, 0.02, 0.05])
def test_random_loss_without_a_queue_does_not_collapse_the_rate(loss: float) -> None:
    path = Path(rate_bps=20 * MBIT, delay_s=0.05, queue_limit=1000, loss=loss, seed=3)
    flow = path.add_flow()
    path.run(8.0)
    # What arrives is the link's rate less the random loss: nothing is given up for it.
    assert steady_goodput(flow, 3.0, 8.0) > 0.95 * 20 * MBIT * (1 - loss)
    assert flow.cc.path_loss == pytest.approx(loss, rel=0.2)
    # Not even startup's queue makes the path's own loss look like congestion.
    assert flow.cc.congestion_events == 0
    assert math.isinf(flow.cc.inflight_hi)


def test_heavy_random_loss_still_keeps_most_of_the_rate() -> None:
    path = Path(rate_bps=20 * MBIT, delay_s=0.05, queue_limit=1000, loss=0.1, seed=3)
    flow = path.add_flow()
    path.run(8.0)
    assert steady_goodput(flow, 3.0, 8.0) > 0.8 * 20 * MBIT * 0.9


def test_the_standing_queue_drains_after_startup() -> None:
    path = Path(rate_bps=20 * MBIT, delay_s=0.05, queue_limit=100_000)
    flow = path.add_flow()
    path.run(8.0)
    bdp = 20 * MBIT / (DATAGRAM * 8) * 0.1
    # Startup queued up to a BDP; afterwards gain cycling keeps the queue a fraction of it.
    assert max(n for _, n in path.queue_samples) > 0.3 * bdp
    assert path.mean_queue(3.0, 8.0) < 0.3 * bdp
    assert flow.cc.cwnd <= 2.2 * bdp + 64


def test_backs_off_when_the_bottleneck_slows_down() -> None:
    path = Path(rate_bps=20 * MBIT, delay_s=0.05, queue_limit=400)
    flow = path.add_flow()
    path.rate_changes.append((1.0 + 4.0, 10 * MBIT))
    path.run(12.0)
    # The max filter forgets the old rate within ten round trips and the pace follows.
    assert flow.cc.pacing_rate_bps < 1.3 * 10 * MBIT
    assert steady_goodput(flow, 7.0, 12.0) > 0.9 * 10 * MBIT
    bdp = 10 * MBIT / (DATAGRAM * 8) * 0.1
    assert path.mean_queue(8.0, 12.0) < 0.5 * bdp


def test_loss_into_a_full_shallow_queue_caps_data_in_flight() -> None:
    # A buffer of a fifth of a BDP: startup's queue overflows it, which is congestion.
    path = Path(rate_bps=20 * MBIT, delay_s=0.05, queue_limit=35)
    flow = path.add_flow()
    path.run(8.0)
    assert flow.cc.congestion_events >= 1
    assert path.tail_drops < 0.03 * path.sent
    assert steady_goodput(flow, 3.0, 8.0) > 0.8 * 20 * MBIT


def test_on_a_lan_the_window_alone_bounds_the_queue() -> None:
    # The namespace test's path: 200 Mbit/s, a sub-millisecond round trip, a tbf buffer of
    # some 217 datagrams. Unpaced (rate samples there are user-space noise), the window keeps
    # what waits in the buffer below its size.
    path = Path(rate_bps=200 * MBIT, delay_s=0.0001, queue_limit=217)
    flow = path.add_flow()
    path.run(2.0)
    assert flow.cc.pacing_rate_bps == 0
    assert flow.cc.phase is Phase.PROBE_BW  # startup and drain are over
    assert path.tail_drops == 0
    assert max(n for _, n in path.queue_samples) < 217
    assert steady_goodput(flow, 0.5, 2.0) > 0.95 * 200 * MBIT


def test_a_sender_behind_its_pace_does_not_drag_the_model_down() -> None:
    # A busy user-space sender keeps only 3/4 of its pace. Its samples measure itself, not
    # the path: they must not lower the estimate, or the pace follows them down, the sender
    # falls behind that too, and the rate spirals towards nothing.
    path = Path(rate_bps=20 * MBIT, delay_s=0.05, queue_limit=1000)
    flow = path.add_flow()
    path.run(3.0)
    flow.pace_share = 0.75
    path.run(15.0)
    # (Without the app-limited mark the estimate falls to a quarter of the link by now.)
    assert flow.cc.btl_bw * DATAGRAM * 8 > 0.7 * 20 * MBIT
    assert steady_goodput(flow, 12.0, 15.0) > 0.5 * 20 * MBIT


# -- sharing ------------------------------------------------------------------------------


def test_two_flows_share_one_bottleneck_within_two_to_one() -> None:
    path = Path(rate_bps=20 * MBIT, delay_s=0.02, queue_limit=400, seed=5)
    first = path.add_flow()
    second = path.add_flow(start_s=2.0)
    path.run(30.0)
    rates = [steady_goodput(f, 15.0, 30.0) for f in (first, second)]
    assert max(rates) / min(rates) < 2.0
    assert sum(rates) > 0.85 * 20 * MBIT  # and together they still fill it


# -- the model's pieces, fed by hand ------------------------------------------------------


@pytest.mark.parametrize(
    ("reported_at", "rtt_s", "expected"),
    [
        # 100 datagrams delivered between the two reports, 0.2 s apart: 500 per second.
        (0.3, 0.1, 500.0),
        # Reported 10 ms after the previous report, but sending them took 0.1 s (since the
        # datagram the previous report answered): a bunch of feedback, 1000/s, not 10000/s.
        (0.11, 0.01, 1000.0),
    ],
)
def test_delivery_rate_uses_the_longer_of_send_and_ack_intervals(
    reported_at: float, rtt_s: float, expected: float
) -> None:
    cc = BbrController(0.0, datagram_bytes=1000)
    cc.on_sent(1, 0, 0.0)
    cc.on_status(1, highest_tx=0, received=1, tx_sent=99, rtt_s=0.1, now=0.1)
    cc.on_sent(2, 100, 0.1)
    cc.on_status(2, highest_tx=100, received=101, tx_sent=150, rtt_s=rtt_s, now=reported_at)
    assert cc.btl_bw == pytest.approx(expected)
    assert cc.pacing_rate_bps == int(cc.pacing_gain * expected * 8000)


def test_min_rtt_is_the_smallest_sample_until_it_expires() -> None:
    cc = BbrController(0.0, datagram_bytes=1000)
    for i, (now, rtt) in enumerate([(0.1, 0.1), (0.2, 0.08), (0.3, 0.12)]):
        cc.on_status(i, highest_tx=i, received=i, tx_sent=i, rtt_s=rtt, now=now)
    assert cc.min_rtt_s == 0.08
    cc.on_status(9, highest_tx=9, received=9, tx_sent=9, rtt_s=0.12, now=11.0)
    assert cc.min_rtt_s == 0.12  # ten seconds later the old minimum no longer counts


def test_unknown_echo_and_no_rtt_change_nothing_but_counters() -> None:
    cc = BbrController(0.0, datagram_bytes=1000, initial_cwnd=64)
    cc.on_status(12345, highest_tx=5, received=6, tx_sent=63, rtt_s=None, now=0.1)
    assert (cc.btl_bw, cc.min_rtt_s, cc.cwnd) == (0.0, math.inf, 64.0)


def test_timeout_halves_the_window_but_keeps_the_model() -> None:
    path = Path(rate_bps=20 * MBIT, delay_s=0.05, queue_limit=1000)
    flow = path.add_flow()
    path.run(5.0)
    cc = flow.cc
    cwnd, bw = cc.cwnd, cc.btl_bw
    cc.on_timeout(path.now)
    assert cc.cwnd == pytest.approx(max(cc.min_cwnd, cwnd / 2))
    assert cc.btl_bw == bw
    path.run(6.0)
    assert cc.cwnd == pytest.approx(cwnd, rel=0.1)  # feedback brought it back


def test_pacing_rate_is_never_zero_before_any_feedback() -> None:
    cc = BbrController(0.0, datagram_bytes=1444, initial_cwnd=64)
    # 64 datagrams per (nominal) millisecond at the startup gain: the first window leaves
    # at once, as an unpaced sender's would.
    assert cc.pacing_rate_bps > 1_000 * MBIT
    assert cc.limit(16) == 16  # the receiver's window still rules
