"""Pure timing helpers for the sessions: a token-bucket pacer and an RTT estimator.

Congestion control (the pace and window an unpaced sender uses) is in udpxfer.protocol.congestion.
"""

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

    def allowance(self, now: float, datagram_bytes: int) -> int:
        """How many datagrams of ``datagram_bytes`` may leave back to back at ``now``: each
        while the bucket is above zero, as ``ready`` and ``consume`` one by one would."""
        if not self.rate_bps:
            return 1 << 30
        self._refill(now)
        if self._tokens <= 0:
            return 0
        return -(-int(self._tokens) // max(1, datagram_bytes)) or 1

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
