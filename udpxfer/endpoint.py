"""The sans-IO receiver endpoint: routes the datagrams of one socket to per-transfer sessions.

Sessions are keyed by (peer address, session id). Datagrams that belong to no transfer are
counted as rejected; sessions that are no transfer yet (a META nobody followed up, data
before any META) are capped, the oldest making room for a newcomer.
"""

from __future__ import annotations

import collections

from udpxfer.errors import MalformedPacket
from udpxfer.events import Event
from udpxfer.receiver import (
    ChunkSink,
    EventSink,
    Peer,
    ReceiverConfig,
    ReceiverSession,
    ReceiverState,
)
from udpxfer.wire import (
    CorruptPacket,
    Data,
    End,
    Meta,
    data_fields_untrusted,
    decode_untrusted,
)


class ReceiverEndpoint:
    """All transfers arriving at one socket."""

    def __init__(
        self, config: ReceiverConfig | None = None, *, chunk_sink: ChunkSink | None = None
    ) -> None:
        """Create an endpoint.

        Args:
            config: tunables.
            chunk_sink: called as ``sink(session, offset, payload)`` for every new chunk,
                with the payload a view into the caller's buffer (store it before the next
                datagram). By default new chunks become ``ChunkReceived`` events.
        """
        self.config = config or ReceiverConfig()
        self.sessions: dict[tuple[Peer, int], ReceiverSession] = {}
        self.received = 0  # every datagram handed in
        self.rejected = 0  # datagrams that are part of no valid transfer
        self._sink = EventSink()
        self._refusals: list[tuple[bytes, Peer]] = []
        self._store: ChunkSink = chunk_sink or self._sink.store_as_event

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, peer: Peer, now: float, queued_s: float = 0.0
    ) -> None:
        """Handle one datagram from ``peer``; never raises for any content.

        ``queued_s`` is how long it waited in our own receive queue (from kernel timestamps):
        STATUS reports it, so the sender can tell network queueing from ours.
        """
        self.received += 1
        view = data if isinstance(data, memoryview) else memoryview(data)
        fields = data_fields_untrusted(view)
        if fields is not None:  # the hot path: an intact DATA datagram
            session = self.sessions.get((peer, fields[0]))
            if session is not None and session.started:
                session.datagrams += 1
                if not session.on_data(*fields[1:], now, queued_s):
                    self.rejected += 1
                return
        try:
            packet = decode_untrusted(data)
        except CorruptPacket as exc:
            session = self.sessions.get((peer, exc.session))
            if session is not None and session.is_transfer:
                session.corrupt += 1
                session.datagrams += 1
            else:
                self.rejected += 1
            return
        except MalformedPacket:
            self.rejected += 1
            return
        key = (peer, packet.session)
        session = self.sessions.get(key)
        if session is None:
            if not isinstance(packet, Meta | Data | End):
                self.rejected += 1
                return
            self._make_room_for_unknown()
            session = ReceiverSession(
                peer, packet.session, now, self.config, self._sink, self._store
            )
            self.sessions[key] = session
        elif (
            session.state is ReceiverState.PROBATION
            and isinstance(packet, Data | End)
            and self.active_transfers >= self.config.max_transfers
        ):
            session.refuse("receiver busy", now)
        if not session.receive_packet(packet, now):
            self.rejected += 1

    def datagrams_to_send(self, now: float | None = None) -> list[tuple[bytes, Peer]]:
        """Feedback for every peer: (datagram, peer) pairs."""
        out, self._refusals = self._refusals, []
        for session in self.sessions.values():
            if session.has_outgoing:
                out.extend((datagram, session.peer) for datagram in session.datagrams_to_send(now))
        return out

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
        return sum(
            1
            for s in self.sessions.values()
            if s.state is ReceiverState.RECEIVING or s.state is ReceiverState.VERIFYING
        )

    def _make_room_for_unknown(self) -> None:
        """Keep at most ``max_pending_sessions`` sessions that are not transfers (yet): drop
        the one heard from longest ago, so junk cannot lock real senders out."""
        waiting = [s for s in self.sessions.values() if not s.is_transfer]
        if len(waiting) < self.config.max_pending_sessions:
            return
        oldest = min(waiting, key=lambda s: s.last_heard)
        del self.sessions[(oldest.peer, oldest.session_id)]
        self.rejected += oldest.datagrams
