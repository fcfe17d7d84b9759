"""The sans-IO receiver session: one incoming transfer, from its metadata to its verdict.

No sockets, clocks or files in here; ``endpoint.ReceiverEndpoint`` routes datagrams to
sessions (and decides which sources may open one), and the driver stores the chunks a session
hands out, hashes the file when asked (``VerifyRequested``) and sends what
``datagrams_to_send`` returns. Every transition of the session's state happens in this module.

Every number a peer sends is bounded here before use: chunk indexes against the transfer,
ranges clamped, send stamps checked against the transfer's own clock, and no loop runs over a
peer-supplied range.
"""

from __future__ import annotations

import collections
import dataclasses
from array import array
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from udpxfer.protocol.batch import DataBatch
from udpxfer.protocol.events import (
    ChunkReceived,
    Event,
    NackSent,
    Outcome,
    TransferEnded,
    TransferStarted,
    VerifyRequested,
)
from udpxfer.protocol.online import TRACE_DUPLICATE, OnlineStats
from udpxfer.protocol.ranges import Bitmap, batched, missing_ranges
from udpxfer.protocol.receiver_state import (
    OVER_STATES,
    TRANSFER_STATES,
    ReceiverState,
    Step,
    next_state,
)
from udpxfer.protocol.wire import (
    CRC,
    HEADER_BYTES,
    MAX_NACK_RANGES,
    NONCE_BYTES,
    Abort,
    AbortCode,
    Data,
    Done,
    End,
    Flags,
    Have,
    Hello,
    HelloFlags,
    Manifest,
    Meta,
    Mode,
    Nack,
    Packet,
    RangeKind,
    Seal,
    Status,
    Verdict,
    encode,
)

Peer = Hashable
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
Payload = bytes | memoryview
_RESENT = int(Flags.RESENT)
_ACK_REQUESTED = int(Flags.ACK_REQUESTED)
# Per-datagram cost in a socket buffer beyond the payload (sk_buff and slab rounding); an
# estimate on the safe side so that the advertised window never overfills the buffer.
_BUFFER_OVERHEAD_BYTES = 1200
_ARANGE = np.arange(1 << 12, dtype=np.int64)  # row positions of a batch (at most 64 rows)
# A DATA stamp further than this from the transfer's META stamp is no clock of that sender.
MAX_STAMP_SPREAD_NS = 7 * 86400 * 10**9
MAX_HAVE_DATAGRAMS = 16


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """Tunables of the receiver (limits are documented in docs/SECURITY.md)."""

    idle_timeout_s: float = 20.0  # silence after which a transfer is given up
    blast_grace_s: float = 0.5  # blast: wait after END for late or reordered chunks
    linger_s: float = 1.0  # after the verdict, answer repeated ENDs for this long
    buffer_bytes: int = 4 << 20  # the socket receive buffer, for the flow-control window
    max_window: int = 16384
    max_nack_datagrams: int = 64  # NACK datagrams per round at most
    max_pending_sessions: int = 256  # sessions that are no transfer yet, in total
    max_pending_per_source: int = 8  # and per source address
    # Work a source may ask for before proving its address, per source host and second (token
    # buckets holding as many): a flood of check-valid forgeries is turned away before it.
    pending_opened_per_source_s: float = 16.0  # sessions that are no transfer yet, opened
    handshakes_per_source_s: float = 1000.0  # METAs of new sessions (tag, token HMAC, answer)
    max_pending_bytes: int = 256 << 10  # bytes kept before metadata, per unknown session
    max_file_bytes: int | None = None  # refuse larger transfers
    max_chunks: int = 1 << 28  # one bit of state per chunk and map: 64 MiB per transfer at most
    max_transfers: int = 32  # transfers in progress at once
    max_transfers_per_source: int = 8
    max_unvalidated_transfers: int = 8  # blast transfers from addresses that echoed no token
    max_state_bytes: int = 512 << 20  # chunk maps of all transfers together
    record_trace: bool = True  # keep the report's statistics (online, bounded memory)
    stream_trace: bool = False  # also hand per-datagram records to the driver (``--trace``)
    require_token: bool = True  # reliable transfers start only from a validated address


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


class TraceRecorder:
    """Per-datagram records, appended cheaply and taken out in chunks (``drain``): the rows
    waiting for the statistics, or for the driver to write them to a trace file."""

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

    def extend(
        self,
        index: I64,
        tx: I64,
        sent_ns: I64,
        arrival_ns: int,
        pass_no: npt.NDArray[np.integer[Any]],
        flags: npt.NDArray[np.integer[Any]],
    ) -> None:
        """Append a batch of records (columns of equal length)."""
        self.index.frombytes(index.astype(np.int64, copy=False).tobytes())
        self.tx.frombytes(tx.astype(np.int64, copy=False).tobytes())
        self.sent_ns.frombytes(sent_ns.astype(np.int64, copy=False).tobytes())
        self.arrival_ns.frombytes(np.full(index.size, arrival_ns, dtype=np.int64).tobytes())
        self.pass_no.frombytes(pass_no.astype(np.uint8, copy=False).tobytes())
        self.flags.frombytes(flags.astype(np.uint8, copy=False).tobytes())

    def append(
        self, index: int, tx: int, sent_ns: int, arrival_ns: int, pass_no: int, flags: int
    ) -> None:
        """Append one record."""
        self.index.append(index)
        self.tx.append(tx)
        self.sent_ns.append(sent_ns)
        self.arrival_ns.append(arrival_ns)
        self.pass_no.append(pass_no)
        self.flags.append(flags)

    def drain(self) -> dict[str, npt.NDArray[Any]]:
        """The records so far as numpy columns (copies); the recorder starts empty again."""
        out: dict[str, npt.NDArray[Any]] = {}
        for name, dtype in _RECORDER_COLUMNS:
            column = getattr(self, name)
            out[name] = np.frombuffer(column, dtype=dtype).copy()
            setattr(self, name, array(column.typecode))
        return out


_RECORDER_COLUMNS = (
    ("index", np.int64),
    ("tx", np.int64),
    ("sent_ns", np.int64),
    ("arrival_ns", np.int64),
    ("pass_no", np.uint8),
    ("flags", np.uint8),
)
_STAGED_ROWS = 256  # rows of the one-at-a-time path folded into the statistics at once


class ReceiverSession:
    """One incoming transfer."""

    def __init__(
        self,
        peer: Peer,
        session_id: int,
        now: float,
        config: ReceiverConfig,
        events: EventSink,
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

    # -- driven by the endpoint ---------------------------------------------------------

    def receive_packet(self, packet: Packet, now: float, size: int = 0) -> bool:
        """Handle one decoded packet of ``size`` bytes; False when it has no place here."""
        if self.state in OVER_STATES:
            return False
        self.last_heard = now
        accepted = self._dispatch(packet, now, size)
        if accepted:
            self.datagrams += 1
            self.bytes_in_round += size
        return accepted

    def receive_data(self, data: Data, now: float, queued_s: float = 0.0) -> bool:
        """One DATA datagram of a transfer (the endpoint's fast path): ``on_data``, counted
        as this session's; False when the chunk has no place in this file."""
        self.datagrams += 1
        return self.on_data(
            data.index, data.tx, data.payload, data.pass_no, data.flags, data.sent_ns, now, queued_s
        )

    def receive_batch(self, batch: DataBatch, now: float, queued_s: float = 0.0) -> I64:
        """DATA rows of a transfer from one receive: ``on_data_batch``, counted as this
        session's datagrams."""
        self.datagrams += len(batch)
        return self.on_data_batch(batch, now, queued_s)

    def count_corrupt(self) -> bool:
        """A datagram of this session failed its CRC: counted when this is a transfer; False
        when it is not one (the endpoint counts the datagram as rejected)."""
        if not self.is_transfer:
            return False
        self.corrupt += 1
        self.datagrams += 1
        return True

    def open_validated(self, meta: Meta, now: float) -> None:
        """A META whose token proved the source's address: the transfer starts now."""
        self.validated = True
        if self.state is ReceiverState.AWAITING_META:
            if not self._on_meta(meta, now):
                return
            replay, self._pending_packets = self._pending_packets, []
            self.pending_bytes = 0
            self._begin(now)
            for kept in replay:
                self._dispatch(kept, now, 0)
        elif self.state is ReceiverState.PROBATION:
            self._begin(now)
        self._hello_wanted = meta.sent_ns
        self._events.outgoing = True

    def open_unvalidated(self, meta: Meta, now: float) -> bool:
        """A blast META without a token: wait on probation for the sender to follow it up
        (the META is counted as this session's datagram, whatever it brings)."""
        self.datagrams += 1
        if self.state is not ReceiverState.AWAITING_META:
            return self._on_repeated_meta(meta)
        if not self._on_meta(meta, now):
            return True
        replay, self._pending_packets = self._pending_packets, []
        self.pending_bytes = 0
        for kept in replay:
            self._dispatch(kept, now, 0)
        return True

    def resume(self, chunks: Bitmap) -> None:
        """The driver found these chunks verified on disk (a resumed transfer): hold them.

        Called right after ``TransferStarted``, before any chunk of this session is stored.
        """
        if self.state is not ReceiverState.RECEIVING or chunks.size != self._chunk_count:
            return
        self._resumed = Bitmap.from_bytes(chunks.size, chunks.to_bytes())
        self.held = Bitmap.from_bytes(chunks.size, chunks.to_bytes())
        self.held_count = self.resumed = self.held.count()
        gaps = self.held.missing_ranges()
        self.contiguous = gaps[0][0] if gaps else self._chunk_count
        if self.held_count == self._chunk_count:
            self._all_held()

    def hash_computed(self, digest: bytes, now: float) -> None:
        """The driver's SHA-256 of the stored file, after ``VerifyRequested``."""
        if self.state is not ReceiverState.VERIFYING or self.meta is None:
            return
        self.sha256_actual = digest
        if digest == self.meta.sha256:
            self.verdict = Verdict.VERIFIED
            self._end(now, Outcome.COMPLETE, "")
        else:
            self.verdict = Verdict.MISMATCH
            self._end(now, Outcome.MISMATCH, "SHA-256 of the received file does not match")
        self._send_done(self._last_sent_ns, now)

    def datagrams_to_send(
        self, now: float | None = None, hello_pn: int | None = None
    ) -> list[bytes]:
        """Feedback datagrams waiting to go to the peer.

        A wanted STATUS is encoded here, at send time, so that it reports how long the
        datagram it answers was held on our side (socket queue and processing). A HELLO
        (``wants_hello``) takes ``hello_pn``, a number of the endpoint's handshake counter
        (None: the session's own).
        """
        out, self._outgoing = self._outgoing, []
        if self.wants_hello:
            assert self._hello_wanted is not None
            pn = self._next_pn() if hello_pn is None else hello_pn
            out.insert(0, self._hello(self._hello_wanted, now or self.last_heard, pn))
            self._hello_wanted = None
            if self.resumed and not self._have_sent:
                self._have_sent = True
                out[1:1] = self._haves(now or self.last_heard)
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
                self._next_pn(),
            )
            out.append(encode(status, self.seal))
        return out

    @property
    def has_outgoing(self) -> bool:
        """True when feedback waits to be sent."""
        return bool(self._outgoing) or self._status_wanted is not None or self.wants_hello

    @property
    def wants_hello(self) -> bool:
        """True when ``datagrams_to_send`` will send a HELLO (it takes a ``hello_pn``)."""
        return self._hello_wanted is not None and self.state is not ReceiverState.AWAITING_META

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next."""
        if self.state in OVER_STATES or self.state is ReceiverState.VERIFYING:
            return None
        if self.state is ReceiverState.FINISHED:
            return self.last_heard + self.config.linger_s
        if self.state is ReceiverState.AWAITING_META or self.state is ReceiverState.PROBATION:
            return self.last_heard + min(self.config.idle_timeout_s, 5.0)
        deadline = self.last_heard + self.config.idle_timeout_s
        if self._end_seen_at is not None and self.meta is not None and self.meta.mode is Mode.BLAST:
            deadline = min(deadline, self._end_seen_at + self.config.blast_grace_s)
        return deadline

    def handle_timer(self, now: float) -> None:
        """Idle timeout, blast-mode grace after END, end of lingering."""
        state = self.state
        if state is ReceiverState.FINISHED:
            if now >= self.last_heard + self.config.linger_s:
                self._step(Step.CLOSE)
            return
        if state is ReceiverState.AWAITING_META or state is ReceiverState.PROBATION:
            timer = self.get_timer()
            if timer is not None and now >= timer:
                self._step(Step.CLOSE)  # never a transfer: nothing was created
            return
        if state is not ReceiverState.RECEIVING:
            return
        if now >= self.last_heard + self.config.idle_timeout_s:
            self._end(now, Outcome.TIMEOUT, f"sender silent for {self.config.idle_timeout_s:g} s")
            self._queue(Abort(self.session_id, AbortCode.TIMEOUT, "receiver timed out", _ns(now)))
        elif (
            self._end_seen_at is not None
            and self.meta is not None
            and self.meta.mode is Mode.BLAST
            and now >= self._end_seen_at + self.config.blast_grace_s
        ):
            self._finish_blast(now)

    def close(self, now: float, reason: str, *, tell: bool = True) -> None:
        """The receiver is shutting down (or the file failed): end the transfer as aborted."""
        if self.state is ReceiverState.RECEIVING or self.state is ReceiverState.VERIFYING:
            self._end(now, Outcome.ABORTED, reason)
            if tell:
                self._queue(Abort(self.session_id, AbortCode.CANCELLED, reason, _ns(now)))
        self._step(Step.CLOSE)

    def supersede(self, now: float) -> None:
        """The same sender started this file again (a resume): end this session quietly."""
        if self.state is ReceiverState.RECEIVING:
            self._end(now, Outcome.ABORTED, "superseded by a new transfer of the same file")
        self._step(Step.CLOSE)

    def refuse(self, reason: str, now: float, code: AbortCode = AbortCode.REFUSED) -> None:
        """Turn the sender away before anything was created (limits, too many transfers)."""
        self.refusal = reason
        self._step(Step.CLOSE)
        self._queue(Abort(self.session_id, code, reason, _ns(now)))

    # -- views for reports ---------------------------------------------------------------

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

    def online_stats(self) -> OnlineStats | None:
        """The online statistics with every row folded in (None: ``record_trace`` is off)."""
        self.flush_online()
        return self.online

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

    # -- transitions ---------------------------------------------------------------------

    def _dispatch(self, packet: Packet, now: float, size: int) -> bool:
        if self.state is ReceiverState.AWAITING_META:
            return self._await_meta(packet, size)
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
                self._on_abort(packet, now)
                return True
            case Manifest():
                return self._on_manifest(packet)
        return False

    def _await_meta(self, packet: Packet, size: int) -> bool:
        if not isinstance(packet, Data | End | Abort):
            return False
        if self.pending_bytes + size > self.config.max_pending_bytes:
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
        self.pending_bytes += size
        self._pending_packets.append(packet)
        return True

    def _on_meta(self, meta: Meta, now: float) -> bool:
        """The first META: refuse it, or keep it (probation until validated or followed up)."""
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
            return False
        self.meta = meta
        self._stamp_origin = meta.sent_ns
        self._step(Step.META)
        per_datagram = meta.chunk_size + HEADER_BYTES + _BUFFER_OVERHEAD_BYTES
        self.window = max(
            8, min(self.config.max_window, self.config.buffer_bytes // 2 // per_datagram)
        )
        self._send_status(meta.sent_ns, now)  # opens a blast sender's window
        return True

    def _begin(self, now: float) -> None:
        """The transfer starts: the driver creates (or resumes) its file."""
        meta = self.meta
        assert meta is not None
        self.started_at = now
        self._step(Step.BEGIN)
        self._chunk_size = meta.chunk_size
        self._chunk_count = meta.chunk_count
        self._last_len = meta.size - (meta.chunk_count - 1) * meta.chunk_size
        self.held = Bitmap(meta.chunk_count)
        self.first_pass = Bitmap(meta.chunk_count)
        if self.config.record_trace:
            self.online = OnlineStats(meta.chunk_count, meta.chunk_size, meta.size, _ns(now))
        if meta.block_chunks and meta.mode is Mode.RELIABLE:
            self.manifest = [None] * -(-meta.chunk_count // meta.block_chunks)
        self._events.emit(self, TransferStarted(meta))
        if meta.chunk_count == 0:
            self._all_held()

    def _on_repeated_meta(self, meta: Meta) -> bool:
        current = self.meta
        if current is None or (
            meta.name,
            meta.size,
            meta.chunk_size,
            meta.sha256,
            meta.mode,
            meta.nonce,
        ) != (
            current.name,
            current.size,
            current.chunk_size,
            current.sha256,
            current.mode,
            current.nonce,
        ):
            return False
        if self.state is ReceiverState.RECEIVING or self.state is ReceiverState.PROBATION:
            if self.validated:
                self._hello_wanted = meta.sent_ns  # the HELLO may have been lost
                self._events.outgoing = True
            else:
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
        if (
            index >= count
            or len(payload) != (self._chunk_size if index < count - 1 else self._last_len)
            or abs(sent_ns - self._stamp_origin) > MAX_STAMP_SPREAD_NS
        ):
            return False
        self.last_heard = now
        self.data_received += 1
        self.bytes_in_round += len(payload)
        held = self.held
        duplicate = held[index]
        if self.online is not None or self.trace is not None:
            mark = (flags & _RESENT) | (TRACE_DUPLICATE if duplicate else 0)
            arrival_ns = int(now * 1e9)
            if self.trace is not None:
                self.trace.append(index, tx, sent_ns, arrival_ns, pass_no, mark)
            if self.online is not None:
                self._staged.append(index, tx, sent_ns, arrival_ns, pass_no, mark)
                if len(self._staged) >= _STAGED_ROWS:
                    self.flush_online()
        if tx > self._highest_tx:
            self._highest_tx = tx
        elif not duplicate:
            self.out_of_order += 1
        if flags & _RESENT:
            self.retransmitted += 1
        else:
            self.first_pass.set(index)
            if index >= self.sent_upto:
                self.sent_upto = index + 1
        if duplicate:
            self.duplicates += 1
        elif self.state is ReceiverState.RECEIVING:
            held.set(index)
            self.held_count += 1
            self.last_data_at = now
            self._events.emit(self, ChunkReceived(index, index * self._chunk_size, payload))
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

    def on_data_batch(self, batch: DataBatch, now: float, queued_s: float = 0.0) -> I64:
        """DATA rows of this session from one receive buffer, at once (``on_data`` per row,
        vectorised; a property test holds the two to the same state).

        Returns the positions (into ``batch``) of the new chunks to store, in buffer order;
        how many rows had no place in this file is left in ``rejected_rows``.
        """
        n = len(batch)
        index = batch.index
        first, last = int(index[0]), int(index[-1])
        stamps = batch.sent_ns
        if self._staged.index:
            self.flush_online()  # rows that came one at a time go first: arrival order
        if (
            last - first == n - 1
            and self.state is ReceiverState.RECEIVING
            and last < self._chunk_count
            and self._sizes_fit(batch, last)
            and abs(int(stamps.min()) - self._stamp_origin) <= MAX_STAMP_SPREAD_NS
            and abs(int(stamps.max()) - self._stamp_origin) <= MAX_STAMP_SPREAD_NS
            and np.array_equal(index, _ARANGE[:n] + first)
            and not self.held.any_in_range(first, last)
        ):
            return self._new_run(batch, first, last, now, queued_s)
        return self._rows(batch, now, queued_s)

    def flush_online(self) -> None:
        """Fold the rows that came one at a time into the statistics."""
        if self.online is not None and self._staged.index:
            rows = self._staged.drain()
            self.online.add(
                rows["index"],
                rows["tx"],
                rows["sent_ns"],
                rows["arrival_ns"],
                rows["pass_no"],
                rows["flags"],
            )

    def _sizes_fit(self, batch: DataBatch, last: int) -> bool:
        """Every row of an ascending run ending at chunk ``last`` has its chunk's length
        (a batch's rows all have one length but its last row, which may be shorter)."""
        sizes = batch.payload_bytes
        final = self._last_len if last == self._chunk_count - 1 else self._chunk_size
        return int(sizes[-1]) == final and (sizes.size == 1 or int(sizes[0]) == self._chunk_size)

    def _new_run(self, batch: DataBatch, first: int, last: int, now: float, queued_s: float) -> I64:
        """The common case: chunks ``first .. last`` in order, none held yet."""
        n = last - first + 1
        tx, flags = batch.tx, batch.flags
        self.rejected_rows = 0
        self.last_heard = self.last_data_at = now
        self.data_received += n
        self.bytes_in_round += int(batch.payload_bytes.sum())
        resent_flags = flags & _RESENT
        arrival_ns = int(now * 1e9)
        if self.trace is not None:
            self.trace.extend(
                batch.index, tx, batch.sent_ns, arrival_ns, batch.pass_no, resent_flags
            )
        tx_first = int(tx[0])
        in_order = tx_first > self._highest_tx and np.array_equal(tx, _ARANGE[:n] + tx_first)
        if not in_order:
            before = np.maximum.accumulate(np.concatenate(([self._highest_tx], tx[:-1])))
            self.out_of_order += int(np.count_nonzero(tx <= before))
        self._highest_tx = max(self._highest_tx, int(tx.max()))
        resent = int(np.count_nonzero(resent_flags))
        if self.online is not None:
            # An ascending run of first transmissions in order: the statistics' scalar path.
            run = in_order and resent == 0 and not batch.pass_no.any()
            self.online.add(
                batch.index, tx, batch.sent_ns, arrival_ns, batch.pass_no, resent_flags, run=run
            )
        self.retransmitted += resent
        if resent == 0:
            self.first_pass.set_range(first, last)
            self.sent_upto = max(self.sent_upto, last + 1)
        elif resent < n:
            self._first_pass_rows(batch.index[resent_flags == 0])
        self.held.set_range(first, last)
        self.held_count += n
        if first <= self.contiguous <= last:
            self.contiguous = self.held.first_clear(self.contiguous)
        if self.held_count == self._chunk_count:
            self._all_held()
        self._ack_rows(batch, flags, now, queued_s)
        return _ARANGE[:n]

    def _rows(self, batch: DataBatch, now: float, queued_s: float) -> I64:
        """Any mix of rows (reordered, repeated, out of range): ``on_data``'s rules, at once."""
        count = self._chunk_count
        index, sent_ns = batch.index, batch.sent_ns
        expected = np.where(index < count - 1, self._chunk_size, self._last_len)
        valid = (
            (index < count)
            & (batch.payload_bytes == expected)
            & (np.abs(sent_ns - self._stamp_origin) <= MAX_STAMP_SPREAD_NS)
        )
        kept = np.flatnonzero(valid)
        self.rejected_rows = len(batch) - kept.size
        if kept.size == 0:
            return kept
        if kept.size != len(batch):
            batch = batch.take(valid)
            index, sent_ns = batch.index, batch.sent_ns
        tx, flags = batch.tx, batch.flags
        n = kept.size
        self.last_heard = now
        self.data_received += n
        self.bytes_in_round += int(batch.payload_bytes.sum())
        bits = np.frombuffer(self.held.bits, dtype=np.uint8)
        masks = np.left_shift(1, index & 7).astype(np.uint8)
        bytes_at = index >> 3
        duplicate = (bits[bytes_at] & masks) != 0
        receiving = self.state is ReceiverState.RECEIVING
        if receiving:
            # A chunk twice in one buffer: its second copy is a duplicate too.
            _, once = np.unique(index, return_index=True)
            repeated = np.ones(n, dtype=bool)
            repeated[once] = False
            duplicate |= repeated
        resent = (flags & _RESENT) != 0
        if self.trace is not None or self.online is not None:
            marks = np.where(duplicate, TRACE_DUPLICATE, 0).astype(np.uint8)
            trace_flags = (flags & _RESENT) | marks
            arrival_ns = int(now * 1e9)
            if self.trace is not None:
                self.trace.extend(index, tx, sent_ns, arrival_ns, batch.pass_no, trace_flags)
            if self.online is not None:
                self.online.add(index, tx, sent_ns, arrival_ns, batch.pass_no, trace_flags)
        # Out of order: a new chunk whose transmission number is not above every earlier one.
        before = np.maximum.accumulate(np.concatenate(([self._highest_tx], tx[:-1])))
        self.out_of_order += int(np.count_nonzero((tx <= before) & ~duplicate))
        self._highest_tx = max(self._highest_tx, int(tx.max()))
        n_resent = int(np.count_nonzero(resent))
        self.retransmitted += n_resent
        if n_resent != n:
            self._first_pass_rows(index[~resent])
        self.duplicates += int(np.count_nonzero(duplicate))
        new = kept[~duplicate] if receiving else kept[:0]
        if new.size:
            np.bitwise_or.at(bits, bytes_at[~duplicate], masks[~duplicate])
            self.held_count += new.size
            self.last_data_at = now
            if self.contiguous in index[~duplicate]:
                self.contiguous = self.held.first_clear(self.contiguous)
            if self.held_count == count:
                self._all_held()
        self._ack_rows(batch, flags, now, queued_s)
        return new

    def _first_pass_rows(self, fresh: I64) -> None:
        """First transmissions of these chunks arrived."""
        first_bits = np.frombuffer(self.first_pass.bits, dtype=np.uint8)
        np.bitwise_or.at(first_bits, fresh >> 3, np.left_shift(1, fresh & 7).astype(np.uint8))
        self.sent_upto = max(self.sent_upto, int(fresh.max()) + 1)

    def _ack_rows(self, batch: DataBatch, flags: U8, now: float, queued_s: float) -> None:
        """Answer the last row that asked for feedback (one STATUS a flush is enough)."""
        acks = np.flatnonzero(flags & _ACK_REQUESTED)
        if acks.size:
            self._send_status(int(batch.sent_ns[acks[-1]]), now, queued_s)

    def _on_manifest(self, manifest: Manifest) -> bool:
        """Block hashes; bounded by the datagram (at most ``MANIFEST_HASHES``) and the file."""
        blocks = self.manifest
        if manifest.first >= len(blocks):
            return False
        for offset, digest in enumerate(manifest.hashes[: len(blocks) - manifest.first]):
            if blocks[manifest.first + offset] is None:
                blocks[manifest.first + offset] = digest
        return True

    @property
    def manifest_complete(self) -> bool:
        """Every block's hash has arrived (a transfer without blocks has none to wait for)."""
        return bool(self.manifest) and all(d is not None for d in self.manifest)

    def blocks_bad(self, blocks: list[int], now: float) -> None:
        """The driver found these blocks wrong by content (forged, or corrupt past the CRC):
        drop their chunks and ask for them again, instead of failing the whole file."""
        meta = self.meta
        if meta is None or self.state is not ReceiverState.VERIFYING or not blocks:
            return
        per = meta.block_chunks
        for block in blocks[: len(self.manifest)]:
            first, last = block * per, min((block + 1) * per, self._chunk_count) - 1
            for index in range(first, last + 1):  # bounded: the file's own chunks, once
                if self.held[index]:
                    self.held.clear(index)
                    self.held_count -= 1
            self.contiguous = min(self.contiguous, first)
        self.bad_blocks += len(blocks)
        self.block_repairs += 1
        self._step(Step.BLOCKS_BAD)
        # Ask at once: the sender is waiting for the verdict of its last round.
        self._send_nacks(End(self.session_id, self.rounds, 0, 0, self._last_sent_ns), now)

    def _on_abort(self, abort: Abort, now: float) -> None:
        if abort.code is AbortCode.CLOSED:
            # The sender has its verdict: lingering to answer its ENDs again is over.
            if self.state is ReceiverState.FINISHED:
                self._step(Step.CLOSE)
            return
        if self.meta is not None:
            self.sent_upto = max(self.sent_upto, min(abort.chunks_sent, self._chunk_count))
        if self.state is ReceiverState.RECEIVING or self.state is ReceiverState.VERIFYING:
            self._end(now, Outcome.ABORTED, f"sender aborted: {abort.reason}")

    def _on_end(self, end: End, now: float) -> None:
        self._last_sent_ns = end.sent_ns
        self.tx_sent = max(self.tx_sent, min(end.tx_sent, self._highest_tx + 1 + (1 << 32)))
        self.sent_upto = max(self.sent_upto, min(end.chunks_sent, self._chunk_count))
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
        self.rounds = max(self.rounds, min(end.round, self.rounds + 1))
        self._send_nacks(end, now)

    def _send_nacks(self, end: End, now: float) -> None:
        """Answer an END with the missing ranges, within the round's byte budget.

        What a round's NACKs may weigh is bounded by what the sender sent in it (three times
        the bytes received since the previous answer, and at least one datagram), so an END
        never draws more than the sender itself put on the wire.
        """
        round_no, spent = self._answered_round
        if round_no != end.round:
            round_no, spent = end.round, 0
        budget = 3 * self.bytes_in_round - spent
        self.bytes_in_round = 0
        limit = self.config.max_nack_datagrams
        sent = 0
        for part in batched(self.gaps(), MAX_NACK_RANGES):
            if sent == limit or (sent and budget <= 0):
                break  # the rest waits for the next round
            datagram = encode(
                Nack(
                    self.session_id,
                    end.round,
                    end.sent_ns,
                    tuple(part),
                    _ns(now),
                    pn=self._next_pn(),
                ),
                self.seal,
            )
            self._outgoing.append(datagram)
            budget -= len(datagram)
            spent += len(datagram)
            sent += 1
        missing = [i for i, d in enumerate(self.manifest) if d is None]
        if missing and budget > 0:
            ranges = missing_ranges(np.array([d is not None for d in self.manifest], np.uint8))
            nack = Nack(
                self.session_id,
                end.round,
                end.sent_ns,
                tuple(ranges[:MAX_NACK_RANGES]),
                _ns(now),
                RangeKind.BLOCKS,
                self._next_pn(),
            )
            self._outgoing.append(encode(nack, self.seal))
            sent += 1
        self._answered_round = (round_no, spent)
        self.nacks_sent += sent
        self._events.outgoing = True
        self._events.emit(self, NackSent(end.round, self._chunk_count - self.held_count))

    def _finish_blast(self, now: float) -> None:
        if self.complete:
            self._all_held()
            return
        self.verdict = Verdict.INCOMPLETE
        self._end(now, Outcome.INCOMPLETE, "chunks missing after the blast")
        self._send_done(self._last_sent_ns, now)

    def _all_held(self) -> None:
        if self.state is ReceiverState.RECEIVING:
            self._step(Step.ALL_HELD)
            self._events.emit(self, VerifyRequested())

    def _step(self, step: Step) -> None:
        """The one place the session's state changes (``receiver_state`` holds the table)."""
        self.state = next_state(self.state, step)

    def _end(self, now: float, outcome: Outcome, reason: str) -> None:
        self._step(Step.END)
        self.finished_at = now
        self.outcome = TransferEnded(outcome, reason, self.verdict)
        self._events.emit(self, self.outcome)

    def _send_status(self, echo_ns: int, now: float, queued_s: float = 0.0) -> None:
        # One STATUS per flush is enough: its counters are cumulative; it echoes the newest.
        self._status_wanted = (echo_ns, now - queued_s, now)
        self._events.outgoing = True

    def _send_done(self, echo_ns: int, now: float) -> None:
        if self.verdict is None:
            return
        self._queue(
            Done(
                self.session_id,
                self.verdict,
                self.held_count,
                self.sha256_actual or bytes(32),
                echo_ns,
                _ns(now),
            )
        )

    def _hello(self, echo_ns: int, now: float, pn: int) -> bytes:
        flags = HelloFlags.ACCEPTED | (HelloFlags.RESUMING if self.resumed else HelloFlags.NONE)
        hello = Hello(
            self.session_id,
            flags,
            echo_ns,
            self.window,
            self.resumed,
            nonce=self.nonce,
            sent_ns=_ns(now),
            pn=pn,
        )
        # The HELLO goes out under the handshake seal; later datagrams under the session's.
        return encode(hello, self.handshake_seal)

    def _haves(self, now: float) -> list[bytes]:
        """HAVE datagrams listing the chunks found on disk (at most ``MAX_HAVE_DATAGRAMS``:
        what does not fit is sent again by the sender and counted as duplicates)."""
        if self._resumed is None:
            return []
        held = missing_ranges(1 - self._resumed.flags())
        out: list[bytes] = []
        for part in batched(held, MAX_NACK_RANGES):
            if len(out) == MAX_HAVE_DATAGRAMS:
                break
            have = Have(self.session_id, tuple(part), 0, _ns(now), self._next_pn())
            out.append(encode(have, self.seal))
        return out

    def _queue(self, packet: Abort | Done) -> None:
        self._outgoing.append(encode(_with_pn(packet, self._next_pn()), self.seal))
        self._events.outgoing = True

    def _next_pn(self) -> int:
        self._pn += 1
        return self._pn


def _with_pn(packet: Abort | Done, pn: int) -> Abort | Done:
    return dataclasses.replace(packet, pn=pn)


def _ns(now: float) -> int:
    return int(now * 1e9)


class EventSink:
    """The endpoint's queue of (session, event) pairs, and whether any of its sessions has
    queued feedback since the endpoint last collected it (so an idle flush looks at none)."""

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[ReceiverSession, Event]] = collections.deque()
        self.outgoing = False

    def emit(self, session: ReceiverSession, event: Event) -> None:
        self.queue.append((session, event))
