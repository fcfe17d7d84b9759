"""What a receiver session sends back: HELLO, HAVE, STATUS, NACKs answering an END, DONE."""

from __future__ import annotations

import numpy as np

from udpxfer.protocol.bodies import MAX_NACK_RANGES
from udpxfer.protocol.codec import encode
from udpxfer.protocol.events import NackSent
from udpxfer.protocol.ranges import batched, missing_ranges
from udpxfer.protocol.receiver_core import ReceiverCore, ns
from udpxfer.protocol.receiver_state import ReceiverState
from udpxfer.protocol.wire import (
    Done,
    End,
    Have,
    Hello,
    HelloFlags,
    Mode,
    Nack,
    RangeKind,
    Status,
)

MAX_HAVE_DATAGRAMS = 16


class ReceiverFeedback(ReceiverCore):
    """The datagrams one incoming transfer sends to its sender, and the END they answer."""

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
                ns(created),
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
            if self.manifest_needed:
                self._ask_manifest(end.round, end.sent_ns, now)
                return
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
                    ns(now),
                    pn=self._next_pn(),
                ),
                self.seal,
            )
            self._outgoing.append(datagram)
            budget -= len(datagram)
            spent += len(datagram)
            sent += 1
        self._answered_round = (round_no, spent)
        self.nacks_sent += sent
        self._events.outgoing = True
        self._events.emit(self, NackSent(end.round, self._chunk_count - self.held_count))

    def _ask_manifest(self, round_no: int, echo_ns: int, now: float) -> bool:
        """One NACK of kind 1 for the block hashes still missing (asked only once the
        whole-file hash failed: a sender computes them on request); True if one was queued."""
        ranges = missing_ranges(np.array([d is not None for d in self.manifest], np.uint8))
        if not ranges:
            return False
        nack = Nack(
            self.session_id,
            round_no,
            echo_ns,
            tuple(ranges[:MAX_NACK_RANGES]),
            ns(now),
            RangeKind.BLOCKS,
            self._next_pn(),
        )
        self._outgoing.append(encode(nack, self.seal))
        self._events.outgoing = True
        return True

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
                ns(now),
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
            sent_ns=ns(now),
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
            have = Have(self.session_id, tuple(part), 0, ns(now), self._next_pn())
            out.append(encode(have, self.seal))
        return out
