"""Building what the sender sends: DATA runs for gathered sends, and the END after each pass."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from udpxfer.errors import UsageError
from udpxfer.protocol.checksum import crc32
from udpxfer.protocol.codec import encode
from udpxfer.protocol.framing import CRC
from udpxfer.protocol.sender_core import SenderCore
from udpxfer.protocol.sender_state import SenderState
from udpxfer.protocol.wire import (
    HEADER,
    HEADER_BYTES,
    MAGIC,
    VERSION,
    End,
    Flags,
    Mode,
    PacketType,
    datagrams_per_run,
)

_CHECK = struct.Struct("!I").pack  # the keyless trailer (wire.Seal)
_DATA = int(PacketType.DATA)
_ACK = int(Flags.ACK_REQUESTED)


@dataclass(frozen=True, slots=True)
class DataRun:
    """DATA datagrams of consecutive chunks as pieces for a gathered send.

    ``pieces`` are the datagrams back to back, all ``segment`` bytes long but the last,
    which may be shorter (the file's last chunk): either three pieces a datagram (header,
    body, trailer, header, ...) or one buffer holding them all (``datarun.build_run``).
    """

    pieces: list[bytes | bytearray | memoryview]
    count: int
    segment: int  # bytes of each datagram but the last
    last_bytes: int  # bytes of the last datagram
    first: int = 0  # chunk index of the first datagram
    repair: bool = False  # resent chunks (else the first pass)

    @property
    def total_bytes(self) -> int:
        """Bytes of all its datagrams."""
        return (self.count - 1) * self.segment + self.last_bytes

    def datagrams(self) -> list[bytes]:
        """The datagrams, each as one bytes object (copies)."""
        whole = b"".join(self.pieces)
        step = self.segment
        return [whole[start : start + step] for start in range(0, len(whole), step)]


class SenderData(SenderCore):
    """The sending part of a sender session: ``transmit``, the window and the ENDs.

    The hot path: ``_data_run`` builds a whole run in one loop (a packed header, a view of
    the file and a trailer per datagram), so that the work per datagram stays inline.
    """

    def transmit(self, now: float) -> list[bytes | DataRun]:
        """What to send now, in order: control datagrams, and DATA as runs of datagrams
        built as pieces for one gathered (UDP GSO) send each; at most ``config.batch`` DATA
        datagrams a call; call until empty."""
        out: list[bytes | DataRun] = list(self._pending)
        self._pending = []
        if self._state is SenderState.REPAIRING or (
            self._state is SenderState.SENDING and self._have_wait_until is None
        ):
            self._fill(out, now)
        for item in out:
            if isinstance(item, DataRun):
                self._bytes_sent += item.total_bytes
                self._datagrams_sent += item.count
            else:
                self._bytes_sent += len(item)
                self._datagrams_sent += 1
        return out

    def build_runs_in_one_buffer(self) -> None:
        """From now on, build keyless runs of whole chunks as one buffer each with numpy
        (``datarun``: about half the CPU a datagram). Imports numpy if it is not loaded yet,
        about 0.1 s: call it where that time is hidden."""
        from udpxfer.protocol.datarun import build_run

        self._build_run = build_run

    def _take_back(self, unsent: Sequence[DataRun]) -> None:
        """Runs returned by ``transmit`` that never left: not sent, as far as anyone is told."""
        for run in unsent:
            self._bytes_sent -= run.total_bytes
            self._datagrams_sent -= run.count
            if run.repair:
                self._chunks_resent -= run.count
            else:
                self._next_index = min(self._next_index, run.first)

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

    def _has_data_to_send(self) -> bool:
        if self._state is SenderState.SENDING:
            return self._have_wait_until is None
        return self._state is SenderState.REPAIRING and bool(self._repair)

    def _window_open(self, now: float) -> bool:
        if self._open_loop or self._tx - self._highest_acked - 1 < self._window:
            return True
        if self._probe_at is None:
            self._probe_at = now + self._rtt.rto_s
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
        repairing = self._state is SenderState.REPAIRING
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
                self._chunks_resent += count
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
        tx = self._tx
        congestion = self._congestion
        overhead = HEADER_BYTES + seal.trailer_bytes
        build = self._build_run
        if build is not None and keyless and count > 1 and (first + count) * chunk_size <= size:
            buffer, asking = build(
                view, chunk_size, first, tx, count, session=sid, flags=flags, ack_flag=_ACK,
                ack_every=ack_every, acked=acked, window=window, pass_no=pass_no,
                sent_ns=sent_ns, check=crc32,
            )  # fmt: skip
            for number in asking:
                self._unsent_stamp = sent_ns
                if congestion is not None:
                    congestion.on_sent(sent_ns, number, now)
            self._tx = tx + count
            segment = overhead + chunk_size
            return DataRun([buffer], count, segment, segment, first, repairing)
        pieces: list[bytes | bytearray | memoryview] = []
        append = pieces.append
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
        last = overhead + min(chunk_size, size - (first + count - 1) * chunk_size)
        segment = overhead + chunk_size if count > 1 else last
        return DataRun(pieces, count, segment, last, first, repairing)

    def _end_pass(self, now: float) -> None:
        """The pass is all out: END it, and wait for the receiver's answer."""
        repaired = self._state is SenderState.REPAIRING
        closing = self.mode is Mode.BLAST
        if not self._move(SenderState.CLOSING if closing else SenderState.WAITING):
            return
        if self._sent_all_at is None:
            self._sent_all_at = now
        if repaired:
            self._round += 1
            self._repair.reset()
            self._manifest_asked.reset()
        self._ends_left = self.config.end_copies if closing else 0
        self._send_end(now)

    def provide_digest(self, sha256: bytes, now: float) -> None:
        """The file's SHA-256, computed by the driver while it sends (the session began
        with zeros in its place): a META carries it at once and before every END after it.

        Raises:
            UsageError: not 32 bytes, or the digest was known already.
        """
        if not self._digest_later or len(sha256) != len(self.meta.sha256):
            raise UsageError("the digest follows only once, as 32 bytes")
        self._digest_later = False
        self._late_digest = True
        self.meta = dataclasses.replace(self.meta, sha256=sha256)
        if not self.finished and self._state is not SenderState.HANDSHAKE:
            self._queue_control(self._meta(2, now))  # in the handshake, META goes anyway

    def _send_end(self, now: float) -> None:
        announced = self._late_digest and self._verdict is None
        if announced:
            self._queue_control(self._meta(2, now))  # a receiver holding every chunk waits
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
                self._rtt.back_off()
                if not announced:
                    self._queue_control(self._meta(1, now))
            self._end_at = now + self._rtt.rto_s
