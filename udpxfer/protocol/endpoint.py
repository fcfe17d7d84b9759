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
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from udpxfer.errors import AuthenticationFailed, CorruptPacket, MalformedPacket
from udpxfer.protocol.batch import DataBatch, decode_batch_untrusted, row_count
from udpxfer.protocol.bodies import meta_nonce_untrusted
from udpxfer.protocol.codec import decode_header_untrusted, encode
from udpxfer.protocol.events import Event
from udpxfer.protocol.framing import CRC, Header, Seal, parse_header_untrusted
from udpxfer.protocol.receiver import (
    ChunkSink,
    EventSink,
    Peer,
    ReceiverConfig,
    ReceiverSession,
    ReceiverState,
)
from udpxfer.protocol.wire import (
    HEADER_BYTES,
    MAX_PN,
    NONCE_BYTES,
    AbortCode,
    Data,
    End,
    Hello,
    HelloFlags,
    Meta,
    Mode,
    PacketType,
)

AMPLIFICATION_FACTOR = 3  # RFC 9000 section 8: at most 3x toward an unvalidated address
MAX_TRACKED_ADDRESSES = 16384  # budgets kept at once (oldest forgotten first)
_DATA = int(PacketType.DATA)
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


@dataclass(frozen=True, slots=True)
class Keying:
    """What keyed mode needs on the receiver: the pre-shared key, and whether to encrypt."""

    psk: bytes
    encrypt: bool = True


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """A datagram from ``peer`` failed authentication (or a key mismatch): for the log."""

    peer: Peer
    reason: str


class _Budget:
    __slots__ = ("received", "sent", "validated")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.validated = False


class _PerSourceRate:
    """A token bucket per source host (``rate`` a second, as many at once), for work a source
    can ask for without having proven its address; the oldest hosts are forgotten first."""

    __slots__ = ("_buckets", "_rate")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._buckets: collections.OrderedDict[object, list[float]] = collections.OrderedDict()

    def allow(self, peer: Peer, now: float) -> bool:
        """Take one token of ``peer``'s host; False (nothing taken) when it has none left."""
        source = _source(peer)
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = [self._rate, now]  # level, when last updated
            if len(self._buckets) > MAX_TRACKED_ADDRESSES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        level = min(self._rate, bucket[0] + max(0.0, now - bucket[1]) * self._rate)
        bucket[1] = now
        if level < 1.0:
            bucket[0] = level
            return False
        bucket[0] = level - 1.0
        return True


class ReceiverEndpoint:
    """All transfers arriving at one socket."""

    def __init__(
        self,
        config: ReceiverConfig | None = None,
        *,
        chunk_sink: ChunkSink | None = None,
        token_secret: bytes = bytes(32),
        keying: Keying | None = None,
        nonces: collections.abc.Callable[[], bytes] | None = None,
        hello_pn_start: int = 1,
    ) -> None:
        """Create an endpoint.

        Args:
            config: tunables.
            chunk_sink: called as ``sink(session, offset, payload)`` for every new chunk,
                with the payload a view into the caller's buffer (store it before the next
                datagram). By default new chunks become ``ChunkReceived`` events.
            token_secret: the secret address tokens are made with (random, from the driver).
            keying: the pre-shared key, for keyed mode.
            nonces: where session nonces come from (the driver's random source).
            hello_pn_start: the first packet number of HELLOs. Every HELLO to a sender is
                sealed under its handshake key, whether this endpoint sends it statelessly or a
                session does, so all of them take numbers from one counter; a random start
                (from the driver) keeps a restarted receiver from repeating a number, which
                under AES-GCM would repeat a nonce.
        """
        from udpxfer.protocol.keys import TokenMinter

        self.config = config or ReceiverConfig()
        self.sessions: dict[tuple[Peer, int], ReceiverSession] = {}
        self.received = 0  # every datagram handed in
        self.rejected = 0  # datagrams that are part of no valid transfer
        self.unauthenticated = 0  # datagrams that failed authentication (keyed mode)
        self.amplification_held = 0  # datagrams not sent: the address's budget was spent
        self.auth_failures: collections.deque[AuthFailure] = collections.deque(maxlen=64)
        self._sink = EventSink()
        self._stateless: list[tuple[bytes, Peer]] = []
        self._store: ChunkSink = chunk_sink or self._sink.store_as_event
        self._minter = TokenMinter(token_secret)
        self._keying = keying
        self._nonces = nonces or (lambda: bytes(NONCE_BYTES))
        self._budgets: collections.OrderedDict[Peer, _Budget] = collections.OrderedDict()
        self._openings = _PerSourceRate(self.config.pending_opened_per_source_s)
        self._handshakes = _PerSourceRate(self.config.handshakes_per_source_s)
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
        self._budget(peer).received += size
        try:
            header = parse_header_untrusted(data)
        except MalformedPacket:
            self.rejected += 1
            return
        session = self.sessions.get((peer, header.session))
        if session is not None and session.state is ReceiverState.CLOSED and header.ptype == _META:
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
            if session.is_transfer:
                session.corrupt += 1
                session.datagrams += 1
            else:
                self.rejected += 1
            return
        except MalformedPacket:
            self.rejected += 1
            return
        if (
            isinstance(packet, Data)
            and session.started
            and session.state is not ReceiverState.PROBATION
        ):
            session.datagrams += 1
            if not session.on_data(
                packet.index,
                packet.tx,
                packet.payload,
                packet.pass_no,
                packet.flags,
                packet.sent_ns,
                now,
                queued_s,
            ):
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
                self._budget(peer).received += int(batch.payload_bytes.sum()) + overhead
                plain = None
                if keyed:
                    plain, authentic = session.seal.open_batch(view, batch)  # type: ignore[attr-defined]
                    if len(plain) != n:
                        self.unauthenticated += n - len(plain)
                        batch = batch.take(authentic)
                        n = len(plain)
                if n:
                    session.datagrams += n
                    new = session.on_data_batch(batch, now, queued_s)
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
                    for datagram in session.datagrams_to_send(now):
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
            if session.state is ReceiverState.CLOSED and not session.has_outgoing:
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
        return sum(1 for s in self.sessions.values() if _active(s))

    # -- metadata, validation and limits ---------------------------------------------------

    def _on_meta(
        self, header: Header, peer: Peer, session: ReceiverSession | None, now: float, size: int
    ) -> None:
        new = session is None or session.state is ReceiverState.AWAITING_META
        if new and not self._handshakes.allow(peer, now):
            self.rejected += 1  # before the tag, the token's HMAC and the answer
            return
        meta = self._open_meta(header, peer)
        if meta is None:
            return
        if session is not None and session.state is not ReceiverState.AWAITING_META:
            if session.meta is not None and session.meta.nonce != meta.nonce:
                self.rejected += 1  # another sender's META under the same session id
                return
            if not session.validated and self._token_valid(meta, peer, now):
                if self._admit_transfer(session, peer, meta, now):
                    self._budget(peer).validated = True
                    session.open_validated(meta, now)
                return
            if not session.receive_packet(meta, now, size):
                self.rejected += 1
            return
        if self._token_valid(meta, peer, now):
            self._budget(peer).validated = True
            if session is None:
                session = self._new_session(peer, meta, now)
            if self._admit_transfer(session, peer, meta, now):
                session.open_validated(meta, now)
            return
        # Not validated: answer with a token, statelessly (within the address's budget).
        self._hello(peer, meta, HelloFlags.RETRY, now, self._minter_token(meta, peer, now))
        if meta.mode is Mode.BLAST or not self.config.require_token:
            # A blast sender may have no reverse path: keep its META on probation.
            if session is None:
                if not self._openings.allow(peer, now) or not self._make_room_for_unknown(peer):
                    self.rejected += 1
                    return
                session = self._new_session(peer, meta, now)
            session.open_unvalidated(meta, now)
            session.datagrams += 1

    def _open_meta(self, header: Header, peer: Peer) -> Meta | None:
        """Check a META's tag (keyed) and decode it; None (counted) when it does not pass."""
        keying = self._keying
        seal: Seal = CRC
        if keying is not None:
            if not header.keyed:
                self._auth_failed(
                    peer,
                    header,
                    "the sender has no key; this receiver needs one",
                    HelloFlags.NEED_KEY,
                )
                return None
            try:
                nonce = meta_nonce_untrusted(header)
            except MalformedPacket:
                self.rejected += 1
                return None
            from udpxfer.protocol.keyed import AeadSeal
            from udpxfer.protocol.keys import Direction, PacketProtection

            seal = AeadSeal(
                PacketProtection.handshake(keying.psk, header.session, nonce),
                Direction.TO_SENDER,
                encrypt=False,
            )
        elif header.keyed:
            self._auth_failed(
                peer, header, "the sender uses a key; this receiver has none", HelloFlags.NO_KEY
            )
            return None
        try:
            packet = decode_header_untrusted(header, seal)
        except AuthenticationFailed:
            self._auth_failed(
                peer, header, "authentication failed (wrong key?)", HelloFlags.AUTH_FAILED
            )
            return None
        except MalformedPacket:
            self.rejected += 1
            return None
        assert isinstance(packet, Meta)
        return packet

    def _auth_failed(self, peer: Peer, header: Header, reason: str, flag: HelloFlags) -> None:
        self.unauthenticated += 1
        self.auth_failures.append(AuthFailure(peer, reason))
        notice = Hello(header.session, flag, header.sent_ns, pn=self._next_pn())
        self._stateless.append((encode(notice), peer))

    def _new_session(self, peer: Peer, meta: Meta, now: float) -> ReceiverSession:
        seal: Seal = CRC
        handshake: Seal = CRC
        nonce = self._nonces()  # keyless too: a sender tells a restarted receiver by it
        if self._keying is not None:
            from udpxfer.protocol.keyed import session_seals
            from udpxfer.protocol.keys import Direction

            handshake, seal = session_seals(
                self._keying.psk,
                meta.session,
                meta.nonce,
                nonce,
                Direction.TO_SENDER,
                encrypt=self._keying.encrypt,
            )
        session = ReceiverSession(
            peer,
            meta.session,
            now,
            self.config,
            self._sink,
            self._store,
            seal=seal,
            handshake_seal=handshake,
            nonce=nonce,
            hello_pn=self._next_pn,
        )
        self.sessions[(peer, meta.session)] = session
        return session

    def _admit_transfer(self, session: ReceiverSession, peer: Peer, meta: Meta, now: float) -> bool:
        """Whether limits leave room for this transfer; if not, it is refused as busy."""
        config = self.config
        source = _source(peer)
        active = [
            s for s in self.sessions.values() if _active(s) and s.validated and s is not session
        ]
        from_source = sum(1 for s in active if _source(s.peer) == source)
        state = sum(s.state_bytes for s in active) + 2 * ((meta.chunk_count + 7) >> 3)
        reason = ""
        if len(active) >= config.max_transfers:
            reason = f"receiver busy: {len(active)} transfers in progress"
        elif from_source >= config.max_transfers_per_source:
            reason = f"receiver busy: {from_source} transfers from {source} in progress"
        elif state > config.max_state_bytes:
            reason = "receiver busy: no memory left for another transfer's state"
        if reason:
            session.refuse(reason, now, AbortCode.BUSY)
            return False
        return True

    def _admit_unvalidated(self, session: ReceiverSession, now: float) -> bool:
        """Room for a blast transfer from an address that never echoed a token: a few, in
        their own pool, so that they can never crowd out validated transfers."""
        config = self.config
        source = _source(session.peer)
        others = [
            s for s in self.sessions.values() if _active(s) and not s.validated and s is not session
        ]
        meta = session.meta
        state = sum(s.state_bytes for s in self.sessions.values() if _active(s))
        state += 2 * (((meta.chunk_count if meta else 0) + 7) >> 3)
        reason = ""
        if len(others) >= config.max_unvalidated_transfers:
            reason = "receiver busy: too many transfers from unvalidated addresses"
        elif sum(1 for s in others if _source(s.peer) == source) >= 2:
            reason = f"receiver busy: transfers from {source} in progress"
        elif state > config.max_state_bytes // 4:
            reason = "receiver busy: no memory left for an unvalidated transfer"
        if reason:
            session.refuse(reason, now, AbortCode.BUSY)
            return False
        return True

    def _token_valid(self, meta: Meta, peer: Peer, now: float) -> bool:
        from udpxfer.protocol.keys import address_bytes

        if not any(meta.token):
            return False
        return self._minter.valid(meta.token, address_bytes(peer), meta.session, now)  # type: ignore[arg-type]

    def _minter_token(self, meta: Meta, peer: Peer, now: float) -> bytes:
        from udpxfer.protocol.keys import address_bytes

        return self._minter.mint(address_bytes(peer), meta.session, now)  # type: ignore[arg-type]

    def _hello(self, peer: Peer, meta: Meta, flags: HelloFlags, now: float, token: bytes) -> None:
        seal: Seal = CRC
        if self._keying is not None:
            from udpxfer.protocol.keyed import AeadSeal
            from udpxfer.protocol.keys import Direction, PacketProtection

            seal = AeadSeal(
                PacketProtection.handshake(self._keying.psk, meta.session, meta.nonce),
                Direction.TO_SENDER,
                encrypt=False,
            )
        hello = Hello(
            meta.session,
            flags,
            meta.sent_ns,
            token=token,
            sent_ns=int(now * 1e9),
            pn=self._next_pn(),
        )
        self._stateless.append((encode(hello, seal), peer))

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
            if not self._make_room_for_unknown(peer):
                self.rejected += 1
                return
            session = ReceiverSession(
                peer, header.session, now, self.config, self._sink, self._store,
                nonce=self._nonces(), hello_pn=self._next_pn,
            )  # fmt: skip
            self.sessions[(peer, header.session)] = session
        if not session.receive_packet(packet, now, size):
            self.rejected += 1

    def _make_room_for_unknown(self, peer: Peer) -> bool:
        """Room for one more session that is no transfer yet; False when there is none.

        A source at its own cap loses its own oldest such session; with the total cap
        reached, the source holding most of them does. Transfers are never evicted.
        """
        config = self.config
        waiting = [s for s in self.sessions.values() if not s.is_transfer and not s.validated]
        source = _source(peer)
        own = [s for s in waiting if _source(s.peer) == source]
        if len(own) >= config.max_pending_per_source:
            self._evict(min(own, key=lambda s: s.last_heard))
            return True
        if len(waiting) >= config.max_pending_sessions:
            counts = collections.Counter(_source(s.peer) for s in waiting)
            heaviest, _ = counts.most_common(1)[0]
            victims = [s for s in waiting if _source(s.peer) == heaviest]
            self._evict(min(victims, key=lambda s: s.last_heard))
        return True

    def _evict(self, session: ReceiverSession) -> None:
        del self.sessions[(session.peer, session.session_id)]
        self.rejected += session.datagrams

    def _forget(self, session: ReceiverSession) -> None:
        del self.sessions[(session.peer, session.session_id)]
        if not session.is_transfer:
            self.rejected += session.datagrams

    # -- anti-amplification ----------------------------------------------------------------

    def _budget(self, peer: Peer) -> _Budget:
        budgets = self._budgets
        budget = budgets.get(peer)
        if budget is None:
            budget = budgets[peer] = _Budget()
            if len(budgets) > MAX_TRACKED_ADDRESSES:
                budgets.popitem(last=False)
        else:
            budgets.move_to_end(peer)
        return budget

    def _admit(self, datagram: bytes, peer: Peer, out: list[tuple[bytes, Peer]]) -> None:
        budget = self._budget(peer)
        if not budget.validated and (
            budget.sent + len(datagram) > AMPLIFICATION_FACTOR * budget.received
        ):
            self.amplification_held += 1
            return
        budget.sent += len(datagram)
        out.append((datagram, peer))

    def _next_pn(self) -> int:
        self._pn = self._pn + 1 if self._pn < MAX_PN else 1
        return self._pn


def _active(session: ReceiverSession) -> bool:
    return session.state is ReceiverState.RECEIVING or session.state is ReceiverState.VERIFYING


def _source(peer: Peer) -> object:
    """The host part of a peer address: limits apply per host, whatever its ports."""
    if isinstance(peer, tuple) and peer:
        return peer[0]
    return peer
