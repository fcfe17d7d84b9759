"""The sans-IO receiver session: one incoming transfer, from its metadata to its verdict.

No sockets, clocks or files in here; ``endpoint.ReceiverEndpoint`` routes datagrams to
sessions (and decides which sources may open one), and the driver stores the chunks a session
hands out (``ChunkReceived``, or the positions ``on_data_batch`` returns), hashes the file when
asked (``VerifyRequested``) and sends what ``datagrams_to_send`` returns. The session is built
in parts: ``receiver_core`` (fields, state steps, views), ``receiver_data`` (DATA),
``receiver_feedback`` (what goes back to the sender) and this module (its life: opening,
packets, timers, the verdict, closing). Its state changes only as ``receiver_state`` allows.

Every number a peer sends is bounded here before use: chunk indexes against the transfer,
ranges clamped, send stamps checked against the transfer's own clock, and no loop runs over a
peer-supplied range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from udpxfer.protocol.batch import DataBatch
from udpxfer.protocol.events import Outcome, TransferStarted, VerifyRequested
from udpxfer.protocol.online import OnlineStats
from udpxfer.protocol.ranges import Bitmap
from udpxfer.protocol.receiver_core import I64, ns
from udpxfer.protocol.receiver_data import ReceiverDataPath
from udpxfer.protocol.receiver_feedback import ReceiverFeedback
from udpxfer.protocol.receiver_state import OVER_STATES, ReceiverState, Step
from udpxfer.protocol.wire import (
    HEADER_BYTES,
    MAX_BLOCK_REPAIRS,
    NO_DIGEST,
    Abort,
    AbortCode,
    Data,
    End,
    Manifest,
    Meta,
    Mode,
    Packet,
    Verdict,
)

# Per-datagram cost in a socket buffer beyond the payload (sk_buff and slab rounding); an
# estimate on the safe side so that the advertised window never overfills the buffer.
_BUFFER_OVERHEAD_BYTES = 1200


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


class ReceiverSession(ReceiverDataPath, ReceiverFeedback):
    """One incoming transfer."""

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
            return self._on_repeated_meta(meta, now)
        if not self._on_meta(meta, now):
            return True
        replay, self._pending_packets = self._pending_packets, []
        self.pending_bytes = 0
        for kept in replay:
            self._dispatch(kept, now, 0)
        return True

    # -- driven by the driver -----------------------------------------------------------

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
        """The driver's SHA-256 of the stored file, after ``VerifyRequested``.

        Before the verdict, two things may still have to come from the sender: the file's
        digest (a large file's sender hashes while it sends, and a later META brings it), and
        after a mismatch, the block hashes that find the bad blocks (asked for now).
        """
        meta = self.meta
        if self.state is not ReceiverState.VERIFYING or meta is None:
            return
        self.sha256_actual = digest
        self.waiting_since = now  # for the digest or the block hashes, if either is missing
        if meta.sha256 == NO_DIGEST:
            return  # the META with the digest decides (``_on_repeated_meta``)
        if digest == meta.sha256:
            self.verdict = Verdict.VERIFIED
            self._end(now, Outcome.COMPLETE, "")
        elif (
            self.manifest
            and not self.manifest_complete
            and self.block_repairs < MAX_BLOCK_REPAIRS
            and not self.manifest_needed
        ):
            self.manifest_needed = True
            self._ask_manifest(self.rounds, self._last_sent_ns, now)
        else:
            self.verdict = Verdict.MISMATCH
            self._end(now, Outcome.MISMATCH, "SHA-256 of the received file does not match")
        self._send_done(self._last_sent_ns, now)

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

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must run next."""
        if self.waits_for_sender:  # bounded even while the sender's ENDs keep coming
            return min(self.last_heard, self.waiting_since) + self.config.idle_timeout_s
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
        if state is not ReceiverState.RECEIVING and not self.waits_for_sender:
            return
        if self.waits_for_sender and now >= self.waiting_since + self.config.idle_timeout_s:
            what = "block hashes" if self.manifest_needed else "digest"
            self._end(now, Outcome.TIMEOUT, f"the sender's {what} did not come")
            self._queue(Abort(self.session_id, AbortCode.TIMEOUT, f"no {what}", ns(now)))
        elif now >= self.last_heard + self.config.idle_timeout_s:
            self._end(now, Outcome.TIMEOUT, f"sender silent for {self.config.idle_timeout_s:g} s")
            self._queue(Abort(self.session_id, AbortCode.TIMEOUT, "receiver timed out", ns(now)))
        elif (
            state is ReceiverState.RECEIVING
            and self._end_seen_at is not None
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
                self._queue(Abort(self.session_id, AbortCode.CANCELLED, reason, ns(now)))
        self._step(Step.CLOSE)

    def supersede(self, now: float) -> None:
        """The same sender started this file again (a resume): end this session quietly."""
        if self.state is ReceiverState.RECEIVING or self.state is ReceiverState.VERIFYING:
            self._end(now, Outcome.ABORTED, "superseded by a new transfer of the same file")
        self._step(Step.CLOSE)

    def refuse(self, reason: str, now: float, code: AbortCode = AbortCode.REFUSED) -> None:
        """Turn the sender away (limits, too many transfers); a session that is already a
        transfer ends as aborted first, so that it has a report and its file is closed."""
        self.refusal = reason
        if self.state is ReceiverState.RECEIVING or self.state is ReceiverState.VERIFYING:
            self._end(now, Outcome.ABORTED, reason)
        self._step(Step.CLOSE)
        self._queue(Abort(self.session_id, code, reason, ns(now)))

    # -- packets and transitions ----------------------------------------------------------

    def _dispatch(self, packet: Packet, now: float, size: int) -> bool:
        if self.state is ReceiverState.AWAITING_META:
            return self._await_meta(packet, size)
        if self.state is ReceiverState.PROBATION:
            if isinstance(packet, Meta):
                return self._on_repeated_meta(packet, now)
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
                return self._on_repeated_meta(packet, now)
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
            self.online = OnlineStats(meta.chunk_count, meta.chunk_size, meta.size, ns(now))
        if meta.block_chunks and meta.mode is Mode.RELIABLE:
            self.manifest = [None] * -(-meta.chunk_count // meta.block_chunks)
        self._events.emit(self, TransferStarted(meta))
        if meta.chunk_count == 0:
            self._all_held()

    def _on_repeated_meta(self, meta: Meta, now: float) -> bool:
        current = self.meta
        if current is None or (
            meta.name,
            meta.size,
            meta.chunk_size,
            meta.mode,
            meta.nonce,
        ) != (
            current.name,
            current.size,
            current.chunk_size,
            current.mode,
            current.nonce,
        ):
            return False
        if meta.sha256 != current.sha256 and meta.sha256 != NO_DIGEST:
            if current.sha256 != NO_DIGEST:
                return False  # a digest is given once and never changes
            self.meta = current = dataclasses.replace(current, sha256=meta.sha256)
            actual = self.sha256_actual
            if self.state is ReceiverState.VERIFYING and actual is not None:
                # It was waiting for this. Block hashes already here (unasked) can name the
                # bad blocks at once: the driver looks (it calls back either way).
                if actual != meta.sha256 and self.manifest_complete:
                    self._events.emit(self, VerifyRequested())
                else:
                    self.hash_computed(actual, now)
                return True
        if self.state is ReceiverState.RECEIVING or self.state is ReceiverState.PROBATION:
            if self.validated:
                self._hello_wanted = meta.sent_ns  # the HELLO may have been lost
                self._events.outgoing = True
            else:
                self._send_status(meta.sent_ns, self.last_heard)
        return True

    def _on_manifest(self, manifest: Manifest) -> bool:
        """Block hashes; bounded by the datagram (at most ``MANIFEST_HASHES``) and the file."""
        blocks = self.manifest
        if manifest.first >= len(blocks):
            return False
        for offset, digest in enumerate(manifest.hashes[: len(blocks) - manifest.first]):
            if blocks[manifest.first + offset] is None:
                blocks[manifest.first + offset] = digest
        if self.manifest_needed and self.manifest_complete:
            self.manifest_needed = False
            if self.state is ReceiverState.VERIFYING:
                self._events.emit(self, VerifyRequested())  # now the bad blocks can be found
        return True

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

    def _finish_blast(self, now: float) -> None:
        if self.complete:
            self._all_held()
            return
        self.verdict = Verdict.INCOMPLETE
        self._end(now, Outcome.INCOMPLETE, "chunks missing after the blast")
        self._send_done(self._last_sent_ns, now)
