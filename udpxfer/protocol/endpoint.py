"""The sans-IO receiver endpoint: routes the datagrams of one socket to per-transfer sessions.

Sessions are keyed by (peer address, session id). What it promises a receiver left running on
a LAN (docs/SECURITY.md):

- Address validation, as QUIC's Retry (RFC 9000 section 8.1): a META without a valid token is
  answered statelessly with a token (an HMAC of the source address and session under a secret
  of this receiver); a reliable transfer starts only from a META that echoes it. Until an
  address has echoed a token, everything sent to it stays within 3x the bytes received from it.
- Limits per source address and in total: sessions that are no transfer yet, bytes kept before
  metadata, transfers, chunk-map memory. Junk from one source only ever evicts that source's
  own unvalidated sessions (or, with the total cap reached, those of the source holding most);
  a validated transfer is never evicted.
- With a key every datagram is authenticated; what fails is counted and dropped.

This module routes and counts; ``endpoint_handshake`` holds the tokens, keyed METAs and
stateless HELLOs, and ``endpoint_limits`` decides what each source may open and be sent.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from udpxfer.errors import AuthenticationFailed, CorruptPacket, MalformedPacket
from udpxfer.protocol.batch import DataBatch, decode_batch_untrusted, row_count
from udpxfer.protocol.codec import decode_header_untrusted
from udpxfer.protocol.endpoint_handshake import AuthFailure, Handshake, Keying, KeyProblem
from udpxfer.protocol.endpoint_limits import (
    AddressBudgets,
    PerSourceRate,
    is_active,
    pending_victim,
    transfer_refusal,
    unvalidated_refusal,
)
from udpxfer.protocol.events import Event
from udpxfer.protocol.framing import CRC, Header, parse_header_untrusted
from udpxfer.protocol.receiver import ReceiverConfig, ReceiverSession
from udpxfer.protocol.receiver_core import EventSink, Peer
from udpxfer.protocol.receiver_state import ReceiverState
from udpxfer.protocol.wire import (
    HEADER_BYTES,
    MAX_PN,
    NONCE_BYTES,
    AbortCode,
    Data,
    End,
    Meta,
    Mode,
    PacketType,
)

_META = int(PacketType.META)
_ORPHANS = (int(PacketType.DATA), int(PacketType.END), int(PacketType.ABORT))


@dataclass(frozen=True, slots=True)
class StoreRun:
    """New chunks of one session in a receive buffer, for the driver to write.

    ``positions`` index the rows of ``batch`` (``DataBatch.payload_start``, ``batch.index``).
    """

    session: ReceiverSession
    batch: DataBatch
    positions: npt.NDArray[np.int64]
    plain: list[bytes | memoryview] | None = None  # keyed: the payloads, one per batch row


class ReceiverEndpoint:
    """All transfers arriving at one socket."""

    def __init__(
        self,
        config: ReceiverConfig | None = None,
        *,
        token_secret: bytes = bytes(32),
        keying: Keying | None = None,
        nonces: collections.abc.Callable[[], bytes] | None = None,
        hello_pn_start: int = 1,
    ) -> None:
        """Create an endpoint.

        Args:
            config: tunables.
            token_secret: the secret address tokens are made with (random, from the driver).
            keying: the pre-shared key, for keyed mode.
            nonces: where session nonces come from (the driver's random source).
            hello_pn_start: the first packet number of HELLOs. Every HELLO to a sender is
                sealed under its handshake key, whether this endpoint sends it statelessly or a
                session does, so all of them take numbers from one counter; a random start
                (from the driver) keeps a restarted receiver from repeating a number, which
                under AES-GCM would repeat a nonce.
        """
        self.config = config or ReceiverConfig()
        self.sessions: dict[tuple[Peer, int], ReceiverSession] = {}
        self.received = 0  # every datagram handed in
        self.rejected = 0  # datagrams that are part of no valid transfer
        self.unauthenticated = 0  # datagrams that failed authentication (keyed mode)
        self.amplification_held = 0  # datagrams not sent: the address's budget was spent
        self.auth_failures: collections.deque[AuthFailure] = collections.deque(maxlen=64)
        self._sink: EventSink[ReceiverSession] = EventSink()
        self._stateless: list[tuple[bytes, Peer]] = []
        psk, encrypt = (keying.psk, keying.encrypt) if keying is not None else (None, True)
        self._handshake = Handshake(token_secret, psk, encrypt)
        self._keying = keying
        self._nonces = nonces or (lambda: bytes(NONCE_BYTES))
        self._budgets = AddressBudgets()
        self._openings = PerSourceRate(self.config.pending_opened_per_source_s)
        self._handshakes = PerSourceRate(self.config.handshakes_per_source_s)
        self._pn = max(1, min(hello_pn_start, MAX_PN >> 1))

    # -- the sans-IO interface -----------------------------------------------------------

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, peer: Peer, now: float, queued_s: float = 0.0
    ) -> None:
        """Handle one datagram from ``peer``; never raises for any content.

        ``queued_s`` is how long it waited in our own receive queue (from kernel timestamps):
        STATUS reports it, so the sender can tell network queueing from ours.
        """
        self.received += 1
        size = len(data)
        self._budgets.of(peer).received += size
        try:
            header = parse_header_untrusted(data)
        except MalformedPacket:
            self.rejected += 1
            return
        session = self.sessions.get((peer, header.session))
        if session is not None and session.closed and header.ptype == _META:
            # Over (refused, or finished and lingering no more): a new META starts afresh.
            self._forget(session)
            session = None
        if header.ptype == _META:
            self._on_meta(header, peer, session, now, size)
            return
        if session is None or session.state is ReceiverState.AWAITING_META:
            self._orphan(header, peer, session, now, size)
            return
        try:
            packet = decode_header_untrusted(header, session.seal)
        except AuthenticationFailed:
            self.unauthenticated += 1
            return
        except CorruptPacket:
            if not session.count_corrupt():
                self.rejected += 1
            return
        except MalformedPacket:
            self.rejected += 1
            return
        if isinstance(packet, Data) and session.is_transfer:
            if not session.receive_data(packet, now, queued_s):
                self.rejected += 1
            return
        if (
            session.state is ReceiverState.PROBATION
            and isinstance(packet, Data | End)
            and not self._admit_unvalidated(session, now)
        ):
            self.rejected += 1
            return
        if not session.receive_packet(packet, now, size):
            self.rejected += 1

    def receive_buffer(
        self,
        buffer: bytes | bytearray | memoryview,
        length: int,
        segment: int,
        peer: Peer,
        now: float,
        queued_s: float = 0.0,
    ) -> list[StoreRun]:
        """Handle one receive: ``length`` bytes of datagrams ``segment`` bytes apart (a UDP
        GRO run; 0: one datagram), all from ``peer``; never raises for any content.

        The keyless DATA of a transfer in progress are decoded and applied as one batch; the
        chunks they bring are returned for the caller to store (views into ``buffer``: keep
        it unchanged until they are written). Every other datagram takes the row path,
        ``receive_datagram``, in buffer order.
        """
        view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
        if row_count(length, segment) == 1:
            # One datagram: the row path costs a few microseconds, a batch decode tens (a
            # flood of junk arrives one datagram at a time).
            self.receive_datagram(view[:length], peer, now, queued_s)
            return []
        target = self.sessions.get((peer, int.from_bytes(view[8:16]) if segment >= 16 else -1))
        if target is None or target.state is not ReceiverState.RECEIVING:
            # Not a transfer in progress (junk, forged DATA of unknown sessions coalesced by
            # GRO): nothing to batch into, every datagram takes the row path as it would below.
            for start in range(0, length, segment):
                self.receive_datagram(
                    view[start : min(start + segment, length)], peer, now, queued_s
                )
            return []
        keyed = self._keying is not None
        batch = decode_batch_untrusted(view, length, segment, keyed=keyed)
        stores: list[StoreRun] = []
        slow = batch.slow
        if len(batch):
            sessions = batch.session
            first = int(sessions[0])
            session = self.sessions.get((peer, first))
            if (
                session is not None
                and session.state is ReceiverState.RECEIVING
                and (session.seal is not CRC) is keyed
                and bool((sessions == sessions[0]).all())
            ):
                n = len(batch)
                overhead = n * (HEADER_BYTES + session.seal.trailer_bytes)
                self.received += n
                self._budgets.of(peer).received += int(batch.payload_bytes.sum()) + overhead
                plain = None
                if keyed:
                    plain, authentic = session.seal.open_batch(view, batch)  # type: ignore[attr-defined]
                    if len(plain) != n:
                        self.unauthenticated += n - len(plain)
                        batch = batch.take(authentic)
                        n = len(plain)
                if n:
                    new = session.receive_batch(batch, now, queued_s)
                    self.rejected += session.rejected_rows
                    if new.size:
                        stores.append(StoreRun(session, batch, new, plain))
            else:
                slow = sorted([*slow, *batch.rows.tolist()])
        step = batch.segment
        for row in slow:
            start = row * step
            self.receive_datagram(view[start : min(start + step, length)], peer, now, queued_s)
        return stores

    def datagrams_to_send(self, now: float | None = None) -> list[tuple[bytes, Peer]]:
        """Feedback for every peer: (datagram, peer) pairs, within each address's budget."""
        out: list[tuple[bytes, Peer]] = []
        pending, self._stateless = self._stateless, []
        for datagram, peer in pending:
            self._admit(datagram, peer, out)
        if self._sink.outgoing:  # else no session has anything: a flood's flushes stay cheap
            self._sink.outgoing = False
            for session in self.sessions.values():
                if session.has_outgoing:
                    # Every HELLO takes a number of the handshake counter (``hello_pn_start``).
                    hello_pn = self._next_pn() if session.wants_hello else None
                    for datagram in session.datagrams_to_send(now, hello_pn):
                        self._admit(datagram, session.peer, out)
        return out

    @property
    def has_outgoing(self) -> bool:
        """True when ``datagrams_to_send`` may have something (a cheap look)."""
        return bool(self._stateless) or self._sink.outgoing

    def get_timer(self) -> float | None:
        """The earliest timer of any session."""
        timers = [t for s in self.sessions.values() if (t := s.get_timer()) is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        """Run due session timers and forget closed sessions."""
        for key, session in list(self.sessions.items()):
            timer = session.get_timer()
            if timer is not None and now >= timer:
                session.handle_timer(now)
            if session.closed and not session.has_outgoing:
                if not session.is_transfer:
                    self.rejected += session.datagrams  # never a transfer: junk after all
                del self.sessions[key]

    @property
    def events(self) -> collections.deque[tuple[ReceiverSession, Event]]:
        """The queue ``next_event`` takes from (truthy while events wait)."""
        return self._sink.queue

    def next_event(self) -> tuple[ReceiverSession, Event] | None:
        """The oldest (session, event) pair not yet taken, or None."""
        queue = self._sink.queue
        return queue.popleft() if queue else None

    def close(self, now: float, reason: str) -> None:
        """End every open transfer (Ctrl-C on the receiver)."""
        for session in self.sessions.values():
            session.close(now, reason)

    @property
    def rejected_so_far(self) -> int:
        """Rejected datagrams, counting those held by sessions that are no transfer (yet)."""
        return self.rejected + sum(s.datagrams for s in self.sessions.values() if not s.is_transfer)

    @property
    def active_transfers(self) -> int:
        """Transfers that have started and not reached a verdict."""
        return sum(1 for s in self.sessions.values() if is_active(s))

    # -- metadata, validation and limits ---------------------------------------------------

    def _on_meta(
        self, header: Header, peer: Peer, session: ReceiverSession | None, now: float, size: int
    ) -> None:
        new = session is None or session.state is ReceiverState.AWAITING_META
        if new and not self._handshakes.allow(peer, now):
            self.rejected += 1  # before the tag, the token's HMAC and the answer
            return
        meta = self._handshake.open_meta(header)
        if meta is None:
            self.rejected += 1
            return
        if isinstance(meta, KeyProblem):
            self.unauthenticated += 1
            self.auth_failures.append(AuthFailure(peer, meta.reason))
            self._stateless.append((Handshake.notice(header, meta.flag, self._next_pn()), peer))
            return
        if session is not None and session.state is not ReceiverState.AWAITING_META:
            if session.meta is not None and session.meta.nonce != meta.nonce:
                self.rejected += 1  # another sender's META under the same session id
                return
            # A blast transfer under way that proves its address joins the validated ones if
            # there is room, else keeps its place among the unvalidated (a repeated META).
            busy = session.is_transfer and transfer_refusal(
                self.sessions.values(), session, meta, self.config
            )
            if not session.validated and not busy and self._handshake.token_valid(meta, peer, now):
                if self._admit_transfer(session, meta, now):
                    self._budgets.of(peer).validated = True
                    session.open_validated(meta, now)
                return
            if not session.receive_packet(meta, now, size):
                self.rejected += 1
            return
        if self._handshake.token_valid(meta, peer, now):
            self._budgets.of(peer).validated = True
            if session is None:
                session = self._new_session(peer, meta, now)
            if self._admit_transfer(session, meta, now):
                session.open_validated(meta, now)
            return
        # Not validated: answer with a token, statelessly (within the address's budget).
        self._stateless.append((self._handshake.retry(peer, meta, now, self._next_pn()), peer))
        if meta.mode is Mode.BLAST or not self.config.require_token:
            # A blast sender may have no reverse path: keep its META on probation.
            if session is None:
                if not self._openings.allow(peer, now):
                    self.rejected += 1
                    return
                self._make_room_for_unknown(peer)
                session = self._new_session(peer, meta, now)
            session.open_unvalidated(meta, now)

    def _new_session(self, peer: Peer, meta: Meta, now: float) -> ReceiverSession:
        nonce = self._nonces()  # keyless too: a sender tells a restarted receiver by it
        handshake, seal = self._handshake.session_seals(meta, nonce)
        session = ReceiverSession(
            peer,
            meta.session,
            now,
            self.config,
            self._sink,
            seal=seal,
            handshake_seal=handshake,
            nonce=nonce,
        )
        self.sessions[(peer, meta.session)] = session
        return session

    def _admit_transfer(self, session: ReceiverSession, meta: Meta, now: float) -> bool:
        """Whether limits leave room for this transfer; if not, it is refused as busy."""
        reason = transfer_refusal(self.sessions.values(), session, meta, self.config)
        if reason:
            session.refuse(reason, now, AbortCode.BUSY)
        return not reason

    def _admit_unvalidated(self, session: ReceiverSession, now: float) -> bool:
        """Room for a blast transfer from an address that never echoed a token; if there is
        none, it is refused as busy."""
        reason = unvalidated_refusal(self.sessions.values(), session, self.config)
        if reason:
            session.refuse(reason, now, AbortCode.BUSY)
        return not reason

    def _orphan(
        self, header: Header, peer: Peer, session: ReceiverSession | None, now: float, size: int
    ) -> None:
        """A datagram of a session we do not know (yet): keep a little of it, keyless only."""
        if self._keying is not None or header.ptype not in _ORPHANS:
            if self._keying is not None and header.ptype in _ORPHANS:
                self.unauthenticated += 1
            else:
                self.rejected += 1
            return
        if session is None and not self._openings.allow(peer, now):
            self.rejected += 1  # before any work: the source opened its share this second
            return
        try:
            packet = decode_header_untrusted(header, CRC)
        except MalformedPacket:
            self.rejected += 1
            return
        if session is None:
            self._make_room_for_unknown(peer)
            session = ReceiverSession(
                peer, header.session, now, self.config, self._sink, nonce=self._nonces()
            )
            self.sessions[(peer, header.session)] = session
        if not session.receive_packet(packet, now, size):
            self.rejected += 1

    def _make_room_for_unknown(self, peer: Peer) -> None:
        """Room for one more session that is no transfer yet (``pending_victim`` says whose
        goes)."""
        victim = pending_victim(self.sessions.values(), peer, self.config)
        if victim is not None:
            self._evict(victim)

    def _evict(self, session: ReceiverSession) -> None:
        del self.sessions[(session.peer, session.session_id)]
        self.rejected += session.datagrams

    def _forget(self, session: ReceiverSession) -> None:
        del self.sessions[(session.peer, session.session_id)]
        if not session.is_transfer:
            self.rejected += session.datagrams

    # -- anti-amplification ----------------------------------------------------------------

    def _admit(self, datagram: bytes, peer: Peer, out: list[tuple[bytes, Peer]]) -> None:
        if self._budgets.spend(len(datagram), peer):
            out.append((datagram, peer))
        else:
            self.amplification_held += 1

    def _next_pn(self) -> int:
        self._pn = self._pn + 1 if self._pn < MAX_PN else 1
        return self._pn
