"""The sans-IO sender session: a file buffer and the time go in, datagrams and events come out.

No sockets, clocks or files in here (STYLE.md section 1): the driver hands in ``now`` and
the bytes the peer sent, sends what ``datagrams_to_send`` returns and sleeps until
``get_timer``.

Reliable mode is NACK-based selective repeat: the first pass sends every chunk once, then an
END for round 0; the receiver answers with NACK ranges (or DONE); the sender resends those
chunks marked RESENT and ends round 1, and so on. Lost END, NACK or DONE datagrams are
covered by resending END after a retransmission timeout (RFC 6298 estimator). Flow control:
the receiver's STATUS reports the highest transmission number it has read and a window in
datagrams; the sender keeps at most that many datagrams beyond it, so a receiver's socket
buffer never overflows on a clean path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from udpxfer.protocol.events import Event, Outcome
from udpxfer.protocol.sender_data import DataRun, SenderData
from udpxfer.protocol.sender_feedback import SenderFeedback
from udpxfer.protocol.sender_handshake import SenderHandshake
from udpxfer.protocol.sender_state import SenderState
from udpxfer.protocol.wire import Abort, AbortCode, Done, Have, Hello, Mode, Nack, Status


class SenderSession(SenderData, SenderFeedback, SenderHandshake):
    """One file being sent to one receiver.

    Its fields and state are set up in ``SenderCore``; sending, feedback and the handshake
    are its parts (sender_data, sender_feedback, sender_handshake); here are the datagrams
    in, the timers and the end.
    """

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, now: float, queued_s: float = 0.0
    ) -> None:
        """Handle one datagram from the receiver; junk is counted (``stats().rejected``).

        ``queued_s`` is how long it waited in our own socket before this call (kernel
        timestamps), left out of the congestion controller's round-trip samples.
        """
        packet = self._decode(data, now)
        if packet is None:
            return
        if packet.session != self.session_id or self._state is SenderState.FAILED:
            self._rejected += 1
            return
        match packet:
            case Hello():
                self._on_hello(packet, now)
            case Status():
                if self._state is SenderState.HANDSHAKE:
                    return  # a blast-probation STATUS: the HELLO decides
                self._on_status(packet, now, queued_s)
            case Have():
                self._on_have(packet, now)
            case Nack():
                self._on_feedback(now, packet.echo_ns)
                self._on_nack(packet, now)
            case Done():
                self._on_feedback(now, packet.echo_ns)
                self._on_done(packet, now)
            case Abort():
                self._on_abort(packet, now)
            case _:
                self._rejected += 1

    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` must run, or None."""
        if self._state is SenderState.DONE or self._state is SenderState.FAILED:
            return None
        deadlines = [
            t for t in (self._end_at, self._verdict_deadline, self._meta_at) if t is not None
        ]
        if self._state is not SenderState.CLOSING and (
            self.mode is Mode.RELIABLE or self._state is SenderState.HANDSHAKE
        ):
            deadlines.append(self._give_up_at())
        if self._key_problem is not None:
            deadlines.append(self._key_problem[1])
        if self.mode is Mode.BLAST and not self._feedback and not self._open_loop:
            deadlines.append(self._started_at + self.config.open_loop_after_s)
        if self._have_wait_until is not None:
            deadlines.append(self._have_wait_until)
        if self._has_data_to_send():
            release = self._pacer.next_release()
            if release is not None:
                deadlines.append(release)
            if self._probe_at is not None and not self._open_loop:
                deadlines.append(self._probe_at)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Run whatever timer is due: END retransmission, give-up, open loop, verdict wait."""
        if self._state is SenderState.DONE or self._state is SenderState.FAILED:
            return
        if self._key_problem is not None and now >= self._key_problem[1]:
            self._finish(now, Outcome.UNAUTHENTICATED, self._key_problem[0], fail=True)
            return
        if (
            (self.mode is Mode.RELIABLE or self._state is SenderState.HANDSHAKE)
            and self._state is not SenderState.CLOSING
            and now >= self._give_up_at()
        ):
            self._queue_control(self._abort(AbortCode.TIMEOUT, "sender gave up", now))
            silent = now - self._last_heard
            self._finish(
                now, Outcome.TIMEOUT, f"no answer from the receiver for {silent:.0f} s", fail=True
            )
            return
        if self._have_wait_until is not None and now >= self._have_wait_until:
            self._have_wait_until = None  # the HAVE was lost: send, duplicates are harmless
        if self._meta_at is not None and now >= self._meta_at:
            # Handshake: META again (with the token, once the receiver gave one).
            self._queue_control(self._meta(1, now))
            self._rtt.back_off()
            self._meta_at = now + self._handshake_interval()
        if (
            self.mode is Mode.BLAST
            and not self._feedback
            and now >= self._started_at + self.config.open_loop_after_s
        ):
            self._open_loop = True  # no reverse path: send at the configured rate regardless
        if self._end_at is not None and now >= self._end_at:
            self._send_end(now)
        if self._verdict_deadline is not None and now >= self._verdict_deadline:
            self._finish(now, Outcome.SENT, "no verdict from the receiver")

    def _give_up_at(self) -> float:
        limit = self.config.give_up_s
        if not self._accepted and not self._feedback and self._refused_by_network:
            limit = min(limit, self.config.refused_give_up_s)
        return self._last_heard + limit

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def abort(self, reason: str, now: float, *, unsent: Sequence[DataRun] = ()) -> None:
        """Stop now and tell the receiver (two ABORT copies).

        ``unsent``: runs ``transmit`` returned that never left (the driver was interrupted
        before it sent them); they are taken back out of what the ABORT and the counters say
        was sent, so that the receiver counts none of their chunks as lost.
        """
        if self._state is SenderState.DONE or self._state is SenderState.FAILED:
            return
        self._take_back(unsent)
        self._pending.append(self._abort(AbortCode.CANCELLED, reason, now))
        self._pending.append(self._abort(AbortCode.CANCELLED, reason, now))
        self._finish(now, Outcome.ABORTED, reason, fail=True)

    def note_unreachable(self, to: object) -> None:
        """ICMP port unreachable came back from ``to``: a transfer that timed out says so, it
        is the likely cause."""
        outcome = self.outcome
        if outcome is not None and outcome.outcome is Outcome.TIMEOUT:
            reason = f"{outcome.reason}; nothing is listening at {to}"
            self.outcome = dataclasses.replace(outcome, reason=reason)

    def release(self) -> None:
        """Drop the reference to the file's buffer (the driver may then unmap it)."""
        if isinstance(self._view, memoryview):
            self._view.release()
        self._view = b""

    def port_unreachable(self) -> None:
        """The driver saw ICMP port unreachable: nothing listens there (yet), so give up
        sooner while the receiver has never answered."""
        self._refused_by_network = True
