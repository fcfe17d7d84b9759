"""Seeded mutation fuzzing of udpxfer datagrams, shared by tests/test_fuzz.py and fuzz/run.py.

A corpus is captured from real in-memory transfers (a ``SenderSession`` and a
``ReceiverEndpoint`` driven against each other on a fake clock, every datagram recorded both
ways); ``Mutator`` turns it into hostile inputs (bit flips, truncations, splices, check-valid
forgeries with fields at their bounds, hostile names and ranges); ``Harness`` feeds each input
to ``decode_untrusted``, to a ``ReceiverEndpoint`` and to a ``SenderSession`` and records every
exception that escapes where none may.

The mutations know the wire layout from docs/PROTOCOL.md (struct formats written out here, not
imported from udpxfer.protocol.wire), so a forgery is built independently of the encoder it attacks.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import random
import struct
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from helpers import block_hashes, verify_stored

from udpxfer.errors import MalformedPacket
from udpxfer.paths import safe_name
from udpxfer.protocol.codec import decode_untrusted, encode
from udpxfer.protocol.endpoint import ReceiverEndpoint
from udpxfer.protocol.endpoint_handshake import Keying
from udpxfer.protocol.events import ChunkReceived, TransferStarted, VerifyRequested
from udpxfer.protocol.keyed import AeadSeal
from udpxfer.protocol.keys import Direction, PacketProtection
from udpxfer.protocol.receiver import ReceiverConfig, ReceiverSession
from udpxfer.protocol.receiver_core import Peer
from udpxfer.protocol.receiver_state import ReceiverState
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.sender_keying import SenderKeying
from udpxfer.protocol.wire import (
    Abort,
    AbortCode,
    Have,
    Manifest,
    Mode,
    Nack,
    RangeKind,
)

SESSION_ID = 0x1234_5678_9ABC_DEF0
# Documentation addresses (RFC 5737), used only as opaque keys of the sans-IO endpoint.
SENDER_PEER: Peer = ("192.0.2.1", 4000)
OTHER_HOST = "198.51.100.7"
OUT_DIR = "/srv/udpxfer-out"  # where a driver would write; names must stay inside it
START_S = 1.0  # a real clock is never at zero (a zero echo means "none" on the wire)
LINK_DELAY_S = 0.001
PSK = bytes(range(32))  # the pre-shared key of keyed corpus transfers and harnesses
SENDER_NONCE = bytes(range(16, 32))
RECEIVER_NONCE = bytes(range(32, 48))

# The layout of docs/PROTOCOL.md, written out independently of udpxfer.protocol.wire.
HEADER = struct.Struct("!4sBBBBQQQQ")
HEADER_BYTES = HEADER.size
CRC = struct.Struct("!I")
# (offset, size) of flags, pass, session, seq, pn and sent_ns: forged to any value, the
# header still parses
HEADER_FIELDS = [(6, 1), (7, 1), (8, 8), (16, 8), (24, 8), (32, 8)]
BODY_FORMATS = {
    1: "QIQI32sQB16s16sH",  # META, then the name
    3: "QQ",  # END
    4: "QqQIQI",  # STATUS
    5: "QBH",  # NACK, then ranges
    6: "QBQ32s",  # DONE
    7: "BQH",  # ABORT, then the reason
    8: "QBIQ16s16s",  # HELLO
    10: "QBH",  # HAVE, then ranges
}
META_NAME_AT = struct.calcsize("!" + BODY_FORMATS[1])
KEYED_FLAG = 0x04
# Values a forged field takes (cut to the field's width): the bounds a decoder must survive.
EXTREMES = (
    0,
    1,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    (1 << 62) - 1,
    1 << 62,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
)
# A one-byte field is a code, a kind, a verdict, flags or a pass: every small value (each
# defined one and the first undefined ones) besides the bounds.
BYTE_VALUES = (*range(17), 0x7F, 0x80, 0xFF)
HOSTILE_NAMES = (
    "../../../etc/passwd",
    "..",
    ".",
    "",
    "/absolute/path",
    "a\0b",
    "\0",
    "dir\\..\\..\\evil",
    "file.bin.partial",
    "\u202eexe.txt",
    "../" * 341,  # 1023 bytes: just inside the decoder's name limit
    "x" * 1024,
    "x" * 4096,  # far past the limit: the decoder must refuse it
    "é" * 600,  # 1200 bytes of two-byte characters
)


def recrc(datagram: bytes | bytearray) -> bytes:
    """``datagram`` with its last 4 bytes replaced by the CRC-32 of everything before them."""
    prefix = bytes(datagram[:-4])
    return prefix + CRC.pack(zlib.crc32(prefix))


def frame(
    ptype: int,
    session: int,
    body: bytes,
    *,
    flags: int = 0,
    pass_no: int = 0,
    seq: int = 0,
    pn: int = 0,
    sent_ns: int = 0,
    version: int = 2,
) -> bytes:
    """A keyless datagram built by hand from the documented layout, with a correct check."""
    prefix = HEADER.pack(b"UDPX", version, ptype, flags, pass_no, session, seq, pn, sent_ns)
    prefix += body
    return prefix + CRC.pack(zlib.crc32(prefix))


def _int_fields(fmt: str) -> list[tuple[int, int]]:
    """(offset, size) of the integer fields of a struct format (no padding with ``!``)."""
    out = []
    for i, code in enumerate(fmt):
        if code in "BHIQq":
            out.append((struct.calcsize("!" + fmt[:i]), struct.calcsize("!" + code)))
    return out


BODY_FIELDS = {ptype: _int_fields(fmt) for ptype, fmt in BODY_FORMATS.items()}


# -- the corpus: every datagram of real transfers ---------------------------------------------


class ChunkStore:
    """A chunk sink that keeps payloads by (peer, session, offset) and checks the bounds.

    Every offset a session hands out must lie inside that session's file: a chunk outside it
    would be a write outside the file (or the output directory) in the real driver.
    """

    def __init__(self) -> None:
        self.chunks: dict[tuple[Peer, int, int], bytes] = {}
        self.stored_bytes = 0

    def __call__(self, session: ReceiverSession, offset: int, payload: bytes | memoryview) -> None:
        meta = session.meta
        assert meta is not None, "a chunk stored before the transfer's metadata"
        assert offset >= 0, f"chunk at {offset}"
        assert offset + len(payload) <= meta.size, (
            f"chunk at {offset}+{len(payload)} outside a file of {meta.size} bytes"
        )
        assert offset % meta.chunk_size == 0, f"chunk at {offset} is not on a chunk boundary"
        self.chunks[(session.peer, session.session_id, offset)] = bytes(payload)
        self.stored_bytes += len(payload)

    def file(self, session: ReceiverSession) -> bytes:
        """The file as stored for ``session`` (holes as zeros, as in a sparse file)."""
        meta = session.meta
        assert meta is not None
        out = bytearray(meta.size)
        for offset in range(0, meta.size, meta.chunk_size):
            chunk = self.chunks.get((session.peer, session.session_id, offset))
            if chunk is not None:
                out[offset : offset + len(chunk)] = chunk
        return bytes(out)


def pump_events(endpoint: ReceiverEndpoint, store: ChunkStore, now: float) -> int:
    """Do what a driver does with the endpoint's events; returns how many there were.

    Stores new chunks, hashes what was stored when a session asks, and checks that every
    transfer's name becomes a plain file inside the output directory.
    """
    count = 0
    while (item := endpoint.next_event()) is not None:
        count += 1
        session, event = item
        if isinstance(event, ChunkReceived):
            store(session, event.offset, event.payload)
        elif isinstance(event, TransferStarted):
            path = os.path.normpath(os.path.join(OUT_DIR, safe_name(event.meta.name)))
            assert os.path.dirname(path) == OUT_DIR, f"{event.meta.name!r} escapes: {path}"
            assert "\0" not in path
        elif isinstance(event, VerifyRequested):
            verify(session, store, now)
    return count


def verify(session: ReceiverSession, store: ChunkStore, now: float) -> None:
    """What the driver does on ``VerifyRequested`` (``helpers.verify_stored``), over the
    file as this store holds it."""
    verify_stored(session, bytearray(store.file(session)), now)


@dataclass
class Recorded:
    """Datagrams seen on the wire, both ways."""

    forward: list[bytes] = field(default_factory=list)  # sender -> receiver
    reverse: list[bytes] = field(default_factory=list)  # receiver -> sender


def transfer(
    endpoint: ReceiverEndpoint,
    store: ChunkStore,
    data: bytes,
    *,
    now: float = START_S,
    peer: Peer = SENDER_PEER,
    session_id: int = SESSION_ID,
    config: SenderConfig | None = None,
    loss: float = 0.0,
    seed: int = 0,
    record: Recorded | None = None,
    sender: SenderSession | None = None,
    keyed: bool = False,
    manifest: bool = True,
    late_digest: bool = False,
    max_steps: int = 200_000,
) -> tuple[SenderSession, ReceiverSession | None, float]:
    """Send ``data`` from ``peer`` through ``endpoint`` on a fake clock; both ways lossy.

    ``sender`` continues a session already under way instead of starting one; ``keyed``
    starts one with ``PSK`` (the endpoint needs the same key), ``manifest`` with block hashes.
    ``late_digest``: the sender starts without digest and manifest (a large file's way); the
    digest comes after its first batch, the manifest when it is asked for. Returns the
    sender, the receiver's session (None if it never opened one) and the time at the end.
    What the endpoint sends to other peers is dropped.
    """
    rng = random.Random(seed)
    if sender is None:
        sender = new_sender(
            data, session_id, now, config, keyed=keyed, manifest=manifest and not late_digest,
            late_digest=late_digest,
        )  # fmt: skip
    key = (peer, sender.session_id)
    chunk_size = sender.chunk_size
    in_flight: list[tuple[float, int, bool, bytes]] = []
    order = itertools.count()
    session: ReceiverSession | None = None
    for _ in range(max_steps):
        outgoing = sender.datagrams_to_send(now)
        if late_digest and outgoing and sender.stats().first_pass_sent:
            sender.provide_digest(hashlib.sha256(data).digest(), now)
            late_digest = False
        if sender.manifest_wanted:
            sender.provide_manifest(block_hashes(data, chunk_size), now)
        for datagram in outgoing:
            if record is not None:
                record.forward.append(datagram)
            if rng.random() >= loss:
                heapq.heappush(in_flight, (now + LINK_DELAY_S, next(order), True, datagram))
        pump_events(endpoint, store, now)
        for datagram, to in endpoint.datagrams_to_send(now):
            if to != peer:
                continue
            if record is not None:
                record.reverse.append(datagram)
            if rng.random() >= loss:
                heapq.heappush(in_flight, (now + LINK_DELAY_S, next(order), False, datagram))
        session = endpoint.sessions.get(key, session)
        settled = session is None or session.state in (
            ReceiverState.FINISHED,
            ReceiverState.CLOSED,
            ReceiverState.DROPPED,
        )
        if sender.finished and settled and not in_flight:
            return sender, session, now
        if outgoing:
            continue  # an unpaced sender is infinitely fast on the fake clock
        timers = [t for t in (sender.get_timer(), endpoint.get_timer()) if t is not None]
        if in_flight:
            timers.append(in_flight[0][0])
        if not timers:
            return sender, session, now
        now = max(now, min(timers))
        while in_flight and in_flight[0][0] <= now:
            _, _, forward, datagram = heapq.heappop(in_flight)
            if forward:
                endpoint.receive_datagram(datagram, peer, now)
            else:
                sender.receive_datagram(datagram, now)
        timer = sender.get_timer()
        if timer is not None and timer <= now:
            sender.handle_timer(now)
        timer = endpoint.get_timer()
        if timer is not None and timer <= now:
            endpoint.handle_timer(now)
    raise AssertionError("in-memory transfer did not settle")


def new_sender(
    data: bytes,
    session_id: int,
    now: float,
    config: SenderConfig | None = None,
    *,
    keyed: bool = False,
    manifest: bool = False,
    late_digest: bool = False,
) -> SenderSession:
    """A sender session for ``data`` (named ``corpus.bin``), keyed with ``PSK`` or not, with
    the block hashes of a manifest or not, or with its digest and manifest to follow."""
    chunk_size = (config or SenderConfig()).chunk_size
    return SenderSession(
        data,
        name="corpus.bin",
        sha256=bytes(32) if late_digest else hashlib.sha256(data).digest(),
        manifest_later=late_digest,
        session_id=session_id,
        now=now,
        config=config,
        keying=SenderKeying(PSK, session_id, SENDER_NONCE) if keyed else None,
        manifest=block_hashes(data, chunk_size) if manifest else (),
    )


def new_endpoint(config: ReceiverConfig | None = None, *, keyed: bool = False) -> ReceiverEndpoint:
    """A receiver endpoint, keyed with ``PSK`` or not (``pump_events`` stores its chunks)."""
    return ReceiverEndpoint(
        config,
        token_secret=bytes(range(32)),
        keying=Keying(PSK) if keyed else None,
        nonces=lambda: RECEIVER_NONCE,
    )


def real_transfer_problem(
    endpoint: ReceiverEndpoint, store: ChunkStore, now: float, *, keyed: bool = False
) -> str:
    """Send a fresh file from the sender's host (a new port) through ``endpoint``.

    Returns "" when it arrived verified and byte-exact, else what went wrong.
    """
    data = corpus_file(30_000, seed=99)
    sender, session, _ = transfer(
        endpoint,
        store,
        data,
        now=now,
        peer=(SENDER_PEER[0], 4999),
        session_id=0x0BAD_CAFE_0000_0001,
        config=SenderConfig(chunk_size=1000),
        keyed=keyed,
    )
    if sender.outcome is None or sender.outcome.outcome != "complete":
        return f"the sender ended with {sender.outcome}"
    if session is None:
        return "the receiver never opened the transfer"
    if store.file(session) != data:
        return "the stored file differs from the one sent"
    return ""


def corpus_file(size: int = 40_000, seed: int = 7) -> bytes:
    """The file the corpus transfers carry (random, so chunks differ)."""
    return random.Random(seed).randbytes(size)


def capture_corpus(*, keyed: bool = False) -> list[bytes]:
    """Every datagram of a lossy reliable transfer and a lossy blast, both ways (keyed with
    ``PSK`` or not), plus one keyless HAVE, MANIFEST, block NACK and ABORT (which these
    transfers do not produce)."""
    data = corpus_file()
    recorded = Recorded()
    for mode, seed, late in (
        (Mode.RELIABLE, 1, False),
        (Mode.BLAST, 2, False),
        (Mode.RELIABLE, 3, True),
    ):
        config = SenderConfig(chunk_size=1000, mode=mode)
        store = ChunkStore()
        endpoint = new_endpoint(keyed=keyed)
        transfer(
            endpoint, store, data, config=config, loss=0.1, seed=seed, record=recorded,
            keyed=keyed, late_digest=late,
        )  # fmt: skip
    extra = [
        encode(Have(SESSION_ID, ((0, 3), (7, 9)), 5, 6, 7)),
        encode(Manifest(SESSION_ID, 0, (hashlib.sha256(data).digest(),) * 3, 8, 9)),
        encode(Nack(SESSION_ID, 0, 11, ((0, 0),), 12, RangeKind.BLOCKS, 13)),
        encode(Abort(SESSION_ID, AbortCode.CANCELLED, "stopped", 14, 3, 15)),
    ]
    return recorded.forward + recorded.reverse + extra


# -- mutations --------------------------------------------------------------------------------


class Mutator:
    """Hostile datagrams drawn from ``corpus`` by a seeded ``random.Random``."""

    def __init__(self, corpus: list[bytes], seed: int) -> None:
        if not corpus:
            raise ValueError("an empty corpus")
        self.corpus = corpus
        self.rng = random.Random(seed)
        self._kinds: list[tuple[str, Callable[[bytes], bytes]]] = [
            ("bitflip", self.bitflip),
            ("bitflip-valid", lambda d: self.valid(self.bitflip(d))),
            ("truncate", self.truncate),
            ("truncate-valid", lambda d: self.valid(self.truncate(d))),
            ("splice", self.splice),
            ("splice-valid", lambda d: self.valid(self.splice(d))),
            ("field", self.forge_field),
            ("field", self.forge_field),
            ("field", self.forge_field),
            ("name", self.forge_name),
            ("ranges", self.forge_ranges),
            ("header", self.forge_header),
            ("garbage", self.garbage),
            ("replay", lambda d: d),
        ]
        self.kinds = sorted({name for name, _ in self._kinds})
        self._metas = [d for d in corpus if len(d) > HEADER_BYTES + META_NAME_AT and d[5] == 1]

    def next(self) -> tuple[str, bytes]:
        """One mutated datagram and the name of the mutation that made it."""
        name, mutate = self.rng.choice(self._kinds)
        return name, mutate(self.rng.choice(self.corpus))

    # Each mutation takes one corpus datagram and returns a new one.

    def valid(self, datagram: bytes) -> bytes:
        """Make the check right again (what a forger with no key does)."""
        return recrc(datagram) if len(datagram) >= 4 else datagram

    def bitflip(self, datagram: bytes) -> bytes:
        out = bytearray(datagram)
        for _ in range(self.rng.randint(1, 4)):
            bit = self.rng.randrange(len(out) * 8)
            out[bit >> 3] ^= 1 << (bit & 7)
        return bytes(out)

    def truncate(self, datagram: bytes) -> bytes:
        return datagram[: self.rng.randrange(len(datagram))]

    def splice(self, datagram: bytes) -> bytes:
        other = self.rng.choice(self.corpus)
        return (
            datagram[: self.rng.randrange(len(datagram) + 1)]
            + other[self.rng.randrange(len(other) + 1) :]
        )

    def _extreme(self, size: int) -> int:
        if size == 1:
            return self.rng.choice(BYTE_VALUES)
        return self.rng.choice(EXTREMES) & ((1 << (8 * size)) - 1)

    def forge_field(self, datagram: bytes) -> bytes:
        """Set one to three header or body integer fields to a bound, with a valid check."""
        out = bytearray(datagram)
        fields = list(HEADER_FIELDS)
        if len(out) > 5:
            fields += [(HEADER_BYTES + at, size) for at, size in BODY_FIELDS.get(out[5], [])]
        for _ in range(self.rng.randint(1, 3)):
            at, size = self.rng.choice(fields)
            if at + size <= len(out) - 4:
                out[at : at + size] = self._extreme(size).to_bytes(size, "big")
        return self.valid(out)

    def forge_name(self, datagram: bytes) -> bytes:
        """A META carrying a hostile name (``../``, NUL, 4 KB...), with a valid check."""
        meta = self.rng.choice(self._metas) if self._metas else datagram
        name = self.rng.choice(HOSTILE_NAMES).encode("utf-8")
        fixed = meta[: HEADER_BYTES + META_NAME_AT - 2]
        length = len(name) if self.rng.random() < 0.9 else self._extreme(2)
        return recrc(fixed + struct.pack("!H", length & 0xFFFF) + name + bytes(4))

    def forge_ranges(self, datagram: bytes) -> bytes:
        """A NACK or HAVE with ranges at the bounds: everything, reversed, too many."""
        rng = self.rng
        ptype = rng.choice((5, 10))
        base = bytearray(datagram if len(datagram) >= HEADER_BYTES else bytes(HEADER_BYTES))
        base[5] = ptype
        base[6] = base[7] = 0
        count = rng.choice((0, 1, 2, 86, 87, 88, 1000))
        distinct = []
        for _ in range(min(count, 4)):
            choice = rng.random()
            if choice < 0.4:
                distinct.append((0, (1 << 64) - 1))
            elif choice < 0.6:
                distinct.append((self._extreme(8), self._extreme(8)))
            else:
                first = rng.randrange(64)
                distinct.append((first, first + rng.randrange(64)))
        ranges = (distinct * count)[:count]
        kind = rng.choice((0, 0, 0, 1, 2))
        body = struct.pack("!QBH", self._extreme(8), kind, count & 0xFFFF)
        body += b"".join(struct.pack("!QQ", first, last) for first, last in ranges)
        return recrc(bytes(base[:HEADER_BYTES]) + body + bytes(4))

    def forge_header(self, datagram: bytes) -> bytes:
        """A well-framed datagram with random type, flags and pass and a random body."""
        rng = self.rng
        body = rng.randbytes(rng.choice((0, 1, 8, 16, 40, 100, 1000)))
        if rng.random() < 0.5 and len(datagram) > HEADER_BYTES + 4:
            body = datagram[HEADER_BYTES:-4]
        return frame(
            rng.randrange(12),
            SESSION_ID if rng.random() < 0.8 else rng.getrandbits(64),
            body,
            flags=rng.choice((0, 1, 2, 3, 4, 8, 12, 16, 0x80, rng.randrange(256))),
            pass_no=rng.choice((0, 0, 1, 255)),
            seq=self._extreme(8) if rng.random() < 0.5 else rng.randrange(64),
            pn=self._extreme(8),
            sent_ns=self._extreme(8),
            version=2 if rng.random() < 0.95 else rng.randrange(256),
        )

    def garbage(self, datagram: bytes) -> bytes:
        rng = self.rng
        if rng.random() < 0.5:
            return rng.randbytes(rng.randrange(200))
        return b"UDPX\x02" + rng.randbytes(rng.randrange(HEADER_BYTES + 200))


# -- the harness ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Escape:
    """An exception that got out where it must not."""

    where: str
    kind: str
    datagram: bytes
    error: str

    def __str__(self) -> str:
        return f"{self.where} raised on a {self.kind} input {self.datagram.hex()}:\n{self.error}"


class Harness:
    """Feeds datagrams to the decoder, a receiver endpoint and a sender session."""

    def __init__(self, now: float = START_S, *, keyed: bool = False) -> None:
        self.now = now
        self.keyed = keyed
        self.store = ChunkStore()
        self.endpoint = new_endpoint(keyed=keyed)
        # An AEAD seal with some key: keyed inputs must also raise only MalformedPacket.
        protection = PacketProtection.handshake(bytes(32), SESSION_ID, bytes(16))
        self.keyed_seal = AeadSeal(protection, Direction.TO_SENDER, encrypt=True)
        self.sender = self._new_sender()
        self.senders = 1
        self.escapes: list[Escape] = []
        self.inputs = 0
        self.decoded = 0
        self.max_sender_batch = 0
        self._ports = itertools.cycle(range(5000, 5064))
        self._recent: list[bytes] = []

    def _new_sender(self) -> SenderSession:
        # No manifest: the sender answers each BLOCKS range of each NACK with MANIFEST
        # datagrams (test_a_block_nack_for_everything_costs_at_most_the_manifest).
        config = SenderConfig(chunk_size=1000)
        return new_sender(corpus_file(), SESSION_ID, self.now, config, keyed=self.keyed)

    def _guard(self, where: str, kind: str, datagram: bytes, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:
            self.escapes.append(Escape(where, kind, datagram, traceback.format_exc()))

    def feed(self, kind: str, datagram: bytes) -> None:
        """One input through all three; the clock moves on by half a millisecond."""
        self.inputs += 1
        self.now += 0.0005
        try:
            decode_untrusted(datagram)
            self.decoded += 1
        except MalformedPacket:
            pass
        except Exception:
            self.escapes.append(Escape("decode_untrusted", kind, datagram, traceback.format_exc()))
        if len(datagram) > 6 and datagram[6] & KEYED_FLAG:
            try:
                decode_untrusted(datagram, self.keyed_seal)
            except MalformedPacket:
                pass
            except Exception:
                self.escapes.append(
                    Escape("decode_untrusted(keyed)", kind, datagram, traceback.format_exc())
                )
        # Most inputs come from the real sender's address (so they reach its sessions), the
        # rest from another host on changing ports.
        peer = SENDER_PEER if self.inputs % 4 else (OTHER_HOST, next(self._ports))
        self._guard("ReceiverEndpoint", kind, datagram, lambda: self._endpoint(datagram, peer))
        self._guard("SenderSession", kind, datagram, lambda: self._sender(datagram))

    def _endpoint(self, datagram: bytes, peer: Peer) -> None:
        endpoint, now = self.endpoint, self.now
        # The driver's way (a receive buffer, a batch) and the row path, in turn; and every
        # 16 inputs the last ones from the sender's address again as one GRO-like buffer.
        if self.inputs % 2:
            endpoint.receive_datagram(datagram, peer, now)
        else:
            self._buffer([datagram], peer)
        if peer == SENDER_PEER:
            self._recent.append(datagram)
        if len(self._recent) == 16:
            recent, self._recent = self._recent, []
            self._buffer(recent, SENDER_PEER)
        pump_events(endpoint, self.store, now)
        if self.inputs % 8 == 0:  # a driver flushes once per batch of datagrams read
            endpoint.datagrams_to_send(now)
        if self.inputs % 64 == 0:
            timer = endpoint.get_timer()
            if timer is not None and timer <= now:
                endpoint.handle_timer(now)
                pump_events(endpoint, self.store, now)

    def _buffer(self, datagrams: list[bytes], peer: Peer) -> None:
        """Datagrams cut to the first one's size (the last may be shorter) as one receive."""
        size = len(datagrams[0])
        # Built in place (zero padding), so that the harness's own copies stay out of the
        # memory the bounded-memory test measures.
        buffer = bytearray(size * (len(datagrams) - 1) + min(size, len(datagrams[-1])))
        for row, datagram in enumerate(datagrams):
            piece = datagram[:size]
            buffer[row * size : row * size + len(piece)] = piece
        segment = size if len(datagrams) > 1 else 0
        for run in self.endpoint.receive_buffer(buffer, len(buffer), segment, peer, self.now):
            batch = run.batch
            for position in run.positions.tolist():
                start = batch.payload_start(position)
                payload = (
                    run.plain[position]
                    if run.plain is not None
                    else buffer[start : start + int(batch.payload_bytes[position])]
                )
                offset = int(batch.index[position]) * run.session.chunk_size
                self.store(run.session, offset, payload)

    def _sender(self, datagram: bytes) -> None:
        if self.sender.finished:
            self.sender = self._new_sender()
            self.senders += 1
        sender, now = self.sender, self.now
        sender.receive_datagram(datagram, now)
        out = sender.datagrams_to_send(now)
        self.max_sender_batch = max(self.max_sender_batch, len(out))
        if self.inputs % 64 == 0:
            timer = sender.get_timer()
            if timer is not None and timer <= now:
                sender.handle_timer(now)

    def real_transfer_problem(self) -> str:
        """Why a real transfer through the fuzzed endpoint fails ("" when it arrives intact)."""
        return real_transfer_problem(self.endpoint, self.store, self.now, keyed=self.keyed)

    def run(self, mutator: Mutator, count: int) -> None:
        """Feed ``count`` inputs from ``mutator``."""
        for _ in range(count):
            kind, datagram = mutator.next()
            self.feed(kind, datagram)
