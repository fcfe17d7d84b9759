"""The sans-IO receiver session: one incoming transfer, from its first datagram to its verdict.

No sockets, clocks or files in here; ``endpoint.ReceiverEndpoint`` routes datagrams to
sessions, and the driver stores the chunks a session hands out, hashes the file when asked
(``VerifyRequested``) and sends what ``datagrams_to_send`` returns. Every transition of the
session's state happens in this module.

Datagrams that arrive before a transfer's metadata are kept (bounded) and replayed once a
META copy arrives, so losing the first META copies costs nothing.
"""

from __future__ import annotations

import collections
from array import array
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import Enum, auto

from udpxfer.events import (
    ChunkReceived,
    Event,
    NackSent,
    TransferEnded,
    TransferStarted,
    VerifyRequested,
)
from udpxfer.ranges import batched, missing_ranges
from udpxfer.wire import (
    HEADER_BYTES,
    MAX_NACK_RANGES,
    Abort,
    AbortCode,
    Data,
    Done,
    End,
    Flags,
    Meta,
    Mode,
    Nack,
    Packet,
    Status,
    Verdict,
    encode,
)

Peer = Hashable
Payload = bytes | memoryview
ChunkSink = Callable[["ReceiverSession", int, Payload], None]
_RESENT = int(Flags.RESENT)
_ACK_REQUESTED = int(Flags.ACK_REQUESTED)
# Bits of a trace record's flags (udpxfer.trace reads them back).
TRACE_RESENT = 1  # the RESENT wire flag, kept as is
TRACE_DUPLICATE = 2  # the chunk was already held when this datagram arrived
# Per-datagram cost in a socket buffer beyond the payload (sk_buff and slab rounding); an
# estimate on the safe side so that the advertised window never overfills the buffer.
_BUFFER_OVERHEAD_BYTES = 1200


class ReceiverState(Enum):
    """Where a receiver session is; every transition happens in this module."""

    AWAITING_META = auto()  # datagrams of an unknown session, kept until META arrives
    PROBATION = auto()  # META arrived; nothing is created until DATA or END follows it
    RECEIVING = auto()
    VERIFYING = auto()  # every chunk held, the driver is hashing
    FINISHED = auto()  # verdict reached; lingering to answer repeated ENDs
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """Tunables of the receiver."""

    idle_timeout_s: float = 5.0  # silence after which a transfer is given up
    blast_grace_s: float = 0.5  # blast: wait after END for late or reordered chunks
    linger_s: float = 1.0  # after the verdict, answer repeated ENDs for this long
    buffer_bytes: int = 4 << 20  # the socket receive buffer, for the flow-control window
    max_window: int = 16384
    max_nack_datagrams: int = 64  # NACK datagrams per round at most
    max_pending_sessions: int = 64  # unknown sessions whose datagrams are kept
    max_pending_datagrams: int = 4096  # per unknown session
    max_file_bytes: int | None = None  # refuse larger transfers
    max_chunks: int = 1 << 28  # two bytes of state per chunk: 512 MiB at most per transfer
    max_transfers: int = 32  # transfers in progress at once
    record_trace: bool = True


class TraceRecorder:
    """Per-datagram records of one transfer, appended cheaply, read as numpy arrays later."""

    __slots__ = ("arrival_ns", "flags", "index", "pass_no", "sent_ns", "tx")

    def __init__(self) -> None:
        self.index = array("q")
        self.tx = array("q")
        self.sent_ns = array("q")
        self.arrival_ns = array("q")
        self.pass_no = array("B")
        self.flags = array("B")

    def __len__(self) -> int:
        return len(self.index)


class ReceiverSession:
    """One incoming transfer."""

    def __init__(
        self,
        peer: Peer,
        session_id: int,
        now: float,
        config: ReceiverConfig,
        events: EventSink,
        store: ChunkSink,
    ) -> None:
        self.peer = peer
        self.session_id = session_id
        self.config = config
        self.state = ReceiverState.AWAITING_META
        self.meta: Meta | None = None
        self.started_at = now
        self.last_data_at: float | None = None  # arrival of the last new chunk
        self.last_heard = now
        self.finished_at: float | None = None
        self.outcome: TransferEnded | None = None
        self.verdict: Verdict | None = None
        self.sha256_actual: bytes | None = None
        self.held = bytearray()
        self.first_pass = bytearray()
        self.held_count = 0
        self.contiguous = 0  # chunks held from the start of the file without a hole
        self.trace = TraceRecorder() if config.record_trace else None

        self.datagrams = 0  # datagrams attributed to this session
        self.started = False  # a transfer: META followed up by DATA or END
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

        self._events = events
        self._store = store
        self._pending_packets: list[Packet] = []
        self._outgoing: list[bytes] = []
        self._status_wanted: tuple[int, float, float] | None = None  # echo, arrival, request
        self._highest_tx = -1
        self._last_sent_ns = 0
        self._end_seen_at: float | None = None
        self._chunk_size = 0
        self._last_len = 0
        self._chunk_count = 0

    # -- driven by the endpoint ---------------------------------------------------------

    def receive_packet(self, packet: Packet, now: float) -> bool:
        """Handle one decoded packet; False when it has no place in this transfer."""
        if self.state is ReceiverState.CLOSED:
            return False
        self.last_heard = now
        accepted = self._dispatch(packet, now)
        if accepted:
            self.datagrams += 1
        return accepted

    def _dispatch(self, packet: Packet, now: float) -> bool:
        if self.state is ReceiverState.AWAITING_META:
            return self._await_meta(packet, now)
        if self.state is ReceiverState.PROBATION:
            if isinstance(packet, Meta):
                return self._on_repeated_meta(packet)
            if not isinstance(packet, Data | End | Abort):
                return False
            self._begin(now)  # the sender follows its META up: this is a transfer
        match packet:
            case Data():
                return self.on_data(
                    packet.index,
                    packet.tx,
                    packet.payload,
                    packet.pass_no,
                    packet.flags,
                    packet.sent_ns,
                    now,
                )
            case End():
                self._on_end(packet, now)
                return True
            case Meta():
                return self._on_repeated_meta(packet)
            case Abort():
                if self.state is ReceiverState.RECEIVING or self.state is ReceiverState.VERIFYING:
                    self._end(now, "aborted", f"sender aborted: {packet.reason}")
                return True
        return False

    def hash_computed(self, digest: bytes, now: float) -> None:
        """The driver's SHA-256 of the stored file, after ``VerifyRequested``."""
        if self.state is not ReceiverState.VERIFYING or self.meta is None:
            return
        self.sha256_actual = digest
        if digest == self.meta.sha256:
            self.verdict = Verdict.VERIFIED
            self._end(now, "complete", "")
        else:
            self.verdict = Verdict.MISMATCH
            self._end(now, "mismatch", "SHA-256 of the received file does not match")
        self._send_done(self._last_sent_ns, now)

    def datagrams_to_send(self, now: float | None = None) -> list[bytes]:
        """Feedback datagrams waiting to go to the peer.

        A wanted STATUS is encoded here, at send time, so that it reports how long the
        datagram it answers was held on our side (socket queue and processing).
        """
        out, self._outgoing = self._outgoing, []
        if self._status_wanted is not None:
            echo_ns, arrived, created = self._status_wanted
            self._status_wanted = None
            held_s = (now if now is not None else created) - arrived
            status = Status(
                self.session_id,
                echo_ns,
                self._highest_tx,
                self.held_count,
                self.window,
                _ns(created),
                self.data_received,
                min(max(int(held_s * 1e9), 0), 0xFFFFFFFF),
            )
            out.append(encode(status))
        return out

    @property
    def has_outgoing(self) -> bool:
        """True when feedback waits to be sent."""
        return bool(self._outgoing) or self._status_wanted is not None

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next."""
        if self.state is ReceiverState.CLOSED or self.state is ReceiverState.VERIFYING:
            return None
        if self.state is ReceiverState.FINISHED:
            return self.last_heard + self.config.linger_s
        deadline = self.last_heard + self.config.idle_timeout_s
        if self._end_seen_at is not None and self.meta is not None and self.meta.mode is Mode.BLAST:
            deadline = min(deadline, self._end_seen_at + self.config.blast_grace_s)
        return deadline

    def handle_timer(self, now: float) -> None:
        """Idle timeout, blast-mode grace after END, end of lingering."""
        state = self.state
        if state is ReceiverState.FINISHED:
            if now >= self.last_heard + self.config.linger_s:
                self.state = ReceiverState.CLOSED
            return
        if state is ReceiverState.AWAITING_META or state is ReceiverState.PROBATION:
            timer = self.get_timer()
            if timer is not None and now >= timer:
                self.state = ReceiverState.CLOSED  # never a transfer: nothing was created
            return
        if state is not ReceiverState.RECEIVING:
            return
        if now >= self.last_heard + self.config.idle_timeout_s:
            self._end(now, "timeout", f"sender silent for {self.config.idle_timeout_s:g} s")
            self._outgoing.append(
                encode(Abort(self.session_id, AbortCode.TIMEOUT, "receiver timed out", _ns(now)))
            )
        elif (
            self._end_seen_at is not None
            and self.meta is not None
            and self.meta.mode is Mode.BLAST
            and now >= self._end_seen_at + self.config.blast_grace_s
        ):
            self._finish_blast(now)

    def close(self, now: float, reason: str) -> None:
        """The receiver is shutting down: end the transfer as aborted and tell the sender."""
        if self.state is ReceiverState.RECEIVING or self.state is ReceiverState.VERIFYING:
            self._end(now, "aborted", reason)
            self._outgoing.append(
                encode(Abort(self.session_id, AbortCode.CANCELLED, reason, _ns(now)))
            )
        self.state = ReceiverState.CLOSED

    def refuse(self, reason: str, now: float) -> None:
        """Turn the sender away before anything was created (limits, too many transfers)."""
        self.refusal = reason
        self.state = ReceiverState.CLOSED
        self._outgoing.append(encode(Abort(self.session_id, AbortCode.REFUSED, reason, _ns(now))))

    # -- views for reports ---------------------------------------------------------------

    @property
    def chunk_size(self) -> int:
        """Bytes per chunk of this transfer (0 before META)."""
        return self._chunk_size

    @property
    def transmissions_seen(self) -> int:
        """DATA transmissions up to the highest numbered one that arrived."""
        return self._highest_tx + 1

    @property
    def is_transfer(self) -> bool:
        """True once valid metadata, followed up by the sender, started a transfer."""
        return self.started

    @property
    def complete(self) -> bool:
        """Every chunk is held."""
        return self.meta is not None and self.held_count == self.meta.chunk_count

    def gaps(self) -> list[tuple[int, int]]:
        """Chunks missing now, as inclusive ranges."""
        return missing_ranges(self.held)

    def first_pass_gaps(self) -> list[tuple[int, int]]:
        """Chunks whose first transmission never arrived, as inclusive ranges."""
        return missing_ranges(self.first_pass)

    # -- transitions ---------------------------------------------------------------------

    def _await_meta(self, packet: Packet, now: float) -> bool:
        if isinstance(packet, Meta):
            self._on_meta(packet, now)
            replay, self._pending_packets = self._pending_packets, []
            for kept in replay:
                self._dispatch(kept, now)  # counted when they arrived
            return True
        if isinstance(packet, Data | End | Abort):
            if len(self._pending_packets) >= self.config.max_pending_datagrams:
                return False
            if isinstance(packet, Data):
                packet = Data(
                    packet.session,
                    packet.index,
                    packet.tx,
                    bytes(packet.payload),
                    packet.pass_no,
                    packet.flags,
                    packet.sent_ns,
                )
            self._pending_packets.append(packet)
            return True
        return False

    def _on_meta(self, meta: Meta, now: float) -> None:
        """The first META: refuse it, or wait on probation for the sender to follow it up."""
        limit = self.config.max_file_bytes
        refusal = ""
        if limit is not None and meta.size > limit:
            refusal = f"file of {meta.size} bytes exceeds the receiver's limit of {limit}"
        elif meta.chunk_count > self.config.max_chunks:
            refusal = (
                f"{meta.chunk_count} chunks exceed the receiver's limit of "
                f"{self.config.max_chunks}: use a larger chunk size"
            )
        if refusal:
            self.refuse(refusal, now)
            return
        self.meta = meta
        self.state = ReceiverState.PROBATION
        per_datagram = meta.chunk_size + HEADER_BYTES + _BUFFER_OVERHEAD_BYTES
        self.window = max(
            8, min(self.config.max_window, self.config.buffer_bytes // 2 // per_datagram)
        )
        self._send_status(meta.sent_ns, now)  # opens the sender's window

    def _begin(self, now: float) -> None:
        """Promote from probation: the transfer starts, the driver creates its file."""
        meta = self.meta
        assert meta is not None
        self.started = True
        self.started_at = now
        self.state = ReceiverState.RECEIVING
        self._chunk_size = meta.chunk_size
        self._chunk_count = meta.chunk_count
        self._last_len = meta.size - (meta.chunk_count - 1) * meta.chunk_size
        self.held = bytearray(meta.chunk_count)
        self.first_pass = bytearray(meta.chunk_count)
        self._events.emit(self, TransferStarted(meta))
        if meta.chunk_count == 0:
            self._all_held()

    def _on_repeated_meta(self, meta: Meta) -> bool:
        current = self.meta
        if current is None or (meta.name, meta.size, meta.chunk_size, meta.sha256, meta.mode) != (
            current.name,
            current.size,
            current.chunk_size,
            current.sha256,
            current.mode,
        ):
            return False
        if self.state is ReceiverState.RECEIVING or self.state is ReceiverState.PROBATION:
            self._send_status(meta.sent_ns, self.last_heard)
        return True

    def on_data(
        self,
        index: int,
        tx: int,
        payload: bytes | memoryview,
        pass_no: int,
        flags: int,
        sent_ns: int,
        now: float,
        queued_s: float = 0.0,
    ) -> bool:
        """One DATA datagram of this session (the endpoint's fast path calls this directly).

        Returns False when the chunk has no place in this file.
        """
        count = self._chunk_count
        if index >= count or len(payload) != (
            self._chunk_size if index < count - 1 else self._last_len
        ):
            return False
        self.last_heard = now
        self.data_received += 1
        held = self.held
        duplicate = held[index]
        if self.trace is not None:
            trace = self.trace
            trace.index.append(index)
            trace.tx.append(tx)
            trace.sent_ns.append(sent_ns)
            trace.arrival_ns.append(int(now * 1e9))
            trace.pass_no.append(pass_no)
            trace.flags.append((flags & _RESENT) | (TRACE_DUPLICATE if duplicate else 0))
        if tx > self._highest_tx:
            self._highest_tx = tx
        elif not duplicate:
            self.out_of_order += 1
        if flags & _RESENT:
            self.retransmitted += 1
        else:
            self.first_pass[index] = 1
        if duplicate:
            self.duplicates += 1
        elif self.state is ReceiverState.RECEIVING:
            held[index] = 1
            self.held_count += 1
            self.last_data_at = now
            self._store(self, index * self._chunk_size, payload)
            if index == self.contiguous:
                contiguous = index + 1
                while contiguous < count and held[contiguous]:
                    contiguous += 1
                self.contiguous = contiguous
            if self.held_count == count:
                self._all_held()
        if flags & _ACK_REQUESTED:
            self._send_status(sent_ns, now, queued_s)
        return True

    def _on_end(self, end: End, now: float) -> None:
        self._last_sent_ns = end.sent_ns
        self.tx_sent = max(self.tx_sent, end.tx_sent)
        if self._end_seen_at is None:
            self._end_seen_at = now
        if self.state is ReceiverState.FINISHED:
            if self.verdict is not None:
                self._send_done(end.sent_ns, now)
            return
        if self.state is ReceiverState.VERIFYING:
            # Hashing a large file takes a while: answer, so the sender knows we are alive.
            self._send_status(end.sent_ns, now)
            return
        if self.state is not ReceiverState.RECEIVING or self.meta is None:
            return
        if self.meta.mode is Mode.BLAST:
            return  # the grace timer finishes the transfer
        self.rounds = max(self.rounds, end.round)
        ranges = self.gaps()
        limit = self.config.max_nack_datagrams
        sent = 0
        for part in batched(ranges, MAX_NACK_RANGES):
            if sent == limit:
                break  # the rest waits for the next round
            self._outgoing.append(
                encode(Nack(self.session_id, end.round, end.sent_ns, tuple(part), _ns(now)))
            )
            sent += 1
        self.nacks_sent += sent
        self._events.emit(self, NackSent(end.round, self._chunk_count - self.held_count))

    def _finish_blast(self, now: float) -> None:
        if self.complete:
            self._all_held()
            return
        self.verdict = Verdict.INCOMPLETE
        self._end(now, "incomplete", "chunks missing after the blast")
        self._send_done(self._last_sent_ns, now)

    def _all_held(self) -> None:
        if self.state is ReceiverState.RECEIVING:
            self.state = ReceiverState.VERIFYING
            self._events.emit(self, VerifyRequested())

    def _end(self, now: float, outcome: str, reason: str) -> None:
        self.state = ReceiverState.FINISHED
        self.finished_at = now
        self.outcome = TransferEnded(outcome, reason, self.verdict)
        self._events.emit(self, self.outcome)

    def _send_status(self, echo_ns: int, now: float, queued_s: float = 0.0) -> None:
        # One STATUS per flush is enough: its counters are cumulative; it echoes the newest.
        self._status_wanted = (echo_ns, now - queued_s, now)

    def _send_done(self, echo_ns: int, now: float) -> None:
        if self.verdict is None:
            return
        done = Done(
            self.session_id,
            self.verdict,
            self.held_count,
            self.sha256_actual or bytes(32),
            echo_ns,
            _ns(now),
        )
        self._outgoing.append(encode(done))


def _ns(now: float) -> int:
    return int(now * 1e9)


class EventSink:
    """The endpoint's queue of (session, event) pairs."""

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[ReceiverSession, Event]] = collections.deque()

    def emit(self, session: ReceiverSession, event: Event) -> None:
        self.queue.append((session, event))

    def store_as_event(self, session: ReceiverSession, offset: int, payload: Payload) -> None:
        """The default chunk sink: a ``ChunkReceived`` event (payload copied)."""
        self.queue.append(
            (session, ChunkReceived(offset // session.chunk_size, offset, bytes(payload)))
        )
