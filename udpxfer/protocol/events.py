"""Events the sans-IO sessions hand to their drivers (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from udpxfer.protocol.wire import Meta, Verdict


@dataclass(frozen=True, slots=True)
class TransferStarted:
    """Receiver: valid metadata arrived; the driver opens the output file."""

    meta: Meta


@dataclass(frozen=True, slots=True)
class ChunkReceived:
    """Receiver: a new chunk to store at ``offset``.

    ``payload`` may be a view into the driver's receive buffer: store it before the next
    datagram is received.
    """

    index: int
    offset: int
    payload: bytes | memoryview


@dataclass(frozen=True, slots=True)
class VerifyRequested:
    """Receiver: every chunk is held; the driver hashes the file and calls ``hash_computed``."""


@dataclass(frozen=True, slots=True)
class NackSent:
    """Receiver: missing chunks were requested again after ``round``."""

    round: int
    missing: int


@dataclass(frozen=True, slots=True)
class RepairRequested:
    """Sender: the receiver asked for ``chunks`` chunks again after ``round``."""

    round: int
    chunks: int


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """Either side: the transfer is over.

    ``outcome`` is one of ``complete`` (verified), ``mismatch``, ``incomplete`` (blast mode
    finished with gaps), ``timeout``, ``aborted``. ``verdict`` is the receiver's verdict when
    the sender learnt it.
    """

    outcome: str
    reason: str = ""
    verdict: Verdict | None = None


Event = (
    TransferStarted | ChunkReceived | VerifyRequested | NackSent | RepairRequested | TransferEnded
)
