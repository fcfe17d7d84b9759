"""Pure timing helpers for the sessions: a token-bucket pacer and an RTT estimator."""

from __future__ import annotations

# RFC 6298 section 2: alpha = 1/8, beta = 1/4, K = 4.
_ALPHA = 0.125
_BETA = 0.25
_K = 4.0


class Pacer:
    """Token bucket in bytes that releases datagrams at ``rate_bps`` (0 = unpaced).

    The bucket holds at most ``burst_s`` worth of sending so that an idle period does not
    turn into a line-rate burst.
    """

    def __init__(self, rate_bps: int, now: float, burst_s: float = 0.002, min_burst: int = 3000):
        self._burst_s = burst_s
        self._min_burst = float(min_burst)
        self._set(rate_bps)
        self._tokens = self._capacity
        self._last = now

    def _set(self, rate_bps: int) -> None:
        self.rate_bps = rate_bps
        self._bytes_per_s = rate_bps / 8
        self._capacity = max(self._min_burst, self._bytes_per_s * self._burst_s)

    def set_rate(self, rate_bps: int, now: float) -> None:
        """Pace at ``rate_bps`` from ``now`` on (a congestion controller's changing estimate).

        Tokens earned so far are kept (at most a burst of the new rate), so a change neither
        releases a burst nor stalls what was about to leave.
        """
        if rate_bps == self.rate_bps:
            return
        if self.rate_bps:
            self._refill(now)
        else:
            self._tokens, self._last = self._min_burst, now
        self._set(rate_bps)
        self._tokens = min(self._tokens, self._capacity)

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(
                self._capacity, self._tokens + (now - self._last) * self._bytes_per_s
            )
            self._last = now

    def ready(self, now: float) -> bool:
        """True when a datagram may leave at ``now``."""
        if not self.rate_bps:
            return True
        self._refill(now)
        return self._tokens > 0

    def consume(self, n_bytes: int) -> None:
        """Account for a datagram of ``n_bytes`` that was released."""
        if self.rate_bps:
            self._tokens -= n_bytes

    def next_release(self) -> float | None:
        """When the next datagram may leave, or None when unpaced or not yet blocked."""
        if not self.rate_bps or self._tokens > 0:
            return None
        return self._last + (1.0 - self._tokens) / self._bytes_per_s


class RttEstimator:
    """Smoothed round-trip time and retransmission timeout after RFC 6298."""

    def __init__(self, initial_rto_s: float = 0.5, min_rto_s: float = 0.05, max_rto_s: float = 2.0):
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0
        self.min_rto_s = min_rto_s
        self.max_rto_s = max_rto_s
        self._rto_s = initial_rto_s
        self.backoff = 1

    def sample(self, rtt_s: float) -> None:
        """Fold one round-trip measurement in (RFC 6298 section 2.2 and 2.3)."""
        if rtt_s < 0:
            return
        if self.srtt_s is None:
            self.srtt_s = rtt_s
            self.rttvar_s = rtt_s / 2
        else:
            self.rttvar_s = (1 - _BETA) * self.rttvar_s + _BETA * abs(self.srtt_s - rtt_s)
            self.srtt_s = (1 - _ALPHA) * self.srtt_s + _ALPHA * rtt_s
        self._rto_s = self.srtt_s + _K * self.rttvar_s
        self.backoff = 1

    @property
    def rto_s(self) -> float:
        """Current timeout, with exponential backoff (RFC 6298 section 5.5), clamped."""
        return min(self.max_rto_s, max(self.min_rto_s, self._rto_s) * self.backoff)

    def back_off(self) -> None:
        """Double the timeout after it expired."""
        self.backoff = min(self.backoff * 2, 64)


class DelayWindow:
    """A delay-based congestion window after TCP Vegas (Brakmo and Peterson, 1995).

    Our datagrams sitting in queues along the path are estimated as
    ``cwnd * (1 - base_rtt / rtt)``. In slow start the window grows by half of what each
    report acknowledges (about x1.5 per round trip) until that queue passes ``alpha`` or the
    window reaches ``slow_start_limit``. After that, or after any loss, it grows by about two
    datagrams per round trip while fewer than ``alpha`` wait and shrinks by the excess when
    more than ``beta`` do; a loss halves it (as TCP Reno, RFC 5681 section 3.1). Keeping the
    standing queue small means a slow relay or a bottleneck with a small buffer in the path
    fills without overflowing, so loss reports show what the network did, not what our
    sender did to it. ``rtt`` is the minimum of the last few samples, so that one late sample
    does not shrink the window.
    """

    def __init__(
        self,
        initial: int = 32,
        minimum: int = 8,
        alpha: float = 16.0,
        beta: float = 48.0,
        samples: int = 4,
        slow_start_limit: float = 64.0,
        rtt_floor_s: float = 100e-6,
    ) -> None:
        self.cwnd = float(initial)
        self.minimum = minimum
        self.alpha = alpha
        self.beta = beta
        self.slow_start = True
        self.slow_start_limit = slow_start_limit  # RFC 5681's initial ssthresh, kept small
        # Round trips are measured in user space, corrected for time spent in both ends'
        # sockets; below this their noise is larger than any queue worth reacting to.
        self.rtt_floor_s = rtt_floor_s
        self.base_rtt_s = float("inf")
        self.queued = 0.0  # the latest estimate of our datagrams waiting in the path
        self._recent: list[float] = []
        self._samples = samples

    def on_ack(self, acked: int, rtt_s: float) -> None:
        """Fold in feedback that acknowledged ``acked`` datagrams, with one RTT sample."""
        rtt_s = max(rtt_s, self.rtt_floor_s)
        self.base_rtt_s = min(self.base_rtt_s, rtt_s)
        self._recent.append(rtt_s)
        if len(self._recent) > self._samples:
            del self._recent[0]
        queued = self.cwnd * (1.0 - self.base_rtt_s / min(self._recent))
        self.queued = queued
        acked = max(acked, 0)
        if queued > self.beta:
            self.slow_start = False
            self.cwnd = max(float(self.minimum), self.cwnd - (queued - self.beta))
        elif queued < self.alpha:
            self.cwnd += acked / 2 if self.slow_start else 2 * acked / self.cwnd
            if self.cwnd >= self.slow_start_limit:
                self.slow_start = False
        else:
            self.slow_start = False

    def on_loss(self) -> None:
        """Datagrams went missing: halve the window (at most once a round trip, the caller's
        business), as TCP Reno does (RFC 5681 section 3.1), when a queue is building up.

        Loss with no queue behind it is the path's own (a lossy link, an impairment), not
        congestion: halving for it would only slow the transfer down (and a loss lab lives
        on such paths), so the window keeps its size.
        """
        if self.queued <= self.alpha:
            return
        self.slow_start = False
        self.cwnd = max(float(self.minimum), self.cwnd / 2)

    def on_timeout(self) -> None:
        """No feedback for a retransmission timeout: halve the window, since the path may be
        stalled rather than empty (it will hold what it already holds and this much more)."""
        self.slow_start = False
        self.cwnd = max(float(self.minimum), self.cwnd / 2)

    def limit(self, advertised: int) -> int:
        """The window to use: ours, never above what the receiver advertised."""
        return max(1, min(int(self.cwnd), advertised))
