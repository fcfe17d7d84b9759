"""Ping-style round-trip statistics: counts, loss and min/avg/max/mdev, pure arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class PingStats:
    """Probes sent and echoes matched, as ``ping`` counts them.

    ``stray`` counts datagrams that matched no probe still waited for (late echoes of a probe
    already counted as lost, or foreign datagrams); they change neither loss nor RTT.
    """

    transmitted: int = 0
    rtts_ms: list[float] = field(default_factory=list)
    stray: int = 0

    @property
    def received(self) -> int:
        """Echoes matched to their probe in time."""
        return len(self.rtts_ms)

    @property
    def lost(self) -> int:
        """Probes whose echo never came back within the timeout."""
        return self.transmitted - self.received

    @property
    def loss_percent(self) -> float:
        """Lost probes as a percentage of those sent (0 when nothing was sent)."""
        return 100.0 * self.lost / self.transmitted if self.transmitted else 0.0

    def rtt_summary_ms(self) -> tuple[float, float, float, float] | None:
        """``(min, avg, max, mdev)`` in milliseconds, or None without any echo.

        ``mdev`` is iputils ping's: sqrt(mean(rtt^2) - mean(rtt)^2), the population
        standard deviation of the round-trip times.
        """
        if not self.rtts_ms:
            return None
        n = len(self.rtts_ms)
        mean = sum(self.rtts_ms) / n
        mean_sq = sum(r * r for r in self.rtts_ms) / n
        mdev = math.sqrt(max(mean_sq - mean * mean, 0.0))
        return min(self.rtts_ms), mean, max(self.rtts_ms), mdev

    def summary(self) -> str:
        """``4 transmitted, 3 received, 25% lost; rtt min/avg/max/mdev = a/b/c/d ms``."""
        line = (
            f"{self.transmitted} transmitted, {self.received} received, "
            f"{self.loss_percent:.4g}% lost"
        )
        rtt = self.rtt_summary_ms()
        if rtt is not None:
            line += "; rtt min/avg/max/mdev = " + "/".join(f"{v:.3f}" for v in rtt) + " ms"
        return line
