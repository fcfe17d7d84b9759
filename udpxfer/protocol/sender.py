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
import dataclasses
import struct
from dataclasses import dataclass
from enum import Enum, auto

from udpxfer.errors import AuthenticationFailed, MalformedPacket, UsageError
from udpxfer.protocol.bodies import MAX_RANGES
from udpxfer.protocol.checksum import crc32
from udpxfer.protocol.codec import decode_header_untrusted, encode
from udpxfer.protocol.congestion import BbrController
from udpxfer.protocol.events import Event, Outcome, RepairRequested, TransferEnded
from udpxfer.protocol.framing import CRC, Seal, parse_header_untrusted
from udpxfer.protocol.pacing import Pacer, RttEstimator
from udpxfer.protocol.ranges import RangeQueue, clamp_ranges
from udpxfer.protocol.wire import (
    DEFAULT_CHUNK_BYTES,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    MANIFEST_HASHES,
    MAX_CHUNK_BYTES,
    MAX_NAME_BYTES,
    MAX_PN,
    NONCE_BYTES,
    SHA256_BYTES,
    TOKEN_BYTES,
    VERSION,
    Abort,
    AbortCode,
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
    PacketType,
    RangeKind,
    Status,
    Verdict,
    block_chunks_for,
    chunk_count_for,
    datagrams_per_run,
)

# What a receiver says in an unauthenticated HELLO when keys do not match.
_KEY_PROBLEMS = {
    HelloFlags.NEED_KEY: "the receiver needs a key (--key-file)",
    HelloFlags.NO_KEY: "the receiver has no key: it cannot take a keyed transfer",
    HelloFlags.AUTH_FAILED: "authentication failed (wrong key?)",
}


class SenderState(Enum):
    """Where a sender session is; every transition happens in this module."""

    HANDSHAKE = auto()  # META sent, waiting for the receiver's HELLO (reliable or keyed)
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
    # Model-based congestion control (congestion.BbrController: its pace and window) on top
    # of flow control, for unpaced sending; with an explicit rate the user sets the pace.
    congestion_control: bool = True
    give_up_s: float = 20.0  # silence from the receiver after which a reliable send fails
    refused_give_up_s: float = 3.0  # the same before any answer, when ICMP says nobody listens
    auth_give_up_s: float = 1.0  # a key mismatch notice, and no authenticated answer since
    meta_copies: int = 3  # META copies sent before the first chunk
    meta_every: int = 256  # and one more every so many chunks until the receiver reports
    end_copies: int = 3  # blast mode: END copies, spaced by end_spacing_s
    end_spacing_s: float = 0.02
    verdict_wait_s: float = 3.0  # blast mode: how long to wait for the receiver's verdict
    open_loop_after_s: float = 1.0  # blast mode: go on without feedback after this long
    batch: int = 128  # DATA datagrams returned per transmit call at most (whole GSO runs)
    # Runs of resent chunks per transmit call at most: scattered repairs are a short run each,
    # and building one touches its part of the file, which the driver lets go between calls
    # (source.SentPages), so that a call's repairs do not map much of the file at once.
    repair_runs: int = 16
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
        mtime_ns: int = 0,
        keying: SenderKeying | None = None,
        manifest: tuple[bytes, ...] = (),
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
        self.keying = keying
        block_chunks = block_chunks_for(self.chunk_count, self.chunk_size) if manifest else 0
        if manifest and len(manifest) != -(-self.chunk_count // block_chunks):
            raise UsageError("the manifest must hold one SHA-256 per block")
        self._manifest = manifest if self.mode is Mode.RELIABLE else ()
        # No file system takes a name this long; the receiver cuts it to a safe one anyway.
        name = name.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")
        self.meta = Meta(
            session_id,
            name,
            self.size,
            self.chunk_size,
            self.chunk_count,
            sha256,
            self.mode,
            block_chunks=block_chunks if self._manifest else 0,
            mtime_ns=mtime_ns,
            nonce=keying.nonce if keying is not None else bytes(NONCE_BYTES),
        )
        self._handshake_seal: Seal = keying.handshake_seal() if keying is not None else CRC
        self._seal: Seal = self._handshake_seal
        self._token = bytes(TOKEN_BYTES)
        self._accepted = False  # the receiver's HELLO said the transfer is on
        self._receiver_nonce: bytes | None = None
        self._old_nonces: set[bytes] = set()  # receivers we talked to before a restart
        self._key_problem: tuple[str, float] | None = None
        self.refused_by_network = False  # the driver saw ICMP port unreachable
        self.resumed = 0  # chunks the receiver already held (HAVE)
        self._have_expected = 0  # chunks a resuming receiver's HELLO said it holds
        self._have_wait_until: float | None = None  # until then, wait for its HAVE
        self._first = RangeQueue(self.chunk_count)
        if self.chunk_count:
            self._first.add(0, self.chunk_count - 1)
        self._handshake = self.mode is Mode.RELIABLE or keying is not None
        self.state = SenderState.HANDSHAKE if self._handshake else SenderState.SENDING
        self.started_at = now
        self.finished_at: float | None = None
        self.sent_all_at: float | None = None  # when the first pass was all sent
        self.outcome: TransferEnded | None = None
        self.verdict: Verdict | None = None
        self.receiver_sha256: bytes | None = None

        self._next_index = 0  # the first pass has covered chunks [0, _next_index)
        self._tx = 0  # next transmission number
        self._pn = 0  # control packet number
        self._round = 0  # round of the last END sent
        self._repair = RangeQueue(self.chunk_count)
        self._manifest_asked = RangeQueue(len(self._manifest))
        self._pending: list[bytes] = []  # control datagrams to send first
        self._events: collections.deque[Event] = collections.deque()

        self._highest_acked = -1
        self._reported_received = 0  # DATA datagrams counted in the receiver's last STATUS
        self._reported_highest = -1
        self._window = self.config.initial_window
        self._advertised = self.config.initial_window
        self._unsent_stamp: int | None = None  # sent_ns of a feedback request not yet out
        self._left_at: dict[int, float] = {}  # sent_ns stamp -> when its batch left
        self._congestion = (
            self._new_congestion(now)
            if self.config.congestion_control and not self.config.rate_bps
            else None
        )
        self._feedback = False  # a STATUS, NACK or DONE has arrived
        self._open_loop = False
        self._probe_at: float | None = None
        self._probing = False
        self._last_heard = now
        self._end_at: float | None = None  # next END (re)transmission
        self._meta_at: float | None = now if self._handshake else None  # next META retry
        self._ends_left = 0
        self._verdict_deadline: float | None = None
        self._pacer = Pacer(
            self._congestion.pacing_rate_bps if self._congestion else self.config.rate_bps, now
        )
        self.rtt = RttEstimator(min_rto_s=self.config.min_rto_s, max_rto_s=self.config.max_rto_s)

        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.chunks_resent = 0
        self.repair_rounds = 0
        self.rejected = 0
        self.unauthenticated = 0  # datagrams that failed authentication (keyed mode)
        self.acked_held = 0  # chunks the receiver last said it holds

        for copy in range(1 if self._handshake else self.config.meta_copies):
            self._queue_control(self._meta(copy, now))
        if self._meta_at is not None:
            self._meta_at = now + self._handshake_interval()

    # -- the sans-IO interface -------------------------------------------------------------

    def transmit(self, now: float) -> list[bytes | DataRun]:
        """What to send now, in order: control datagrams, and DATA as runs of datagrams
        built as pieces for one gathered (UDP GSO) send each; at most ``config.batch`` DATA
        datagrams a call; call until empty."""
        out: list[bytes | DataRun] = list(self._pending)
        self._pending = []
        if self.state is SenderState.REPAIRING or (
            self.state is SenderState.SENDING and self._have_wait_until is None
        ):
            self._fill(out, now)
        for item in out:
            if isinstance(item, DataRun):
                self.bytes_sent += item.total_bytes
                self.datagrams_sent += item.count
            else:
                self.bytes_sent += len(item)
                self.datagrams_sent += 1
        return out

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """``transmit`` as whole datagrams, one bytes object each (tests, simple drivers)."""
        out: list[bytes] = []
        for item in self.transmit(now):
            if isinstance(item, DataRun):
                out.extend(item.datagrams())
            else:
                out.append(item)
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
        packet = self._decode(data, now)
        if packet is None:
            return
        if packet.session != self.session_id or self.state is SenderState.FAILED:
            self.rejected += 1
            return
        match packet:
            case Hello():
                self._on_hello(packet, now)
            case Status():
                if self.state is SenderState.HANDSHAKE:
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
                self._last_heard = now
                if packet.code is AbortCode.BUSY:
                    reason = packet.reason or "receiver busy"
                else:
                    reason = f"receiver aborted: {packet.reason}"
                self._finish(
                    now,
                    Outcome.REFUSED if packet.code in _REFUSALS else Outcome.ABORTED,
                    reason,
                    fail=True,
                )
            case _:
                self.rejected += 1

    def _decode(self, data: bytes | bytearray | memoryview, now: float) -> Packet | None:
        """Decode with the seal the packet type calls for; None (counted) when it fails."""
        try:
            header = parse_header_untrusted(data)
            seal = self._handshake_seal if header.ptype == int(_HELLO) else self._seal
            return decode_header_untrusted(header, seal)
        except AuthenticationFailed:
            self.unauthenticated += 1
            self._key_notice(data, now)
            return None
        except MalformedPacket:
            if self.keying is None:
                self._key_notice(data, now)
            self.rejected += 1
            return None

    def _key_notice(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """An unauthenticated HELLO saying the keys do not match: believed only if no
        authenticated answer comes within ``auth_give_up_s`` (a forger cannot stop a
        transfer that is under way)."""
        try:
            packet = decode_header_untrusted(parse_header_untrusted(data), CRC)
        except MalformedPacket:
            return
        if isinstance(packet, Hello) and packet.session == self.session_id:
            self._note_key_problem(packet, now)

    def _note_key_problem(self, hello: Hello, now: float) -> None:
        if self._accepted or self._key_problem is not None:
            return
        for flag, reason in _KEY_PROBLEMS.items():
            if hello.flags & flag:
                self._key_problem = (reason, now + self.config.auth_give_up_s)
                return

    def _on_hello(self, hello: Hello, now: float) -> None:
        self._last_heard = now
        if hello.flags & HelloFlags.RETRY and any(hello.token):
            if hello.token != self._token:
                self._token = hello.token
                self._queue_control(self._meta(0, now))  # echo it at once
            return
        if not hello.flags & HelloFlags.ACCEPTED:
            self._note_key_problem(hello, now)
            return
        self._key_problem = None
        if hello.echo_ns:
            self.rtt.sample(now - hello.echo_ns / 1e9)
        if hello.nonce != self._receiver_nonce and hello.nonce in self._old_nonces:
            return  # a replay of an earlier receiver's answer
        restarted = self._accepted and hello.nonce != self._receiver_nonce
        if restarted and self._receiver_nonce is not None:
            self._old_nonces.add(self._receiver_nonce)
        if self.keying is not None and hello.nonce != self._receiver_nonce:
            self._seal = self.keying.session_seal(hello.nonce)
        self._receiver_nonce = hello.nonce
        self._accepted = True
        self._feedback = True
        self._advertised = max(
            1, min(hello.window or self.config.initial_window, self.config.max_window)
        )
        self._window = (
            self._advertised if self._congestion is None else min(self._window, self._advertised)
        )
        if restarted:
            self._highest_acked = self._tx - 1  # what the old receiver had in flight is gone
            if self._congestion is not None:  # its counters start again from zero
                self._congestion = self._new_congestion(now)
        if self.state is SenderState.HANDSHAKE:
            self.state = SenderState.SENDING
            self._meta_at = None
            self._send_manifest(0, len(self._manifest) - 1, now)
            if hello.flags & HelloFlags.RESUMING and hello.held:
                # HAVE datagrams follow this HELLO: wait a moment for them, so that no chunk
                # the receiver holds travels again (a lost HAVE costs only duplicates).
                self._have_expected = min(hello.held, self.chunk_count)
                self._have_wait_until = now + self._handshake_interval()

    def _on_have(self, have: Have, now: float) -> None:
        """Chunks the receiver already holds from an earlier transfer: not sent again."""
        if not self._accepted:
            return
        self._last_heard = now
        for first, last in clamp_ranges(have.ranges, self.chunk_count, limit=MAX_RANGES):
            before = self._first.length
            self._first.discard(first, last)
            self.resumed += before - self._first.length
        if self.resumed >= self._have_expected:
            self._have_wait_until = None

    def _on_status(self, packet: Status, now: float, queued_s: float) -> None:
        self._on_feedback(now, packet.echo_ns)
        self.acked_held = max(self.acked_held, min(packet.held, self.chunk_count))
        highest_tx = min(packet.highest_tx, self._tx - 1)  # never beyond what we sent
        if highest_tx > self._highest_acked:
            self._highest_acked = highest_tx
        if packet.received >= self._reported_received:  # not an older, reordered STATUS
            self._reported_received = packet.received
            self._reported_highest = max(self._reported_highest, highest_tx)
        self._advertised = max(1, min(packet.window, self.config.max_window))
        if (congestion := self._congestion) is not None:
            rtt: float | None = None
            if packet.echo_ns:
                # Queueing in the receiver's own socket is flow control's business
                # (its advertised window), not the network's: leave it out.
                left = self._left_at.pop(packet.echo_ns, packet.echo_ns / 1e9)
                rtt = now - left - packet.queued_ns / 1e9 - queued_s
            congestion.on_status(
                packet.echo_ns,
                highest_tx=highest_tx,
                received=packet.received,
                tx_sent=self._tx - 1,
                rtt_s=rtt,
                now=now,
            )
            self._window = congestion.limit(self._advertised)
            self._pacer.set_rate(congestion.pacing_rate_bps, now)
        else:
            self._window = self._advertised
        self._probe_at = None

    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` must run, or None."""
        if self.state is SenderState.DONE or self.state is SenderState.FAILED:
            return None
        deadlines = [
            t for t in (self._end_at, self._verdict_deadline, self._meta_at) if t is not None
        ]
        if self.state is not SenderState.CLOSING and (
            self.mode is Mode.RELIABLE or self.state is SenderState.HANDSHAKE
        ):
            deadlines.append(self._give_up_at())
        if self._key_problem is not None:
            deadlines.append(self._key_problem[1])
        if self.mode is Mode.BLAST and not self._feedback and not self._open_loop:
            deadlines.append(self.started_at + self.config.open_loop_after_s)
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
        if self.state is SenderState.DONE or self.state is SenderState.FAILED:
            return
        if self._key_problem is not None and now >= self._key_problem[1]:
            self._finish(now, Outcome.UNAUTHENTICATED, self._key_problem[0], fail=True)
            return
        if (
            (self.mode is Mode.RELIABLE or self.state is SenderState.HANDSHAKE)
            and self.state is not SenderState.CLOSING
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
            self.rtt.back_off()
            self._meta_at = now + self._handshake_interval()
        if (
            self.mode is Mode.BLAST
            and not self._feedback
            and now >= self.started_at + self.config.open_loop_after_s
        ):
            self._open_loop = True  # no reverse path: send at the configured rate regardless
        if self._end_at is not None and now >= self._end_at:
            self._send_end(now)
        if self._verdict_deadline is not None and now >= self._verdict_deadline:
            self._finish(now, Outcome.SENT, "no verdict from the receiver")

    def _new_congestion(self, now: float) -> BbrController:
        return BbrController(now, datagram_bytes=self.chunk_size + HEADER_BYTES)

    def _give_up_at(self) -> float:
        limit = self.config.give_up_s
        if not self._accepted and not self._feedback and self.refused_by_network:
            limit = min(limit, self.config.refused_give_up_s)
        return self._last_heard + limit

    def _handshake_interval(self) -> float:
        return min(self.rtt.rto_s, 1.0)

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def abort(self, reason: str, now: float) -> None:
        """Stop now and tell the receiver (two ABORT copies)."""
        if self.state is SenderState.DONE or self.state is SenderState.FAILED:
            return
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

    # -- state ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the session is DONE or FAILED."""
        return self.state is SenderState.DONE or self.state is SenderState.FAILED

    @property
    def first_pass_sent(self) -> int:
        """The first pass has covered chunks ``[0, first_pass_sent)`` (sent or held already)."""
        return self._next_index

    @property
    def accepted(self) -> bool:
        """True once the receiver accepted the transfer (its HELLO arrived)."""
        return self._accepted

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
            return self._have_wait_until is None
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
            # receiver has not answered at all: it may have lost every copy; and always once
            # it has, since a receiver that was restarted knows this transfer only by it.
            # Two datagrams, both asking for an answer: enough to hear from a live receiver,
            # and all that goes into a dead or restarting one each timeout (as TCP's RTO sets
            # cwnd to one segment, RFC 5681 section 3.1).
            self._highest_acked = max(self._highest_acked, self._tx - self._window + 1)
            if self._congestion is not None:
                self._congestion.on_timeout(now)
                self._window = self._congestion.limit(self._advertised)
            # No backoff here: a long loss burst must not slow the walk past it to a crawl;
            # a dead receiver is caught by the give-up timer instead.
            self._probe_at = None
            self._probing = True
            return True
        return False

    def _fill(self, out: list[bytes | DataRun], now: float) -> None:
        """Append up to ``batch`` data datagrams allowed by window and pacing, as runs of
        consecutive chunks (one header per datagram, payloads as views of the file)."""
        config = self.config
        repairing = self.state is SenderState.REPAIRING
        queue = self._repair if repairing else self._first
        pacer = self._pacer
        datagram_bytes = HEADER_BYTES + self._seal.trailer_bytes + self.chunk_size
        # Whole GSO runs: every send, and so every receive at the other end, a full one.
        per_run = datagrams_per_run(datagram_bytes)
        left = max(per_run, config.batch // per_run * per_run)
        runs_left = config.repair_runs if repairing else left
        while left > 0 and runs_left > 0:
            if not queue:
                if not repairing:
                    self._next_index = self.chunk_count
                self._end_pass(now)
                return
            if not pacer.ready(now):
                return
            room = self._room()
            if room <= 0:
                if not self._window_open(now):
                    return
                room = max(1, self._room())
            first, count = queue.pop_run(min(left, room, pacer.allowance(now, datagram_bytes)))
            run = self._data_run(first, count, repairing, now)
            out.append(run)
            pacer.consume(run.total_bytes)
            left -= count
            runs_left -= 1
            if repairing:
                self.chunks_resent += count
            else:
                self._next_index = first + count
            every = config.meta_every
            crossed = (self._tx // every) != ((self._tx - count) // every)
            if self._probing or (not self._feedback and crossed):
                out.append(self._meta(self._tx // every, now))
            self._probing = False

    def _room(self) -> int:
        """Datagrams the window lets out now (unbounded with no feedback path: open loop)."""
        if self._open_loop:
            return self.config.batch
        return self._window - (self._tx - self._highest_acked - 1)

    def _data_run(self, first: int, count: int, repairing: bool, now: float) -> DataRun:
        """DATA datagrams for chunks ``first .. first+count-1`` as pieces for one gathered
        send: a packed header each, the payload as a view of the file, the trailer."""
        view, size, chunk_size = self._view, self.size, self.chunk_size
        sid, sent_ns, seal = self.session_id, int(now * 1e9), self._seal
        flags = (int(Flags.RESENT) if repairing else 0) | seal.flags
        pass_no = min(self._round + 1, 255) if repairing else 0
        window, acked = self._window, self._highest_acked
        ack_every = max(1, window // 8)
        pack, seal_data = HEADER.pack, seal.seal
        keyless = seal is CRC  # the check inline: CRC-32 of header and payload, no call
        pieces: list[bytes | memoryview] = []
        append = pieces.append
        tx = self._tx
        congestion = self._congestion
        for index in range(first, first + count):
            ack = tx % ack_every == 0 or tx - acked >= window
            if ack:
                self._unsent_stamp = sent_ns
                if congestion is not None:
                    congestion.on_sent(sent_ns, tx, now)
            header = pack(
                MAGIC, VERSION, _DATA, flags | _ACK if ack else flags, pass_no, sid, index, tx,
                sent_ns,
            )  # fmt: skip
            start = index * chunk_size
            payload = view[start : start + chunk_size]  # a slice stops at the end by itself
            append(header)
            if keyless:
                append(payload)
                append(_CHECK(crc32(payload, crc32(header))))
            else:
                pieces.extend(seal_data(0, tx, header, payload))
            tx += 1
        self._tx = tx
        overhead = HEADER_BYTES + seal.trailer_bytes
        last = overhead + min(chunk_size, size - (first + count - 1) * chunk_size)
        return DataRun(pieces, count, overhead + chunk_size if count > 1 else last, last, first)

    def _end_pass(self, now: float) -> None:
        if self.sent_all_at is None:
            self.sent_all_at = now
        if self.state is SenderState.REPAIRING:
            self._round += 1
            self._repair.reset()
            self._manifest_asked.reset()
        if self.mode is Mode.BLAST:
            self.state = SenderState.CLOSING
            self._ends_left = self.config.end_copies
        else:
            self.state = SenderState.WAITING
            self._ends_left = 0
        self._send_end(now)

    def _send_end(self, now: float) -> None:
        end = End(
            self.session_id,
            self._round,
            self._next_index,
            self._tx,
            int(now * 1e9),
            self._next_pn(),
        )
        self._queue_control(encode(end, self._seal))
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
                # A retransmission: nothing answered the last END. The receiver may have been
                # restarted, and a new one knows this transfer only by its META (the END alone
                # it keeps unanswered): announce it again with the END.
                self.rtt.back_off()
                self._queue_control(self._meta(1, now))
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
        if nack.kind is RangeKind.BLOCKS:
            # Merged per round, as chunk ranges are: each block's hash goes out at most once
            # a round, however many NACKs ask for it.
            asked = self._manifest_asked
            for first, last in clamp_ranges(nack.ranges, len(self._manifest), limit=MAX_RANGES):
                asked.add(first, last)
            while asked:
                first = last = asked.pop()
                while asked and asked.peek() == last + 1 and last - first + 1 < MANIFEST_HASHES:
                    last = asked.pop()
                self._send_manifest(first, last, now)
            return
        added = 0
        # Clamped to the file, merged with what is queued or was resent this round: however
        # large or repeated the ranges, the work is bounded by the file's own chunk count.
        for first, last in clamp_ranges(nack.ranges, self.chunk_count, limit=MAX_RANGES):
            added += self._repair.add(first, last)
        if added:
            if self.state is SenderState.WAITING:
                self.state = SenderState.REPAIRING
                self.repair_rounds += 1
                self._end_at = None
            self._events.append(RepairRequested(nack.round, added))

    def _send_manifest(self, first: int, last: int, now: float) -> None:
        """MANIFEST datagrams for blocks ``first..last`` (each block hash once per request)."""
        for start in range(first, last + 1, MANIFEST_HASHES):
            hashes = self._manifest[start : min(start + MANIFEST_HASHES, last + 1)]
            manifest = Manifest(self.session_id, start, hashes, int(now * 1e9), self._next_pn())
            self._queue_control(encode(manifest, self._seal))

    def _on_done(self, done: Done, now: float) -> None:
        self.verdict = done.verdict
        self.receiver_sha256 = done.sha256
        self.acked_held = done.held
        if self.mode is Mode.BLAST:
            if self._next_index >= self.chunk_count:
                for _ in range(2):
                    self._pending.append(self._abort(AbortCode.CLOSED, "verdict received", now))
                outcome = (
                    Outcome.COMPLETE if done.verdict is Verdict.VERIFIED else Outcome.INCOMPLETE
                )
                self._finish(now, outcome, "")
            return
        # Two copies of CLOSED: the receiver may stop lingering for a repeated END.
        for _ in range(2):
            self._pending.append(self._abort(AbortCode.CLOSED, "verdict received", now))
        if done.verdict is Verdict.VERIFIED:
            self._finish(now, Outcome.COMPLETE, "")
        elif done.verdict is Verdict.MISMATCH:
            self._finish(
                now, Outcome.MISMATCH, "the receiver's SHA-256 does not match the file", fail=True
            )
        else:
            self._finish(
                now, Outcome.INCOMPLETE, "the receiver gave up with chunks missing", fail=True
            )

    def _finish(self, now: float, outcome: Outcome, reason: str, *, fail: bool = False) -> None:
        self.state = SenderState.FAILED if fail else SenderState.DONE
        self.finished_at = now
        self._end_at = self._verdict_deadline = self._probe_at = None
        self.outcome = TransferEnded(outcome, reason, self.verdict)
        self._events.append(self.outcome)

    def _queue_control(self, datagram: bytes) -> None:
        self._pending.append(datagram)

    def _meta(self, copy: int, now: float) -> bytes:
        meta = dataclasses.replace(
            self.meta, copy=copy, sent_ns=int(now * 1e9), token=self._token, pn=self._next_pn()
        )
        return encode(meta, self._handshake_seal)

    def _abort(self, code: AbortCode, reason: str, now: float) -> bytes:
        abort = Abort(
            self.session_id, code, reason, int(now * 1e9), self._next_index, self._next_pn()
        )
        return encode(abort, self._seal)

    def _next_pn(self) -> int:
        self._pn = min(self._pn + 1, MAX_PN)
        return self._pn


_HELLO = 8  # PacketType.HELLO
_CHECK = struct.Struct("!I").pack  # the keyless trailer (wire.Seal)
_DATA = int(PacketType.DATA)
_ACK = int(Flags.ACK_REQUESTED)


@dataclass(frozen=True, slots=True)
class DataRun:
    """DATA datagrams of consecutive chunks as pieces for a gathered send.

    ``pieces`` are the datagrams back to back (header, body, trailer, header, ...), all
    ``segment`` bytes long but the last, which may be shorter (the file's last chunk).
    """

    pieces: list[bytes | memoryview]
    count: int
    segment: int  # bytes of each datagram but the last
    last_bytes: int  # bytes of the last datagram
    first: int = 0  # chunk index of the first datagram

    @property
    def total_bytes(self) -> int:
        """Bytes of all its datagrams."""
        return (self.count - 1) * self.segment + self.last_bytes

    def datagrams(self) -> list[bytes]:
        """The datagrams, each as one bytes object (copies)."""
        whole = b"".join(self.pieces)
        step = self.segment
        return [whole[start : start + step] for start in range(0, len(whole), step)]


_REFUSALS = (AbortCode.BUSY, AbortCode.REFUSED)


class SenderKeying:
    """Keyed mode on the sender: the pre-shared key, our nonce, and the seals they make."""

    def __init__(self, psk: bytes, session_id: int, nonce: bytes, *, encrypt: bool = True) -> None:
        from udpxfer.protocol.keyed import AeadSeal
        from udpxfer.protocol.keys import Direction, PacketProtection

        self.psk = psk
        self.session_id = session_id
        self.nonce = nonce
        self.encrypt = encrypt
        # No replay window here: a receiver restarted while we send numbers its HELLOs from
        # a new random start. A replayed HELLO changes nothing (see SenderSession._on_hello).
        self._handshake = AeadSeal(
            PacketProtection.handshake(psk, session_id, nonce),
            Direction.TO_RECEIVER,
            encrypt=False,
            replay=False,
        )

    def handshake_seal(self) -> Seal:
        """The seal of META and of the receiver's HELLO."""
        return self._handshake

    def session_seal(self, receiver_nonce: bytes) -> Seal:
        """The seal of everything after the HELLO, from both nonces."""
        from udpxfer.protocol.keyed import AeadSeal
        from udpxfer.protocol.keys import Direction, PacketProtection

        return AeadSeal(
            PacketProtection.session(self.psk, self.session_id, self.nonce, receiver_nonce),
            Direction.TO_RECEIVER,
            encrypt=self.encrypt,
        )
