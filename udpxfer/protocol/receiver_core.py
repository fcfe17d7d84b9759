"""A receiver session's fields, the one place its state changes, and the views read from it.

``receiver.ReceiverSession`` is this core with the data path (``receiver_data``) and the
feedback to the sender (``receiver_feedback``) mixed in; each part reads and writes the
fields declared here, and every change of state goes through ``_step`` (the table is in
``receiver_state``). The endpoint, the driver and the reports only read: ``stats()`` and the
views below.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from udpxfer.protocol.codec import encode
from udpxfer.protocol.events import Event, Outcome, TransferEnded, VerifyRequested
from udpxfer.protocol.framing import CRC, Seal
from udpxfer.protocol.online import OnlineStats
from udpxfer.protocol.ranges import Bitmap, missing_ranges
from udpxfer.protocol.receiver_state import (
    OVER_STATES,
    TRANSFER_STATES,
    ReceiverState,
    Step,
    next_state,
)
from udpxfer.protocol.receiver_trace import TraceRecorder
from udpxfer.protocol.wire import (
    NO_DIGEST,
    NONCE_BYTES,
    Abort,
    Done,
    Meta,
    Packet,
    Verdict,
)

if TYPE_CHECKING:
    from udpxfer.protocol.receiver import ReceiverConfig

Peer = Hashable
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
SessionT = TypeVar("SessionT")


@dataclass(frozen=True, slots=True)
class ReceiverStats:
    """A receiver session's counters and timings at one moment (``ReceiverSession.stats``):
    what its report and ``--json-stream`` records say. Cheap to take: nothing here walks the
    chunk maps (``gaps``, ``not_sent`` and the like do)."""

    peer: Peer
    session_id: int
    meta: Meta | None  # None before the transfer's metadata arrived
    outcome: TransferEnded | None  # None while the transfer is under way
    complete: bool  # every chunk is held
    sha256_actual: bytes | None  # the driver's hash of the stored file
    chunk_size: int
    held: int  # distinct chunks held (resumed ones included)
    resumed: int  # chunks found verified on disk when the transfer started
    sent_upto: int  # the first pass covered chunks [0, sent_upto) as far as we know
    data_received: int  # valid DATA datagrams, duplicates included
    transmissions_seen: int  # DATA transmissions up to the highest numbered one that arrived
    duplicates: int
    out_of_order: int
    corrupt: int
    retransmitted: int
    datagrams: int  # datagrams attributed to this session
    tx_sent: int  # data datagrams the sender says it sent (-1: it never said)
    rounds: int
    nacks_sent: int
    bad_blocks: int
    window: int
    started_at: float
    last_heard: float
    last_data_at: float | None  # arrival of the last new chunk
    finished_at: float | None


class EventSink(Generic[SessionT]):
    """The endpoint's queue of (session, event) pairs, and whether any of its sessions has
    queued feedback since the endpoint last collected it (so an idle flush looks at none)."""

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[SessionT, Event]] = collections.deque()
        self.outgoing = False

    def emit(self, session: SessionT, event: Event) -> None:
        self.queue.append((session, event))


class ReceiverCore:
    """One incoming transfer's fields, its state steps, and the views of it."""

    def __init__(
        self,
        peer: Peer,
        session_id: int,
        now: float,
        config: ReceiverConfig,
        events: EventSink[Any],
        *,
        seal: Seal = CRC,
        handshake_seal: Seal | None = None,
        nonce: bytes = bytes(NONCE_BYTES),
    ) -> None:
        self.peer = peer
        self.session_id = session_id
        self.config = config
        self.state = ReceiverState.AWAITING_META
        self.meta: Meta | None = None
        self.validated = False  # the source echoed our address token
        self.nonce = nonce  # our session nonce (key derivation)
        self.seal = seal  # the session's datagrams
        self.handshake_seal = handshake_seal or seal  # HELLO, before the sender has our nonce
        self.started_at = now
        self.last_data_at: float | None = None  # arrival of the last new chunk
        self.last_heard = now
        self.finished_at: float | None = None
        self.outcome: TransferEnded | None = None
        self.verdict: Verdict | None = None
        self.sha256_actual: bytes | None = None
        self.held = Bitmap(0)
        self.first_pass = Bitmap(0)
        self.held_count = 0
        self.resumed = 0  # chunks found verified on disk when the transfer started
        self.contiguous = 0  # chunks held from the start of the file without a hole
        self.sent_upto = 0  # the first pass covered chunks [0, sent_upto) as far as we know
        self.online: OnlineStats | None = None  # from the transfer's start (record_trace)
        self._staged = TraceRecorder()  # rows of ``on_data`` waiting for ``online``
        self.trace = TraceRecorder() if config.stream_trace else None  # for the driver

        self.datagrams = 0  # datagrams attributed to this session
        self.pending_bytes = 0  # bytes kept before metadata
        self.refusal = ""  # why the receiver refused it, if it did
        self.data_received = 0  # valid DATA datagrams, duplicates included
        self.duplicates = 0
        self.out_of_order = 0
        self.corrupt = 0
        self.retransmitted = 0
        self.nacks_sent = 0
        self.rounds = 0
        self.tx_sent = -1  # data datagrams the sender says it sent (from END)
        self.window = 0
        self.bytes_in_round = 0  # bytes received since the last END was answered
        self.rejected_rows = 0  # rows of the last on_data_batch with no place in this file

        self._events = events
        self._pending_packets: list[Packet] = []
        self._resumed: Bitmap | None = None
        self.manifest: list[bytes | None] = []  # SHA-256 per block, as MANIFEST brings them
        self.block_repairs = 0  # times blocks failed their hash and were fetched again
        # The whole-file hash failed and the block hashes are still to come: they are asked
        # for (NACK of kind 1) until they are all here, then the bad blocks are found.
        self.manifest_needed = False
        self.waiting_since = 0.0  # when the hash of a file that waits for either was done
        self.bad_blocks = 0
        self._outgoing: list[bytes] = []
        self._status_wanted: tuple[int, float, float] | None = None  # echo, arrival, request
        self._hello_wanted: int | None = None  # echo_ns of the META to answer
        self._have_sent = False
        self._pn = 0  # our control packet number (session keys)
        self._highest_tx = -1
        self._last_sent_ns = 0
        self._stamp_origin = 0
        self._end_seen_at: float | None = None
        self._answered_round: tuple[int, int] = (-1, 0)  # (round, NACK bytes sent for it)
        self._chunk_size = 0
        self._last_len = 0
        self._chunk_count = 0

    # -- the state: every change goes through _step ------------------------------------

    def _step(self, step: Step) -> None:
        """The one place the session's state changes (``receiver_state`` holds the table)."""
        self.state = next_state(self.state, step)

    def _all_held(self) -> None:
        """Every chunk is held: the driver is asked to hash the file."""
        if self.state is ReceiverState.RECEIVING:
            self._step(Step.ALL_HELD)
            self._events.emit(self, VerifyRequested())

    def _end(self, now: float, outcome: Outcome, reason: str) -> None:
        """The transfer is over (``TransferEnded``); lingering answers repeated ENDs."""
        self._step(Step.END)
        self.finished_at = now
        self.outcome = TransferEnded(outcome, reason, self.verdict)
        self._events.emit(self, self.outcome)

    def _send_status(self, echo_ns: int, now: float, queued_s: float = 0.0) -> None:
        # One STATUS per flush is enough: its counters are cumulative; it echoes the newest.
        self._status_wanted = (echo_ns, now - queued_s, now)
        self._events.outgoing = True

    def _queue(self, packet: Abort | Done) -> None:
        """A control packet to send, numbered and sealed now."""
        self._outgoing.append(encode(_with_pn(packet, self._next_pn()), self.seal))
        self._events.outgoing = True

    def _next_pn(self) -> int:
        self._pn += 1
        return self._pn

    # -- views -------------------------------------------------------------------------

    def stats(self) -> ReceiverStats:
        """The counters and timings now, as one value."""
        return ReceiverStats(
            peer=self.peer,
            session_id=self.session_id,
            meta=self.meta,
            outcome=self.outcome,
            complete=self.complete,
            sha256_actual=self.sha256_actual,
            chunk_size=self._chunk_size,
            held=self.held_count,
            resumed=self.resumed,
            sent_upto=self.sent_upto,
            data_received=self.data_received,
            transmissions_seen=self._highest_tx + 1,
            duplicates=self.duplicates,
            out_of_order=self.out_of_order,
            corrupt=self.corrupt,
            retransmitted=self.retransmitted,
            datagrams=self.datagrams,
            tx_sent=self.tx_sent,
            rounds=self.rounds,
            nacks_sent=self.nacks_sent,
            bad_blocks=self.bad_blocks,
            window=self.window,
            started_at=self.started_at,
            last_heard=self.last_heard,
            last_data_at=self.last_data_at,
            finished_at=self.finished_at,
        )

    @property
    def chunk_size(self) -> int:
        """Bytes per chunk of this transfer (0 before META)."""
        return self._chunk_size

    @property
    def closed(self) -> bool:
        """True once the session is over, lingering included."""
        return self.state in OVER_STATES

    @property
    def transmissions_seen(self) -> int:
        """DATA transmissions up to the highest numbered one that arrived."""
        return self._highest_tx + 1

    @property
    def is_transfer(self) -> bool:
        """True once valid metadata started a transfer."""
        return self.state in TRANSFER_STATES

    @property
    def complete(self) -> bool:
        """Every chunk is held."""
        return self.meta is not None and self.held_count == self.meta.chunk_count

    @property
    def state_bytes(self) -> int:
        """Memory of this session's chunk maps."""
        return len(self.held.bits) + len(self.first_pass.bits)

    @property
    def not_sent(self) -> int:
        """Chunks missing that the sender never sent (an interrupted transfer)."""
        if self.meta is None or self.complete:
            return 0
        missing_beyond = self._chunk_count - self.sent_upto
        if missing_beyond <= 0:
            return 0
        return missing_beyond - self._held_from(self.sent_upto)

    def gaps(self) -> list[tuple[int, int]]:
        """Chunks missing now, as inclusive ranges."""
        return self.held.missing_ranges()

    def first_pass_gaps(self) -> list[tuple[int, int]]:
        """Chunks sent on the first pass whose first transmission never arrived (chunks held
        from an earlier, resumed transfer were not sent and are not gaps)."""
        if self._resumed is not None:
            flags = self.first_pass.flags() | self._resumed.flags()
            return missing_ranges(flags[: self.sent_upto])
        return self.first_pass.missing_ranges(self.sent_upto)

    def resumed_bits(self) -> bytes:
        """Packed bits of the chunks found on disk when the transfer started (empty: none)."""
        return self._resumed.to_bytes() if self._resumed is not None else b""

    def resumed_below(self, limit: int) -> int:
        """Chunks among the first ``limit`` that were already on disk (a resumed transfer)."""
        if self._resumed is None:
            return 0
        return int(self._resumed.flags()[:limit].sum())

    def _held_from(self, start: int) -> int:
        return int(self.held.flags()[start:].sum())

    @property
    def waits_for_sender(self) -> bool:
        """Every chunk is held and hashed, and the digest or the block hashes are still to
        come from the sender."""
        return (
            self.state is ReceiverState.VERIFYING
            and self.sha256_actual is not None
            and (self.manifest_needed or self.meta is None or self.meta.sha256 == NO_DIGEST)
        )

    @property
    def manifest_complete(self) -> bool:
        """Every block's hash has arrived (a transfer without blocks has none to wait for)."""
        return bool(self.manifest) and all(d is not None for d in self.manifest)


def ns(now: float) -> int:
    """``now`` (float seconds) as integer nanoseconds, as the wire carries times."""
    return int(now * 1e9)


def _with_pn(packet: Abort | Done, pn: int) -> Abort | Done:
    return dataclasses.replace(packet, pn=pn)
