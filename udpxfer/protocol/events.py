"""Events the sans-IO sessions hand to their drivers (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from udpxfer.protocol.wire import Meta, Verdict


@dataclass(frozen=True, slots=True)
class TransferStarted:
    """Receiver: valid metadata arrived; the driver opens the output file."""

    meta: Meta


@dataclass(frozen=True, slots=True)
class ChunkReceived:
    """Receiver: a new chunk to store at ``offset``, from a datagram handed in on its own
    (the new chunks of a batch come back from ``receive_buffer`` as ``StoreRun``).

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


class Outcome(StrEnum):
    """How a transfer ended, on either side; the value is the report's ``outcome`` string.

    - ``complete``: every chunk arrived and the SHA-256 matched (verified).
    - ``mismatch``: every chunk arrived but the SHA-256 of the file does not match.
    - ``incomplete``: chunks are missing at the end (blast mode's gaps, or a receiver that gave
      up with chunks missing).
    - ``timeout``: the peer went silent for longer than the idle timeout.
    - ``aborted``: cancelled (Ctrl-C, the peer's ABORT, a file that could not be written, a
      newer transfer of the same file).
    - ``refused``: sender only: the receiver turned the transfer away (limits, busy).
    - ``unauthenticated``: sender only: the keys did not match (no answer could be opened).
    - ``sent``: sender only: everything was sent, but no verdict came back (blast mode).
    """

    COMPLETE = "complete"
    MISMATCH = "mismatch"
    INCOMPLETE = "incomplete"
    TIMEOUT = "timeout"
    ABORTED = "aborted"
    REFUSED = "refused"
    UNAUTHENTICATED = "unauthenticated"
    SENT = "sent"


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """Either side: the transfer is over, with its ``outcome`` and a ``reason`` for a person.

    ``verdict`` is the receiver's verdict when the sender learnt it.
    """

    outcome: Outcome
    reason: str = ""
    verdict: Verdict | None = None


Event = (
    TransferStarted | ChunkReceived | VerifyRequested | NackSent | RepairRequested | TransferEnded
)
