"""The ground truth of an impaired link: a record per datagram and counters per direction."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from udpxfer.errors import MalformedPacket
from udpxfer.lab.impair.models import Direction
from udpxfer.protocol import codec, wire

Datagram = bytes | bytearray | memoryview


class DropCause(StrEnum):
    """Why a datagram was not delivered."""

    LOSS = "loss"  # random loss
    GILBERT = "gilbert"  # Gilbert-Elliott burst loss
    QUEUE = "queue"  # tail drop at the bottleneck queue
    SHUTDOWN = "shutdown"  # still held when the relay stopped


# The log columns, in order (docs/IMPAIR.md describes them).
LOG_COLUMNS = (
    "dir",
    "seq",
    "t_s",
    "size",
    "action",
    "cause",
    "delay_ms",
    "duplicated",
    "corrupted",
    "corrupt_bit",
    "reordered",
    "type",
    "session",
    "index",
    "resent",
)


@dataclass(slots=True)
class Record:
    """The ground truth about one datagram that arrived: what it was and what was done to it."""

    direction: Direction
    seq: int  # 0, 1, 2, ... in order of arrival in this direction
    arrival_s: float  # the ``now`` it arrived with
    size: int
    packet_type: str | None = None  # udpxfer packet type name, None if not one of ours
    session: int | None = None
    index: int | None = None  # DATA: the chunk index
    resent: bool | None = None  # DATA: the RESENT flag
    delivered: bool = True
    cause: DropCause | None = None
    delay_s: float | None = None  # scheduled release minus arrival, for delivered datagrams
    duplicated: bool = False
    corrupted: bool = False
    corrupt_bit: int | None = None  # which bit was flipped (byte * 8 + bit, LSB = 0)
    reordered: bool = False

    def as_row(self, epoch: float = 0.0) -> dict[str, object]:
        """The record as a log row keyed by ``LOG_COLUMNS``; times relative to ``epoch``."""
        return {
            "dir": self.direction.value,
            "seq": self.seq,
            "t_s": round(self.arrival_s - epoch, 9),
            "size": self.size,
            "action": "delivered" if self.delivered else "dropped",
            "cause": None if self.cause is None else self.cause.value,
            "delay_ms": None if self.delay_s is None else round(self.delay_s * 1e3, 6),
            "duplicated": self.duplicated,
            "corrupted": self.corrupted,
            "corrupt_bit": self.corrupt_bit,
            "reordered": self.reordered,
            "type": self.packet_type,
            "session": None if self.session is None else f"{self.session:016x}",
            "index": self.index,
            "resent": self.resent,
        }


def classify(data: Datagram) -> tuple[str | None, int | None, int | None, bool | None]:
    """What a datagram is on the udpxfer wire: (type name, session, chunk index, resent).

    Anything that does not decode (foreign, truncated, failing its check) is ``(None, ...)``.
    """
    try:
        packet = codec.decode_untrusted(data)
    except MalformedPacket:
        return None, None, None, None
    if isinstance(packet, wire.Data):
        return wire.PacketType.DATA.name, packet.session, packet.index, packet.resent
    return wire.PacketType(data[5]).name, packet.session, None, None


@dataclass(slots=True)
class DirectionStats:
    """Counters of one direction, for the summary."""

    direction: Direction
    datagrams_in: int = 0
    bytes_in: int = 0
    delivered: int = 0  # datagrams sent on (a duplicate pair counts once)
    dropped_loss: int = 0
    dropped_gilbert: int = 0
    dropped_queue: int = 0
    dropped_shutdown: int = 0
    duplicated: int = 0  # extra copies sent
    corrupted: int = 0
    reordered: int = 0
    delay_sum_s: float = 0.0  # over delivered datagrams

    @property
    def dropped(self) -> int:
        """All datagrams not delivered."""
        return self.dropped_loss + self.dropped_gilbert + self.dropped_queue + self.dropped_shutdown

    @property
    def mean_delay_s(self) -> float:
        """Mean scheduled delay of delivered datagrams (0 when none)."""
        return self.delay_sum_s / self.delivered if self.delivered else 0.0

    def count_drop(self, cause: DropCause) -> None:
        """Count one datagram dropped for ``cause``."""
        name = f"dropped_{cause.value}"
        setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, object]:
        """The counters as plain JSON-ready values."""
        return {
            "datagrams_in": self.datagrams_in,
            "bytes_in": self.bytes_in,
            "delivered": self.delivered,
            "dropped": {
                "loss": self.dropped_loss,
                "gilbert": self.dropped_gilbert,
                "queue": self.dropped_queue,
                "shutdown": self.dropped_shutdown,
            },
            "duplicated": self.duplicated,
            "corrupted": self.corrupted,
            "reordered": self.reordered,
            "mean_delay_ms": round(self.mean_delay_s * 1e3, 6),
        }

    def summary_line(self) -> str:
        """One line for the exit summary."""
        return (
            f"{self.direction.value}: {self.datagrams_in} in, {self.delivered} delivered, "
            f"{self.dropped} dropped (loss {self.dropped_loss}, gilbert {self.dropped_gilbert}, "
            f"queue {self.dropped_queue}, shutdown {self.dropped_shutdown}), "
            f"{self.duplicated} duplicated, {self.corrupted} corrupted, "
            f"{self.reordered} reordered, mean delay {self.mean_delay_s * 1e3:.3f} ms"
        )
