"""The path model BBR steers by: delivery-rate samples and the windowed filters over them.

Sans-IO like the controller that keeps them (congestion.BbrController): samples and ``now`` go
in. Units: datagrams and seconds.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

MIN_RTT_FILTER_S = 10.0  # draft-ietf-ccwg-bbr-01 MinRTTFilterLen: min_rtt expires after 10 s
PROBE_RTT_INTERVAL_S = 5.0  # draft ProbeRTTInterval: a fresh minimum at least this often
APP_LIMITED_SHARE = 0.9  # sending below this share of the pace (window open) is app-limited


@dataclass(frozen=True, slots=True)
class SentRecord:
    """What the sender knew when a feedback-requesting datagram left (the draft's P.*)."""

    sent_at: float
    delivered: int
    delivered_at: float
    first_sent_at: float
    tx: int
    first_sent_tx: int
    behind: bool  # sending fell behind the pace with the window open: app-limited


class DeliveryRate:
    """Delivery-rate samples after draft-cheng-iccrg-delivery-rate-estimation-02 (its C.*).

    A sample is the datagrams delivered between when the echoed datagram was sent and when its
    feedback came back, over the longer of the send and the ack interval (so that feedback
    arriving in a bunch cannot inflate it).
    """

    def __init__(self, now: float) -> None:
        self._sent: dict[int, SentRecord] = {}
        self._delivered = 0
        self._delivered_at = now
        self._first_sent_at = now
        self._first_sent_tx = 0
        self._started = False

    @property
    def delivered(self) -> int:
        """DATA datagrams the receiver has counted so far."""
        return self._delivered

    def on_sent(self, key: int, tx: int, now: float, *, pace: float, window_open: bool) -> None:
        """Datagram number ``tx``, asking for feedback with echo stamp ``key``, left at ``now``
        while the sender paced at ``pace`` datagrams per second (0: unpaced)."""
        if key in self._sent:
            return  # one batch shares a stamp: its first datagram carries the state
        if not self._started:
            self._started = True
            self._first_sent_at = self._delivered_at = now
            self._first_sent_tx = tx
        # The draft's app-limited mark, widened: a user-space sender on a busy machine can
        # fall behind its own pace. Samples from such stretches measure the sender, not the
        # path, and must not lower the estimate (or the pace follows them down, and the
        # sender falls behind that too).
        elapsed = now - self._first_sent_at
        behind = (
            window_open
            and pace > 0
            and elapsed > 0
            and tx - self._first_sent_tx < APP_LIMITED_SHARE * pace * elapsed
        )
        self._sent[key] = SentRecord(
            now,
            self._delivered,
            self._delivered_at,
            self._first_sent_at,
            tx,
            self._first_sent_tx,
            behind,
        )
        if len(self._sent) > 4096:  # echoes of long-lost datagrams never come
            del self._sent[next(iter(self._sent))]

    def on_ack(self, key: int, received: int, now: float) -> tuple[int, SentRecord | None]:
        """Feedback that counts ``received`` datagrams in all and echoes ``key``: how many were
        newly delivered, and the record of the echoed datagram (None if unknown)."""
        acked = max(0, received - self._delivered)
        if acked:
            self._delivered = received
            self._delivered_at = now
        sent = self._sent.pop(key, None)
        if sent is not None:
            self._first_sent_at, self._first_sent_tx = sent.sent_at, sent.tx
        return acked, sent

    def sample(self, sent: SentRecord, now: float, min_rtt_s: float) -> float | None:
        """Datagrams per second delivered since ``sent`` left; None over too short a time."""
        interval = max(sent.sent_at - sent.first_sent_at, now - sent.delivered_at)
        # The draft drops samples over less than min_rtt: they measure a burst, not the path.
        if interval > 0 and (math.isinf(min_rtt_s) or interval >= min_rtt_s):
            return (self._delivered - sent.delivered) / interval
        return None


class WindowedMax:
    """The largest sample over the last ``slots`` slots: BBR's max filters (the paper's
    bottleneck bandwidth over ten round trips, and the draft's extra_acked over the same)."""

    def __init__(self, slots: int) -> None:
        self._slots: collections.deque[float] = collections.deque([0.0], slots)
        self.best = 0.0

    @property
    def current(self) -> float:
        """The largest sample in the current slot (0 in a new one)."""
        return self._slots[-1]

    def update(self, value: float) -> None:
        """Take a sample into the current slot, which keeps its largest."""
        if value > self._slots[-1]:
            self._slots[-1] = value
            self.best = max(self._slots)

    def advance(self) -> None:
        """Open a new slot: the oldest falls out."""
        self._slots.append(0.0)
        self.best = max(self._slots)


class MinRttFilter:
    """The two min filters of draft-ietf-ccwg-bbr-01 (BBRUpdateMinRTT): ``min_rtt_s`` over the
    last ten seconds, and a shorter one whose expiry makes PROBE_RTT due."""

    def __init__(self, now: float) -> None:
        self.min_rtt_s = math.inf
        self._min_rtt_at = now
        self._probe_min_s = math.inf  # the draft's probe_rtt_min_delay and its stamp
        self._probe_min_at = now
        self._probe_rtt_due = False

    def sample(self, rtt_s: float, now: float) -> None:
        """Fold one round-trip sample in."""
        self._probe_rtt_due = now > self._probe_min_at + PROBE_RTT_INTERVAL_S
        if rtt_s < self._probe_min_s or self._probe_rtt_due:
            self._probe_min_s, self._probe_min_at = rtt_s, now
        if self._probe_min_s < self.min_rtt_s or now > self._min_rtt_at + MIN_RTT_FILTER_S:
            self.min_rtt_s, self._min_rtt_at = self._probe_min_s, self._probe_min_at

    def take_probe_rtt_due(self) -> bool:
        """True once if no fresh minimum was seen for PROBE_RTT_INTERVAL_S (then cleared)."""
        due, self._probe_rtt_due = self._probe_rtt_due, False
        return due

    def probed(self, now: float) -> None:
        """PROBE_RTT is over: the dip refreshed the filter (or the minimum stays)."""
        self._probe_min_at = now
