"""``--json-stream``: one JSON record per interval of a running transfer (schema
``udpxfer.stream/1``), built from the session's own counters, like iperf3's ``--json-stream``.

Each record has the counters over the interval that just ended (``interval``) and since the
transfer began (``total``); the command prints the final report as the last line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from udpxfer.protocol.receiver import ReceiverSession
    from udpxfer.protocol.sender import SenderSession

STREAM_SCHEMA = "udpxfer.stream/1"
DEFAULT_INTERVAL_S = 1.0
MIN_INTERVAL_S = 0.1  # the drivers look at progress every 0.1 s

_COUNTERS = ("bytes", "chunks", "datagrams", "resent", "lost")


@dataclass(slots=True)
class IntervalMeter:
    """Cuts one session's cumulative counters into intervals of ``interval_s`` seconds."""

    side: str  # "send" or "recv"
    interval_s: float
    started_at: float  # the session's start, on the driver's clock
    _last_at: float | None = None
    _last: dict[str, int | None] = field(default_factory=dict)

    def due(self, now: float) -> bool:
        """True when an interval has passed since the last record."""
        last = self.started_at if self._last_at is None else self._last_at
        return now - last >= self.interval_s

    def record(self, totals: dict[str, int | None], now: float, **extra: Any) -> dict[str, Any]:
        """The record for the interval ending ``now``, given the cumulative ``totals`` (None:
        a counter that means nothing here, such as datagrams over TCP)."""
        start = self.started_at if self._last_at is None else self._last_at
        span = max(0.0, now - start)
        elapsed = max(0.0, now - self.started_at)
        interval = {key: _delta(totals[key], self._last.get(key)) for key in _COUNTERS}
        self._last, self._last_at = dict(totals), now
        return {
            "schema": STREAM_SCHEMA,
            "side": self.side,
            "start_s": round(start - self.started_at, 6),
            "end_s": round(elapsed, 6),
            "interval": {**interval, "rate_bps": _rate(interval["bytes"] or 0, span)},
            "total": {
                **{key: totals[key] for key in _COUNTERS},
                "rate_bps": _rate(totals["bytes"] or 0, elapsed),
            },
            **extra,
        }


def _delta(now: int | None, before: int | None) -> int | None:
    return None if now is None else now - (before or 0)


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / seconds if seconds > 0 else 0.0


def sender_record(meter: IntervalMeter, session: SenderSession, now: float) -> dict[str, Any]:
    """A sender's record: ``bytes`` are file bytes of chunks sent (first pass and resends),
    ``lost`` is what the receiver's last STATUS says did not arrive."""
    stats, meta = session.stats(), session.meta
    lost, seen = stats.reported_lost, stats.reported_seen
    chunks = stats.first_pass_sent
    totals: dict[str, int | None] = {
        "bytes": min(meta.size, chunks * meta.chunk_size) + stats.chunks_resent * meta.chunk_size,
        "chunks": chunks,
        "datagrams": stats.datagrams_sent,
        "resent": stats.chunks_resent,
        "lost": lost,
    }
    srtt = stats.srtt_s
    return meter.record(
        totals,
        now,
        session_id=f"{meta.session:016x}",
        name=meta.name,
        loss_rate=lost / seen if seen else 0.0,
        acknowledged=stats.acknowledged,
        window=stats.window,
        rtt_ms=srtt * 1000 if srtt is not None else None,
    )


def receiver_record(meter: IntervalMeter, session: ReceiverSession, now: float) -> dict[str, Any]:
    """A receiver's record: ``bytes`` and ``chunks`` are distinct chunks now held, ``lost``
    the transmissions so far that never arrived, ``resent`` resent chunks that did."""
    from udpxfer.reports.report import peer_text  # the receiving side's module (numpy)

    stats = session.stats()
    meta = stats.meta
    size = meta.size if meta is not None else 0
    seen = stats.transmissions_seen
    arrived = stats.data_received - stats.duplicates
    lost = max(0, seen - arrived)
    totals: dict[str, int | None] = {
        "bytes": min(size, stats.held * stats.chunk_size),
        "chunks": stats.held,
        "datagrams": stats.data_received,
        "resent": stats.retransmitted,
        "lost": lost,
    }
    return meter.record(
        totals,
        now,
        session_id=f"{stats.session_id:016x}",
        name=meta.name if meta is not None else None,
        peer=peer_text(stats.peer),
        loss_rate=lost / seen if seen else 0.0,
        window=stats.window,
        rtt_ms=None,  # the receiver does not time round trips
    )


class ByteStream:
    """``--json-stream`` records of a byte stream (a TCP transfer): bytes and rates only, the
    datagram counters null. ``update(n)`` as a progress display is told; ``close()`` emits the
    last record."""

    def __init__(
        self,
        side: str,
        name: str,
        interval_s: float,
        emit: Callable[[dict[str, Any]], None],
        clock: Callable[[], float],
    ) -> None:
        self._meter = IntervalMeter(side, interval_s, clock())
        self._name, self._emit, self._clock = name, emit, clock
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = self._clock()
        if self._meter.due(now):
            self._emit(self._record(now))

    def close(self) -> None:
        self._emit(self._record(self._clock()))

    def _record(self, now: float) -> dict[str, Any]:
        totals: dict[str, int | None] = dict.fromkeys(_COUNTERS)
        totals["bytes"] = self.done
        return self._meter.record(
            totals, now, transport="tcp", name=self._name, loss_rate=None, window=None, rtt_ms=None
        )
