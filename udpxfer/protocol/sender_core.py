"""A sender session's fields, the one method that moves its state, and its stats view.

``SenderSession`` (sender.py) is this core plus three parts that share its fields: building
DATA runs (sender_data.py), the handshake (sender_handshake.py) and the receiver's feedback
(sender_feedback.py). Every field is set up here, and only ``_move`` changes the state.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from udpxfer.errors import UsageError
from udpxfer.protocol.codec import encode
from udpxfer.protocol.congestion import BbrController
from udpxfer.protocol.events import Event, Outcome, TransferEnded
from udpxfer.protocol.framing import CRC, Seal
from udpxfer.protocol.pacing import Pacer, RttEstimator
from udpxfer.protocol.ranges import RangeQueue
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.sender_state import TRANSITIONS, SenderState
from udpxfer.protocol.wire import (
    HEADER_BYTES,
    MANIFEST_HASHES,
    MAX_NAME_BYTES,
    MAX_PN,
    NONCE_BYTES,
    SHA256_BYTES,
    TOKEN_BYTES,
    Abort,
    AbortCode,
    Manifest,
    Meta,
    Mode,
    Verdict,
    block_chunks_for,
    chunk_count_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from udpxfer.protocol.sender_keying import SenderKeying


@dataclass(frozen=True, slots=True)
class SenderStats:
    """A sender session's counters and timings at one moment: what reports and progress read.

    Times are on the session's clock (the ``now`` it is handed), counts are of the whole run.
    """

    outcome: TransferEnded | None  # how it ended, None while running
    verdict: Verdict | None  # the receiver's DONE said this, None before one came
    started_at: float
    finished_at: float | None
    sent_all_at: float | None  # when the first pass was all sent
    first_pass_sent: int  # the first pass has covered chunks [0, first_pass_sent)
    chunks_resent: int
    repair_rounds: int
    acknowledged: int  # chunks the receiver last said it holds
    resumed: int  # chunks the receiver already held from an earlier run (HAVE)
    datagrams_sent: int  # every datagram (META, DATA, END...)
    bytes_sent: int  # ... headers included
    rejected: int  # datagrams from the receiver's side that were junk
    unauthenticated: int  # datagrams that failed authentication (keyed mode)
    window: int  # datagrams the sender may have in flight (congestion and receiver's window)
    srtt_s: float | None  # the smoothed round trip (RFC 6298), None before a sample
    reported_lost: int  # transmissions the receiver's last STATUS says did not arrive
    reported_seen: int  # transmissions up to the highest it saw

    @property
    def duration_s(self) -> float:
        """From the start to the end (the verdict, or giving up); 0 while running."""
        end = self.finished_at if self.finished_at is not None else self.started_at
        return max(0.0, end - self.started_at)

    @property
    def send_duration_s(self) -> float:
        """From the start until the whole first pass was sent (or the end, if it never was)."""
        end = self.finished_at if self.finished_at is not None else self.started_at
        sent_at = self.sent_all_at if self.sent_all_at is not None else end
        return max(0.0, sent_at - self.started_at)


class SenderCore:
    """The state of one file being sent to one receiver (see ``SenderSession``)."""

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
        manifest_later: bool = False,
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
        reliable = self.mode is Mode.RELIABLE
        has_manifest = reliable and (bool(manifest) or manifest_later)
        block_chunks = block_chunks_for(self.chunk_count, self.chunk_size) if has_manifest else 0
        self._block_count = -(-self.chunk_count // block_chunks) if block_chunks else 0
        if manifest and reliable and len(manifest) != self._block_count:
            raise UsageError("the manifest must hold one SHA-256 per block")
        self._manifest = manifest if reliable else ()
        # Digest and manifest may follow (large files: the driver hashes while it sends).
        # The digest goes out in a META as soon as it is known and before every END after
        # that; the manifest only when a receiver asks for it (its whole-file hash failed).
        self._digest_later = sha256 == bytes(SHA256_BYTES)
        self._late_digest = False  # provided after the start: sent again with every END
        self.manifest_wanted = False  # a receiver asked for block hashes not computed yet
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
            block_chunks=block_chunks,
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
        self._refused_by_network = False  # the driver saw ICMP port unreachable
        self._resumed = 0  # chunks the receiver already held (HAVE)
        self._have_expected = 0  # chunks a resuming receiver's HELLO said it holds
        self._have_wait_until: float | None = None  # until then, wait for its HAVE
        self._first = RangeQueue(self.chunk_count)
        if self.chunk_count:
            self._first.add(0, self.chunk_count - 1)
        self._handshake = self.mode is Mode.RELIABLE or keying is not None
        self._state = SenderState.HANDSHAKE if self._handshake else SenderState.SENDING
        self._started_at = now
        self._finished_at: float | None = None
        self._sent_all_at: float | None = None  # when the first pass was all sent
        self.outcome: TransferEnded | None = None
        self._verdict: Verdict | None = None

        self._next_index = 0  # the first pass has covered chunks [0, _next_index)
        self._tx = 0  # next transmission number
        self._pn = 0  # control packet number
        self._round = 0  # round of the last END sent
        self._repair = RangeQueue(self.chunk_count)
        self._manifest_asked = RangeQueue(self._block_count)
        self._pending: list[bytes] = []  # control datagrams to send first
        self._build_run: Callable[..., tuple[bytearray, list[int]]] | None = None
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
        self._rtt = RttEstimator(min_rto_s=self.config.min_rto_s, max_rto_s=self.config.max_rto_s)

        self._datagrams_sent = 0
        self._bytes_sent = 0
        self._chunks_resent = 0
        self._repair_rounds = 0
        self._rejected = 0
        self._unauthenticated = 0  # datagrams that failed authentication (keyed mode)
        self._acked_held = 0  # chunks the receiver last said it holds

        for copy in range(1 if self._handshake else self.config.meta_copies):
            self._queue_control(self._meta(copy, now))
        if self._meta_at is not None:
            self._meta_at = now + self._handshake_interval()

    # -- state ---------------------------------------------------------------------------

    def _move(self, state: SenderState) -> bool:
        """Change the state to ``state`` if ``TRANSITIONS`` allows it; False (and no change)
        if not. The only place the state changes: a datagram that would make an illegal move
        is dropped by its handler, never raised out of the session."""
        if state not in TRANSITIONS[self._state]:
            return False
        self._state = state
        return True

    def _finish(self, now: float, outcome: Outcome, reason: str, *, fail: bool = False) -> None:
        """End the session (DONE, or FAILED with ``fail``) and say how, as an event."""
        if not self._move(SenderState.FAILED if fail else SenderState.DONE):
            return
        self._finished_at = now
        self._end_at = self._verdict_deadline = self._probe_at = None
        self.outcome = TransferEnded(outcome, reason, self._verdict)
        self._events.append(self.outcome)

    @property
    def state(self) -> SenderState:
        """Where the session is (changed only by ``_move``)."""
        return self._state

    @property
    def finished(self) -> bool:
        """True once the session is DONE or FAILED."""
        return self._state is SenderState.DONE or self._state is SenderState.FAILED

    @property
    def accepted(self) -> bool:
        """True once the receiver accepted the transfer (its HELLO arrived)."""
        return self._accepted

    def stats(self) -> SenderStats:
        """The counters and timings as they are now, in one frozen view."""
        seen = self._reported_highest + 1
        return SenderStats(
            outcome=self.outcome,
            verdict=self._verdict,
            started_at=self._started_at,
            finished_at=self._finished_at,
            sent_all_at=self._sent_all_at,
            first_pass_sent=self._next_index,
            chunks_resent=self._chunks_resent,
            repair_rounds=self._repair_rounds,
            acknowledged=min(self._acked_held, self.chunk_count),
            resumed=self._resumed,
            datagrams_sent=self._datagrams_sent,
            bytes_sent=self._bytes_sent,
            rejected=self._rejected,
            unauthenticated=self._unauthenticated,
            window=self._window,
            srtt_s=self._rtt.srtt_s,
            reported_lost=max(0, seen - self._reported_received),
            reported_seen=seen,
        )

    # -- control datagrams ---------------------------------------------------------------

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

    def _send_manifest(self, first: int, last: int, now: float) -> None:
        """MANIFEST datagrams for blocks ``first..last`` (each block hash once per request)."""
        if not self._manifest:
            return  # computed on request (``provide_manifest``)
        for start in range(first, last + 1, MANIFEST_HASHES):
            hashes = self._manifest[start : min(start + MANIFEST_HASHES, last + 1)]
            manifest = Manifest(self.session_id, start, hashes, int(now * 1e9), self._next_pn())
            self._queue_control(encode(manifest, self._seal))

    def _next_pn(self) -> int:
        self._pn = min(self._pn + 1, MAX_PN)
        return self._pn

    def _new_congestion(self, now: float) -> BbrController:
        return BbrController(now, datagram_bytes=self.chunk_size + HEADER_BYTES)

    def _handshake_interval(self) -> float:
        return min(self._rtt.rto_s, 1.0)
