"""Model-based congestion control after BBR: pace at the bottleneck's rate, keep ~2 BDP in flight.

Sans-IO like the sessions: feedback and ``now`` come in, a pacing rate and a window come out.

The model (Cardwell et al., "BBR: Congestion-Based Congestion Control", ACM Queue 14(5), 2016;
draft-ietf-ccwg-bbr-01) keeps two numbers about the path:

- ``btl_bw``: the bottleneck bandwidth, the maximum of delivery-rate samples over the last ten
  round trips. A sample is taken per STATUS, from the receiver's count of DATA datagrams
  received, after draft-cheng-iccrg-delivery-rate-estimation-02: datagrams delivered between
  when the echoed datagram was sent and when its STATUS came back, over the longer of the send
  and the ack interval (so that feedback arriving in a bunch cannot inflate it).
- ``min_rtt``: the minimum round trip over the last ten seconds (time in both ends' sockets
  taken out by the sender).

Their product is the bandwidth-delay product (BDP). The sender is paced at ``pacing_gain``
times ``btl_bw`` and keeps at most ``cwnd_gain`` BDPs in flight, plus the bunching of
feedback (the draft's ``extra_acked``) and a little room for batched sending. The gains follow
BBR's state machine: STARTUP doubles the rate each round trip until the delivery rate stops
growing by 25 % for three rounds, DRAIN empties the queue that built, PROBE_BW cycles through
gains 1.25, 0.75 and six times 1 (one min_rtt each) to find more bandwidth and give back the
queue it made, and PROBE_RTT drops in flight to half a BDP for 200 ms when no new minimum was
seen for five seconds, so that competing flows see the path's real round trip.

Random loss leaves the model alone (a lossy link delivers at a lower rate, nothing more): the
sender's repair rounds fix the data and the rate stays, which is what a lossy long path needs
(the Mathis model caps a loss-driven TCP far below the link there). Loss counts as congestion
only when a round trip whose every sample showed a queue lost ``loss_thresh`` more of what it
sent than the path loses on its own (measured in round trips without a queue): a buffer
overflowing. Then, as BBRv2/v3 do (the draft's ``inflight_hi`` and ``BBRBeta``), data in
flight is capped at 0.7 of what it was, and startup ends; the cap grows back by a quarter each
gain cycle that probes without such loss.

On a path whose round trip is below what user-space timing resolves (a LAN, loopback) the
rate samples are noise and pacing only throttles: there the sender is unpaced and the window
alone bounds the queue (see ``pacing_rate_bps``).

The delivery-rate samples and the windowed filters over them are in ``congestion_model``; here
is the state machine that steers by them.

Units: datagrams and seconds inside; the pacing rate comes out in bits per second.
"""

from __future__ import annotations

import math
from enum import Enum, auto

from udpxfer.protocol.congestion_model import DeliveryRate, MinRttFilter, WindowedMax

# draft-ietf-ccwg-bbr-01, "Startup": 4 ln 2, the smallest gain that doubles the delivery rate
# each round trip; the window gain of 2 keeps the queue startup builds within one BDP.
STARTUP_PACING_GAIN = 4 * math.log(2)
STARTUP_CWND_GAIN = 2.0
DRAIN_PACING_GAIN = 1 / STARTUP_PACING_GAIN  # BBR paper: drain what startup queued
# BBR paper, ProbeBW: one phase probes (1.25), one drains (0.75), six cruise, one min_rtt each.
PROBE_BW_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
CWND_GAIN = 2.0
PACING_MARGIN = 0.99  # draft-ietf-ccwg-bbr-01 BBRPacingMarginPercent: just below the model
BW_FILTER_ROUNDS = 10  # BBR paper: the max filter spans 10 round trips
# ... of at least 50 ms each: feedback between user-space loops comes in bunches over a few
# milliseconds, so a LAN's sub-millisecond round trips would leave a filter of mere noise
# (and a pace that ratchets down with every dip of a busy receiver).
BW_SLOT_MIN_S = 0.05
PHASE_MIN_S = 0.01  # likewise, a ProbeBW phase lasts at least this long
EXTRA_ACKED_MAX_S = 0.003  # feedback bunching counted into the window, at most (see _aggregate)
SHORT_PATH_RTT_S = 0.005  # round trips below this are a LAN's: see pacing_rate_bps
PROBE_RTT_S = 0.2  # draft ProbeRTTDuration
PROBE_RTT_CWND_GAIN = 0.5  # draft BBRProbeRTTCwndGain
FULL_BW_GROWTH = 1.25  # draft BBRStartupFullBwThresh: growth that counts as "still growing"
FULL_BW_ROUNDS = 3  # draft BBRStartupFullBwCount
BETA = 0.7  # draft BBRBeta: multiplicative cut of inflight_hi on congestion loss
MIN_CONGESTION_LOSSES = 4  # fewer losses in a round trip are never taken for congestion


class Phase(Enum):
    """Where the controller is in BBR's state machine."""

    STARTUP = auto()
    DRAIN = auto()
    PROBE_BW = auto()
    PROBE_RTT = auto()


class BbrController:
    """Pacing rate and window from a model of the path's bandwidth and round trip.

    The sender calls ``on_sent`` for each datagram that asks for feedback (keyed by the stamp
    the receiver echoes), ``on_status`` for each STATUS, ``on_timeout`` when feedback stopped
    for a whole timeout; it paces at ``pacing_rate_bps`` and keeps at most ``limit(...)``
    datagrams in flight.

    Args:
        now: the current time, in seconds.
        datagram_bytes: the size of a full DATA datagram, to turn datagrams into bits.
        initial_cwnd: datagrams in flight before the first STATUS.
        min_cwnd: the window never goes below this (user-space send and receive loops work
            in batches; a window smaller than a few batches starves them).
        loss_thresh: loss beyond the path's own, as a share of a round trip's datagrams,
            that counts as congestion when the round trip also had a standing queue.
        queue_delay_s: a round trip whose smallest sample exceeds ``min_rtt`` by this much
            had a queue all along (above the noise of user-space timing; a shallow buffer
            that overflows adds little more).
        batch_allowance_s: extra window in seconds of the bottleneck rate, for the bursts of
            user-space sending and feedback (BBR's send-quantum allowance does the same).
        initial_rtt_s: the round trip assumed for the first pace, before any sample.
    """

    def __init__(
        self,
        now: float,
        *,
        datagram_bytes: int,
        initial_cwnd: int = 64,
        min_cwnd: int = 32,
        loss_thresh: float = 0.05,
        queue_delay_s: float = 0.002,
        batch_allowance_s: float = 0.002,
        initial_rtt_s: float = 0.001,
    ) -> None:
        self.datagram_bits = datagram_bytes * 8
        self.min_cwnd = min_cwnd
        self.loss_thresh = loss_thresh
        self.queue_delay_s = queue_delay_s
        self.batch_allowance_s = batch_allowance_s
        self.phase = Phase.STARTUP
        self.pacing_gain = STARTUP_PACING_GAIN
        self.cwnd_gain = STARTUP_CWND_GAIN
        self._min_rtt = MinRttFilter(now)
        self.inflight_hi = math.inf
        self.cwnd = float(initial_cwnd)
        self.rounds = 0
        self.congestion_events = 0
        self._path_sent = 0  # datagrams sent and lost in round trips without a queue
        self._path_lost = 0
        self._initial_rate = initial_cwnd / initial_rtt_s  # datagrams per second, pre-model

        self._rate = DeliveryRate(now)
        self._window = initial_cwnd  # the window last handed to the sender
        self._slot_valid = False  # the current filter slot holds a sample that counts
        self._highest_sent = -1  # highest tx sent, as of the last STATUS
        self._highest_reported = -1  # highest tx the receiver has seen

        # Round trips: a round ends when a datagram sent after it began is acknowledged.
        self._round_end_delivered = 0
        self._bw = WindowedMax(BW_FILTER_ROUNDS)  # datagrams per second
        self._bw_slot_at = now
        # ACK aggregation (draft-ietf-ccwg-bbr-01 BBRUpdateACKAggregation): how much more
        # arrived in a bunch than the model expects, kept over the same slots as the bandwidth.
        self._extra = WindowedMax(BW_FILTER_ROUNDS)
        self._epoch_at = now
        self._epoch_delivered = 0
        self._round_start_tx = -1
        self._round_start_received = 0
        self._round_min_rtt = math.inf
        self._round_max_inflight = 0

        self._full_bw = 0.0
        self._full_bw_count = 0
        self._filled_pipe = False
        self._cycle_index = 2  # enter PROBE_BW cruising, as the draft does after DRAIN
        self._cycle_at = now
        self._probe_rtt_until: float | None = None
        self._prior_phase = Phase.STARTUP
        self._probed_clean = True  # the last probing phase saw no congestion loss

    # -- what the sender reads --------------------------------------------------------------

    @property
    def btl_bw(self) -> float:
        """The bottleneck bandwidth in datagrams per second (0 before the first sample)."""
        return self._bw.best

    @property
    def min_rtt_s(self) -> float:
        """The path's round trip without queues (inf before the first sample)."""
        return self._min_rtt.min_rtt_s

    @property
    def extra_acked(self) -> float:
        """Feedback bunching in datagrams: how much more arrived at once than the model says."""
        return self._extra.best

    @property
    def pacing_rate_bps(self) -> int:
        """The rate to pace at, in bits per second; 0 means unpaced (as the Pacer takes it).

        On a path whose round trip is shorter than user-space timing can resolve (a LAN,
        loopback), rate samples are noisier than the path (a busy receiver delivers in
        bunches) and every pause the pacer makes costs a trip through the scheduler: pacing
        at the model's rate throttles the transfer to its dips. There the window alone (a
        couple of BDPs plus the bunching) bounds what can queue, as a window-based TCP does.
        """
        if self.min_rtt_s < SHORT_PATH_RTT_S:
            return 0
        bw = self.btl_bw if self.btl_bw > 0 else self._initial_rate
        margin = PACING_MARGIN if self.phase is Phase.PROBE_BW else 1.0
        return max(1, int(self.pacing_gain * bw * margin * self.datagram_bits))

    @property
    def bdp(self) -> float:
        """The bandwidth-delay product in datagrams (0 before the first samples)."""
        if self.btl_bw <= 0 or math.isinf(self.min_rtt_s):
            return 0.0
        return self.btl_bw * self.min_rtt_s

    @property
    def path_loss(self) -> float:
        """The loss rate seen in round trips without a queue: the path's own, not ours."""
        return self._path_lost / self._path_sent if self._path_sent else 0.0

    def limit(self, advertised: int) -> int:
        """The window to use: ours, never above what the receiver advertised."""
        self._window = max(1, min(int(self.cwnd), advertised))
        return self._window

    # -- what the sender tells --------------------------------------------------------------

    def on_sent(self, key: int, tx: int, now: float) -> None:
        """Datagram number ``tx``, asking for feedback with echo stamp ``key``, left at ``now``."""
        pace = self.pacing_rate_bps / self.datagram_bits
        window_open = tx - self._highest_reported < 0.9 * self._window
        self._rate.on_sent(key, tx, now, pace=pace, window_open=window_open)

    def on_status(
        self,
        key: int,
        *,
        highest_tx: int,
        received: int,
        tx_sent: int,
        rtt_s: float | None,
        now: float,
    ) -> None:
        """A STATUS: the echoed stamp, the receiver's counters and a round-trip sample.

        ``highest_tx`` and ``received`` are the receiver's highest transmission number seen
        and its cumulative count of DATA datagrams; ``tx_sent`` is the highest transmission
        number sent so far; ``rtt_s`` is the round trip of the echoed datagram with time in
        both ends' sockets taken out (None when unknown).
        """
        if rtt_s is not None and rtt_s > 0:
            self._on_rtt(rtt_s, now)
        self._highest_sent = max(self._highest_sent, tx_sent)
        self._highest_reported = max(self._highest_reported, highest_tx)
        acked, sent = self._rate.on_ack(key, received, now)
        if acked and self.btl_bw > 0:
            self._aggregate(acked, now)
        if sent is None:
            self._update(now, acked)
            return
        inflight = max(0, self._highest_sent - self._highest_reported)
        self._round_max_inflight = max(self._round_max_inflight, inflight)
        if sent.delivered >= self._round_end_delivered:
            self._end_round(highest_tx, received, now)
        rate = self._rate.sample(sent, now, self.min_rtt_s)
        if (
            rate is not None
            and rate > self._bw.current
            and (not sent.behind or rate >= self.btl_bw)
        ):
            self._bw.update(rate)
            self._slot_valid = True
        self._update(now, acked)

    def on_timeout(self, now: float) -> None:
        """No feedback for a whole timeout: halve the window until feedback returns.

        As BBR does after a retransmission timeout, the model stays (a burst of lost feedback
        says nothing about the bottleneck); the next STATUS sets the window from it again.
        """
        self.cwnd = max(float(self.min_cwnd), self.cwnd / 2)

    # -- the model ------------------------------------------------------------------------

    def _on_rtt(self, rtt_s: float, now: float) -> None:
        self._round_min_rtt = min(self._round_min_rtt, rtt_s)
        self._min_rtt.sample(rtt_s, now)

    def _aggregate(self, acked: int, now: float) -> None:
        """Track feedback that arrives faster than the model's rate (draft: extra_acked)."""
        expected = self.btl_bw * (now - self._epoch_at)
        if self._epoch_delivered <= expected:  # back at or below the model: a new epoch
            self._epoch_delivered, self._epoch_at, expected = 0, now, 0.0
        self._epoch_delivered += acked
        # Capped (as Linux BBR caps it at 100 ms of the rate, here tighter): the bunches grow
        # with the window they are added to, and only a few milliseconds of them are ours.
        extra = min(self._epoch_delivered - expected, self.cwnd, self.btl_bw * EXTRA_ACKED_MAX_S)
        self._extra.update(extra)

    def _end_round(self, highest_tx: int, received: int, now: float) -> None:
        """One round trip is over: check for a full pipe and for congestion loss."""
        self.rounds += 1
        self._round_end_delivered = self._rate.delivered
        sent = highest_tx - self._round_start_tx
        lost = sent - (received - self._round_start_received)
        if self._round_start_tx >= 0 and sent > 0:
            lost = max(0, lost)
            if self._round_min_rtt <= self.min_rtt_s + self.queue_delay_s:
                # No queue all round: whatever was lost is the path's own loss.
                self._path_sent += sent
                self._path_lost += lost
            elif lost >= MIN_CONGESTION_LOSSES and lost > sent * (
                self.path_loss + self.loss_thresh
            ):
                self._on_congestion()
        self._round_start_tx = highest_tx
        self._round_start_received = received
        self._round_min_rtt = math.inf
        self._round_max_inflight = 0
        if self.phase is Phase.STARTUP:
            bw = self.btl_bw
            if bw >= self._full_bw * FULL_BW_GROWTH:
                self._full_bw = bw
                self._full_bw_count = 0
            else:
                self._full_bw_count += 1
                if self._full_bw_count >= FULL_BW_ROUNDS:
                    self._filled_pipe = True
                    self._enter(Phase.DRAIN)
        # A slot with no sample that counts does not age the filter (as a max filter that
        # only expires when updated): a stretch that only measured the sender keeps the model.
        if self._slot_valid and now - self._bw_slot_at >= BW_SLOT_MIN_S:
            self._slot_valid = False
            self._bw_slot_at = now
            self._bw.advance()  # the oldest slot falls out of the max filters
            self._extra.advance()

    def _on_congestion(self) -> None:
        """A round lost much of what it sent into a standing queue: a buffer overflowed."""
        self.congestion_events += 1
        base = max(float(self._round_max_inflight), self.bdp)
        self.inflight_hi = max(float(self.min_cwnd), BETA * min(base, self.cwnd))
        self._probed_clean = False
        if self.phase is Phase.STARTUP:
            self._filled_pipe = True
            self._enter(Phase.DRAIN)

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        if phase is Phase.STARTUP:
            self.pacing_gain, self.cwnd_gain = STARTUP_PACING_GAIN, STARTUP_CWND_GAIN
        elif phase is Phase.DRAIN:
            self.pacing_gain, self.cwnd_gain = DRAIN_PACING_GAIN, STARTUP_CWND_GAIN
        elif phase is Phase.PROBE_RTT:
            self.pacing_gain, self.cwnd_gain = 1.0, PROBE_RTT_CWND_GAIN
        else:
            self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
            self.cwnd_gain = CWND_GAIN

    def _update(self, now: float, acked: int) -> None:
        """Advance the state machine and recompute the window (``acked``: newly delivered)."""
        inflight = max(0, self._highest_sent - self._highest_reported)
        if self.phase is Phase.DRAIN and (
            inflight <= self.bdp or self.bdp == 0 or self.pacing_rate_bps == 0
        ):  # (unpaced, there is no slower pace to drain with: the window does it)
            self._cycle_at = now
            self._enter(Phase.PROBE_BW)
        if self.phase is Phase.PROBE_BW and now - self._cycle_at >= max(
            self.min_rtt_s, PHASE_MIN_S
        ):
            self._next_cycle_phase(now)
        if self.phase is not Phase.PROBE_RTT and self._min_rtt.take_probe_rtt_due():
            self._probe_rtt_until = now + max(PROBE_RTT_S, self.min_rtt_s)
            self._prior_phase = self.phase
            self._enter(Phase.PROBE_RTT)
        if (
            self.phase is Phase.PROBE_RTT
            and self._probe_rtt_until is not None
            and now >= self._probe_rtt_until
        ):
            self._probe_rtt_until = None
            self._min_rtt.probed(now)  # draft: the dip refreshed the filter (or it stays)
            self._cycle_at = now
            startup = self._prior_phase is Phase.STARTUP
            self._enter(Phase.STARTUP if startup else Phase.PROBE_BW)
        self._set_cwnd(acked)

    def _set_cwnd(self, acked: int) -> None:
        """draft-ietf-ccwg-bbr-01 BBRSetCwnd: grow by what was delivered towards the target.

        Before the pipe is full the window grows by every delivered datagram (doubling per
        round trip, as slow start) while the model's target lags behind; after, it moves
        to ``cwnd_gain`` BDPs (plus room for batched sending) and stays there.
        """
        bdp = self.bdp
        if bdp <= 0:
            return  # keep the initial window until the model has a rate and a round trip
        if self.phase is Phase.PROBE_RTT:
            target = self.cwnd_gain * bdp
            cwnd = min(self.cwnd, target)
        else:
            allowance = self.batch_allowance_s * self.btl_bw
            target = self.cwnd_gain * bdp + self.extra_acked + allowance
            if self._filled_pipe:
                cwnd = min(self.cwnd + acked, target)
            else:
                cwnd = self.cwnd + acked if self.cwnd < target else self.cwnd
        self.cwnd = max(float(self.min_cwnd), min(cwnd, self.inflight_hi))

    def _next_cycle_phase(self, now: float) -> None:
        self._cycle_at = now
        self._cycle_index = (self._cycle_index + 1) % len(PROBE_BW_GAINS)
        if self._cycle_index == 0:  # a new probe begins: grow back a cap that loss set
            if self._probed_clean and not math.isinf(self.inflight_hi):
                self.inflight_hi *= 1.25
                if self.inflight_hi > 4 * max(self.cwnd_gain * self.bdp, self.min_cwnd):
                    self.inflight_hi = math.inf  # far above the model: no cap any more
            self._probed_clean = True
        self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
