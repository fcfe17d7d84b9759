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

import collections
from dataclasses import dataclass
from enum import Enum, auto

from udpxfer.errors import MalformedPacket, UsageError
from udpxfer.events import Event, RepairRequested, TransferEnded
from udpxfer.pacing import DelayWindow, Pacer, RttEstimator
from udpxfer.ranges import iter_indexes
from udpxfer.wire import (
    DEFAULT_CHUNK_BYTES,
    MAX_CHUNK_BYTES,
    SHA256_BYTES,
    Abort,
    AbortCode,
    Done,
    End,
    Flags,
    Meta,
    Mode,
    Nack,
    Status,
    Verdict,
    chunk_count_for,
    decode_untrusted,
    encode,
    encode_data,
)


class SenderState(Enum):
    """Where a sender session is; every transition happens in this module."""

    SENDING = auto()  # first pass
    WAITING = auto()  # END sent, waiting for NACK or DONE
    REPAIRING = auto()  # resending chunks the receiver asked for
    CLOSING = auto()  # blast: everything sent, END copies going out, verdict awaited
    DONE = auto()
    FAILED = auto()


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """Tunables of a sender session (defaults suit loopback and LANs)."""

    chunk_size: int = DEFAULT_CHUNK_BYTES
    mode: Mode = Mode.RELIABLE
    rate_bps: int = 0
    max_window: int = 16384  # datagrams beyond the receiver's last report, at most
    initial_window: int = 64  # before the receiver has reported its window
    # A delay-based window (pacing.DelayWindow) on top of flow control, for unpaced sending;
    # with an explicit rate the user sets the pace (its slow growth would cap long fat paths).
    congestion_control: bool = True
    give_up_s: float = 10.0  # silence from the receiver after which a reliable send fails
    meta_copies: int = 3  # META copies sent before the first chunk
    meta_every: int = 256  # and one more every so many chunks until the receiver reports
    end_copies: int = 3  # blast mode: END copies, spaced by end_spacing_s
    end_spacing_s: float = 0.02
    verdict_wait_s: float = 3.0  # blast mode: how long to wait for the receiver's verdict
    open_loop_after_s: float = 1.0  # blast mode: go on without feedback after this long
    batch: int = 64  # datagrams returned per datagrams_to_send call at most
    min_rto_s: float = 0.05
    max_rto_s: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_BYTES:
            raise UsageError(f"chunk size must be between 1 and {MAX_CHUNK_BYTES} bytes")
        if self.rate_bps < 0:
            raise UsageError("rate must not be negative")
        if self.give_up_s <= 0:
            raise UsageError("the give-up timeout must be positive")


class SenderSession:
    """One file being sent to one receiver."""

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        *,
        name: str,
        sha256: bytes,
        session_id: int,
        now: float,
        config: SenderConfig | None = None,
    ) -> None:
        self.config = config or SenderConfig()
        if len(sha256) != SHA256_BYTES:
            raise UsageError("sha256 must be 32 bytes")
        self._view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.size = len(self._view)
        self.chunk_size = self.config.chunk_size
        self.chunk_count = chunk_count_for(self.size, self.chunk_size)
        self.session_id = session_id
        self.mode = self.config.mode
        self.meta = Meta(
            session_id, name, self.size, self.chunk_size, self.chunk_count, sha256, self.mode
        )
        self.state = SenderState.SENDING
        self.started_at = now
        self.finished_at: float | None = None
        self.sent_all_at: float | None = None  # when the first pass was all sent
        self.outcome: TransferEnded | None = None
        self.verdict: Verdict | None = None
        self.receiver_sha256: bytes | None = None

        self._next_index = 0  # next chunk of the first pass
        self._tx = 0  # next transmission number
        self._round = 0  # round of the last END sent
        self._repair: collections.deque[int] = collections.deque()
        self._asked_this_round: set[int] = set()
        self._pending: list[bytes] = []  # control datagrams to send first
        self._events: collections.deque[Event] = collections.deque()

        self._highest_acked = -1
        self._window = self.config.initial_window
        self._advertised = self.config.initial_window
        self._reported_received = 0  # the receiver's DATA count in its last STATUS
        self._reported_highest = -1
        self._next_cut = 0.0  # the window is cut at most once a round trip
        self._unsent_stamp: int | None = None  # sent_ns of a feedback request not yet out
        self._left_at: dict[int, float] = {}  # sent_ns stamp -> when its batch left
        self._congestion = (
            DelayWindow() if self.config.congestion_control and not self.config.rate_bps else None
        )
        self._feedback = False  # a STATUS, NACK or DONE has arrived
        self._open_loop = False
        self._probe_at: float | None = None
        self._probing = False
        self._last_heard = now
        self._end_at: float | None = None  # next END (re)transmission
        self._ends_left = 0
        self._verdict_deadline: float | None = None
        self._pacer = Pacer(self.config.rate_bps, now)
        self.rtt = RttEstimator(min_rto_s=self.config.min_rto_s, max_rto_s=self.config.max_rto_s)

        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.chunks_resent = 0
        self.repair_rounds = 0
        self.rejected = 0
        self.acked_held = 0  # chunks the receiver last said it holds

        for copy in range(self.config.meta_copies):
            self._queue_control(self._meta(copy, now))

    # -- the sans-IO interface -------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Datagrams to send now, at most ``config.batch`` of data; call until empty."""
        out = self._pending
        self._pending = []
        if self.state is SenderState.SENDING or self.state is SenderState.REPAIRING:
            self._fill(out, now)
        for datagram in out:
            self.bytes_sent += len(datagram)
        self.datagrams_sent += len(out)
        return out

    def batch_left(self, now: float) -> None:
        """The driver reports that what ``datagrams_to_send`` returned has left, at ``now``.

        Round-trip samples for the congestion window then start from when a datagram
        really left, not from when its batch was built.
        """
        if self._unsent_stamp is not None:
            self._left_at[self._unsent_stamp] = now
            self._unsent_stamp = None
            if len(self._left_at) > 256:
                del self._left_at[next(iter(self._left_at))]

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, now: float, queued_s: float = 0.0
    ) -> None:
        """Handle one datagram from the receiver; junk is counted in ``rejected``.

        ``queued_s`` is how long it waited in our own socket before this call (kernel
        timestamps), left out of the congestion controller's round-trip samples.
        """
        try:
            packet = decode_untrusted(data)
        except MalformedPacket:
            self.rejected += 1
            return
        if packet.session != self.session_id or self.state is SenderState.FAILED:
            self.rejected += 1
            return
        match packet:
            case Status():
                self._on_feedback(now, packet.echo_ns)
                self.acked_held = max(self.acked_held, packet.held)
                acked = lost = 0
                if packet.received >= self._reported_received:
                    # Datagrams the receiver's tx count passed minus those it received since
                    # the previous report: a (reordering-tolerant) loss signal.
                    lost = (packet.highest_tx - self._reported_highest) - (
                        packet.received - self._reported_received
                    )
                    self._reported_received = packet.received
                    self._reported_highest = max(self._reported_highest, packet.highest_tx)
                if packet.highest_tx > self._highest_acked:
                    highest = min(packet.highest_tx, self._tx - 1)
                    acked = highest - self._highest_acked
                    self._highest_acked = highest
                self._advertised = max(1, min(packet.window, self.config.max_window))
                if self._congestion is not None:
                    if packet.echo_ns:
                        # Queueing in the receiver's own socket is flow control's business
                        # (its advertised window), not the network's: leave it out.
                        left = self._left_at.pop(packet.echo_ns, packet.echo_ns / 1e9)
                        rtt = now - left - packet.queued_ns / 1e9 - queued_s
                        self._congestion.on_ack(acked, rtt)
                    if lost > 0 and now >= self._next_cut:
                        self._congestion.on_loss()  # it judges with the sample just taken
                        self._next_cut = now + (self.rtt.srtt_s or 0.0)
                    self._window = self._congestion.limit(self._advertised)
                else:
                    self._window = self._advertised
                self._probe_at = None
            case Nack():
                self._on_feedback(now, packet.echo_ns)
                self._on_nack(packet, now)
            case Done():
                self._on_feedback(now, packet.echo_ns)
                self._on_done(packet, now)
            case Abort():
                self._last_heard = now
                self._finish(now, "aborted", f"receiver aborted: {packet.reason}", fail=True)
            case _:
                self.rejected += 1

    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` must run, or None."""
        if self.state is SenderState.DONE or self.state is SenderState.FAILED:
            return None
        deadlines = [t for t in (self._end_at, self._verdict_deadline) if t is not None]
        if self.state is not SenderState.CLOSING and self.mode is Mode.RELIABLE:
            deadlines.append(self._last_heard + self.config.give_up_s)
        if self.mode is Mode.BLAST and not self._feedback and not self._open_loop:
            deadlines.append(self.started_at + self.config.open_loop_after_s)
        if self._has_data_to_send():
            release = self._pacer.next_release()
            if release is not None:
                deadlines.append(release)
            if self._probe_at is not None and not self._open_loop:
                deadlines.append(self._probe_at)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Run whatever timer is due: END retransmission, give-up, open loop, verdict wait."""
        if self.state is SenderState.DONE or self.state is SenderState.FAILED:
            return
        if (
            self.mode is Mode.RELIABLE
            and self.state is not SenderState.CLOSING
            and now >= self._last_heard + self.config.give_up_s
        ):
            self._queue_control(self._abort(AbortCode.TIMEOUT, "sender gave up", now))
            self._finish(
                now,
                "timeout",
                f"no answer from the receiver for {self.config.give_up_s:g} s",
                fail=True,
            )
            return
        if (
            self.mode is Mode.BLAST
            and not self._feedback
            and now >= self.started_at + self.config.open_loop_after_s
        ):
            self._open_loop = True  # no reverse path: send at the configured rate regardless
        if self._end_at is not None and now >= self._end_at:
            self._send_end(now)
        if self._verdict_deadline is not None and now >= self._verdict_deadline:
            self._finish(now, "sent", "no verdict from the receiver")

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def abort(self, reason: str, now: float) -> None:
        """Stop now and tell the receiver (two ABORT copies)."""
        if self.state is SenderState.DONE or self.state is SenderState.FAILED:
            return
        abort = self._abort(AbortCode.CANCELLED, reason, now)
        self._pending.extend((abort, abort))
        self._finish(now, "aborted", reason, fail=True)

    def release(self) -> None:
        """Drop the reference to the file's buffer (the driver may then unmap it)."""
        if isinstance(self._view, memoryview):
            self._view.release()
        self._view = b""

    # -- state ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the session is DONE or FAILED."""
        return self.state is SenderState.DONE or self.state is SenderState.FAILED

    @property
    def first_pass_sent(self) -> int:
        """Chunks of the first pass sent so far."""
        return self._next_index

    @property
    def window(self) -> int:
        """Datagrams the sender may have in flight now (congestion and receiver's window)."""
        return self._window

    @property
    def reported_loss(self) -> tuple[int, int]:
        """(transmissions the receiver's last STATUS says did not arrive, transmissions up to
        the highest it saw): the loss so far as the receiver sees it."""
        seen = self._reported_highest + 1
        return max(0, seen - self._reported_received), seen

    def _has_data_to_send(self) -> bool:
        if self.state is SenderState.SENDING:
            return True
        return self.state is SenderState.REPAIRING and bool(self._repair)

    def _window_open(self, now: float) -> bool:
        if self._open_loop or self._tx - self._highest_acked - 1 < self._window:
            return True
        if self._probe_at is None:
            self._probe_at = now + self.rtt.rto_s
            return False
        if now >= self._probe_at:
            # No feedback for a whole timeout: what was in flight has left the network one way
            # or the other (a loss burst can swallow every datagram that would have asked for
            # feedback). Like TCP after a retransmission timeout, count it gone, halve the
            # window and go on; NACK rounds repair what was lost. Send META too while the
            # receiver has not answered at all: it may have lost every copy.
            self._highest_acked = self._tx - 1
            if self._congestion is not None:
                self._congestion.on_timeout()
                self._window = self._congestion.limit(self._advertised)
            # No backoff here: a long loss burst must not slow the walk past it to a crawl;
            # a dead receiver is caught by the give-up timer instead.
            self._probe_at = None
            self._probing = True
            return True
        return False

    def _fill(self, out: list[bytes], now: float) -> None:
        """Append up to ``batch`` data datagrams allowed by window and pacing."""
        config = self.config
        view, size, chunk_size = self._view, self.size, self.chunk_size
        sid, sent_ns = self.session_id, int(now * 1e9)
        pacer = self._pacer
        ack_every = max(1, self._window // 4)
        repairing = self.state is SenderState.REPAIRING
        pass_no = self._round + 1 if repairing else 0
        flags = int(Flags.RESENT) if repairing else 0
        for _ in range(config.batch):
            if repairing:
                if not self._repair:
                    self._end_pass(now)
                    return
                index = self._repair.popleft()
            else:
                if self._next_index >= self.chunk_count:
                    self._end_pass(now)
                    return
                index = self._next_index
            if not pacer.ready(now) or not self._window_open(now):
                if repairing:
                    self._repair.appendleft(index)
                return
            tx = self._tx
            in_flight = tx - self._highest_acked
            ack = tx % ack_every == 0 or in_flight >= self._window
            if ack:
                self._unsent_stamp = sent_ns
            start = index * chunk_size
            datagram = encode_data(
                sid,
                index,
                tx,
                view[start : min(start + chunk_size, size)],
                pass_no=pass_no,
                flags=flags | int(Flags.ACK_REQUESTED) if ack else flags,
                sent_ns=sent_ns,
            )
            out.append(datagram)
            pacer.consume(len(datagram))
            self._tx = tx + 1
            if repairing:
                self.chunks_resent += 1
            else:
                self._next_index = index + 1
            if not self._feedback and (self._probing or self._tx % config.meta_every == 0):
                out.append(self._meta(self._tx // config.meta_every, now))
            self._probing = False

    def _end_pass(self, now: float) -> None:
        if self.sent_all_at is None:
            self.sent_all_at = now
        if self.state is SenderState.REPAIRING:
            self._round += 1
            self._asked_this_round.clear()
        if self.mode is Mode.BLAST:
            self.state = SenderState.CLOSING
            self._ends_left = self.config.end_copies
        else:
            self.state = SenderState.WAITING
            self._ends_left = 0
        self._send_end(now)

    def _send_end(self, now: float) -> None:
        end = End(self.session_id, self._round, self._next_index, self._tx, int(now * 1e9))
        self._queue_control(encode(end))
        if self.mode is Mode.BLAST:
            self._ends_left -= 1
            if self._ends_left > 0:
                self._end_at = now + self.config.end_spacing_s
            else:
                self._end_at = None
                if self._verdict_deadline is None:
                    self._verdict_deadline = now + self.config.verdict_wait_s
        else:
            if self._end_at is not None and now >= self._end_at:
                self.rtt.back_off()  # this END is a retransmission
            self._end_at = now + self.rtt.rto_s

    def _on_feedback(self, now: float, echo_ns: int) -> None:
        self._last_heard = now
        self._feedback = True
        if echo_ns:
            self.rtt.sample(now - echo_ns / 1e9)

    def _on_nack(self, nack: Nack, now: float) -> None:
        if self.mode is Mode.BLAST or nack.round != self._round:
            return  # stale: a later END will be answered with a fresh NACK
        if self.state is not SenderState.WAITING and self.state is not SenderState.REPAIRING:
            return
        added = 0
        asked = self._asked_this_round
        for index in iter_indexes(nack.ranges):
            if index < self.chunk_count and index not in asked:
                asked.add(index)
                self._repair.append(index)
                added += 1
        if added:
            if self.state is SenderState.WAITING:
                self.state = SenderState.REPAIRING
                self.repair_rounds += 1
                self._end_at = None
            self._events.append(RepairRequested(nack.round, added))

    def _on_done(self, done: Done, now: float) -> None:
        self.verdict = done.verdict
        self.receiver_sha256 = done.sha256
        self.acked_held = done.held
        if self.mode is Mode.BLAST:
            if self._next_index >= self.chunk_count:
                outcome = "complete" if done.verdict is Verdict.VERIFIED else "incomplete"
                self._finish(now, outcome, "")
            return
        if done.verdict is Verdict.VERIFIED:
            self._finish(now, "complete", "")
        elif done.verdict is Verdict.MISMATCH:
            self._finish(
                now, "mismatch", "the receiver's SHA-256 does not match the file", fail=True
            )
        else:
            self._finish(now, "incomplete", "the receiver gave up with chunks missing", fail=True)

    def _finish(self, now: float, outcome: str, reason: str, *, fail: bool = False) -> None:
        self.state = SenderState.FAILED if fail else SenderState.DONE
        self.finished_at = now
        self._end_at = self._verdict_deadline = self._probe_at = None
        self.outcome = TransferEnded(outcome, reason, self.verdict)
        self._events.append(self.outcome)

    def _queue_control(self, datagram: bytes) -> None:
        self._pending.append(datagram)

    def _meta(self, copy: int, now: float) -> bytes:
        meta = self.meta
        return encode(
            Meta(
                meta.session,
                meta.name,
                meta.size,
                meta.chunk_size,
                meta.chunk_count,
                meta.sha256,
                meta.mode,
                copy,
                int(now * 1e9),
            )
        )

    def _abort(self, code: AbortCode, reason: str, now: float) -> bytes:
        return encode(Abort(self.session_id, code, reason, int(now * 1e9)))
