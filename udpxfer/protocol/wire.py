"""The udpxfer wire format, version 2: one header Struct, a dataclass per packet, encode and decode.

Every datagram is a 40-byte header (network byte order), a body, and a trailer; docs/PROTOCOL.md
has the same layout as a table.

    offset size field
    0      4    magic        b"UDPX"
    4      1    version      2
    5      1    type         PacketType
    6      1    flags        Flags: RESENT, ACK_REQUESTED (DATA); KEYED, ENCRYPTED (trailer kind)
    7      1    pass_no      DATA: 0 for a first transmission, k for a resend in repair round k
    8      8    session      random session id chosen by the sender
    16     8    seq          DATA: chunk index; END/NACK: round; META: copy; MANIFEST: first block
    24     8    pn           packet number: DATA the sender's data transmission counter (0, 1, ...);
                             any other type the sending side's control counter; < 2^62
    32     8    sent_ns      the sending side's monotonic clock, nanoseconds; < 2^63
    40     ...  body         per packet type, below
    end-4  4    check        keyless: CRC-32 (zlib) of every byte before it (one contiguous span)
    end-16 16   tag          KEYED: AEAD tag (udpxfer.protocol.keys), the header as associated data

The header is fixed-size and the check covers one contiguous span so that a receive buffer of
equal-sized segments can be decoded by a numpy structured view in one step.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from udpxfer.errors import MalformedPacket
from udpxfer.protocol.checksum import crc32

MAGIC = b"UDPX"
VERSION = 2

HEADER = struct.Struct("!4sBBBBQQQQ")
HEADER_BYTES = HEADER.size  # 40
CRC_BYTES = 4
TAG_BYTES = 16  # an AEAD tag (udpxfer.protocol.keys.TAG_BYTES)
_CHECK = struct.Struct("!I")

MAX_PN = (1 << 62) - 1  # packet numbers above this are refused: they stay int64-safe
MAX_STAMP_NS = (1 << 63) - 1
MAX_DATAGRAM_BYTES = 65507  # largest UDP payload over IPv4
MAX_CHUNK_BYTES = MAX_DATAGRAM_BYTES - HEADER_BYTES - TAG_BYTES
# 1500-byte Ethernet MTU - 40 (IPv6 header) - 8 (UDP header) = 1452 for the datagram:
# keyless 1400 + 40 + 4 = 1444; keyed 1392 + 40 + 16 = 1448.
DEFAULT_CHUNK_BYTES = 1400
DEFAULT_KEYED_CHUNK_BYTES = 1392
PATH_DATAGRAM_BYTES = 1452
SHA256_BYTES = 32
# What one UDP GSO send (and so one GRO receive) carries at most on Linux: the sender cuts its
# data into runs of this many datagrams so that each send, and each receive, is a full one.
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels (newer allow 128)
GSO_MAX_BYTES = 65000  # the whole run must fit one IP packet: below 65,507 bytes over IPv4
NONCE_BYTES = 16
TOKEN_BYTES = 16
MAX_NAME_BYTES = 1024
MAX_REASON_BYTES = 512
MAX_BLOCKS = 4096  # blocks a file's manifest is cut into at most
BLOCK_TARGET_BYTES = 1 << 20
MANIFEST_HASHES = 40  # block hashes per MANIFEST datagram (1280 bytes of body)

# Bodies.
# size, chunk_size, chunk_count, block_chunks, sha256, mtime_ns, mode, nonce, token, name length
_META = struct.Struct("!QIQI32sQB16s16sH")
_END = struct.Struct("!QQ")  # chunks of the first pass sent so far, data datagrams sent so far
# echo_ns, highest tx seen (-1 none), chunks held, window, DATA datagrams received,
# nanoseconds the acknowledged datagram waited in the receiver's own socket queue
_STATUS = struct.Struct("!QqQIQI")
_RANGES_HEAD = struct.Struct("!QBH")  # echo_ns, what the ranges count (RangeKind), count
_RANGE = struct.Struct("!QQ")  # first, last (inclusive)
_DONE = struct.Struct("!QBQ32s")  # echo_ns, verdict, chunks held, sha256 of what was received
_ABORT = struct.Struct("!BQH")  # code, chunks of the first pass sent, reason length
# echo_ns, hello flags, window, chunks already held (resumed), token, receiver nonce
_HELLO = struct.Struct("!QBIQ16s16s")

# How many ranges fit a datagram that stays under the IPv6 Ethernet payload (1452), keyed.
MAX_RANGES = (PATH_DATAGRAM_BYTES - HEADER_BYTES - TAG_BYTES - _RANGES_HEAD.size) // _RANGE.size
MAX_NACK_RANGES = MAX_RANGES


class PacketType(IntEnum):
    """What a datagram is."""

    META = 1  # sender -> receiver: file metadata and the handshake, repeated
    DATA = 2  # sender -> receiver: one chunk
    END = 3  # sender -> receiver: a pass is over (round in seq)
    STATUS = 4  # receiver -> sender: progress and flow-control window
    NACK = 5  # receiver -> sender: ranges still missing after a round
    DONE = 6  # receiver -> sender: the verdict
    ABORT = 7  # either way: the session is over, with a reason
    HELLO = 8  # receiver -> sender: answer to META (address token, or accepted)
    MANIFEST = 9  # sender -> receiver: SHA-256 of blocks of the file
    HAVE = 10  # receiver -> sender: chunk ranges already verified on disk (resume)


class Flags(IntFlag):
    """Header flag bits."""

    NONE = 0
    RESENT = 0x01  # DATA: not the chunk's first transmission
    ACK_REQUESTED = 0x02  # DATA: answer with a STATUS now
    KEYED = 0x04  # the trailer is a 16-byte AEAD tag, not a CRC-32
    ENCRYPTED = 0x08  # KEYED: the body is encrypted


_DATA_ONLY_FLAGS = int(Flags.RESENT | Flags.ACK_REQUESTED)
_TRAILER_FLAGS = int(Flags.KEYED | Flags.ENCRYPTED)
# Plain ints on the per-datagram path: IntFlag arithmetic costs some microseconds a time.
KEYED_FLAG = int(Flags.KEYED)
ENCRYPTED_FLAG = int(Flags.ENCRYPTED)
_KNOWN_FLAGS = _DATA_ONLY_FLAGS | _TRAILER_FLAGS
_DATA_TYPE = int(PacketType.DATA)
_FIRST_TYPE, _LAST_TYPE = int(PacketType.META), int(PacketType.HAVE)


class HelloFlags(IntFlag):
    """What a HELLO says."""

    NONE = 0
    RETRY = 0x01  # echo the token in META before anything else: the address is not validated
    ACCEPTED = 0x02  # the transfer is on: the window is open, the receiver nonce is final
    RESUMING = 0x04  # ACCEPTED, and ``held`` chunks are already on disk (HAVE lists them)
    NEED_KEY = 0x08  # this receiver only takes keyed transfers
    NO_KEY = 0x10  # this receiver has no key: it cannot take a keyed transfer
    AUTH_FAILED = 0x20  # a datagram from you failed authentication (wrong key?)


class RangeKind(IntEnum):
    """What the ranges of a NACK or HAVE count."""

    CHUNKS = 0
    BLOCKS = 1  # NACK: manifest entries (block hashes) still missing


class Mode(IntEnum):
    """Transfer mode announced in META."""

    RELIABLE = 0
    BLAST = 1

    @property
    def label(self) -> str:
        """The mode's name as users type it."""
        return self.name.lower()


class Verdict(IntEnum):
    """The receiver's conclusion in DONE."""

    VERIFIED = 0  # every chunk held and the SHA-256 matches
    MISMATCH = 1  # every chunk held but the SHA-256 differs
    INCOMPLETE = 2  # chunks are missing (blast mode, or the receiver gave up)


class AbortCode(IntEnum):
    """Why a session was aborted."""

    CANCELLED = 1  # the user stopped it
    REFUSED = 2  # the receiver will not take this transfer (limits, disk)
    PROTOCOL = 3  # the peer broke the protocol
    TIMEOUT = 4  # the peer went silent
    BUSY = 5  # the receiver has no room for another transfer now
    CLOSED = 6  # sender -> receiver after the verdict: it arrived, stop lingering


@dataclass(frozen=True, slots=True)
class Meta:
    """File metadata; sent several times so that losing some copies is harmless."""

    session: int
    name: str
    size: int
    chunk_size: int
    chunk_count: int
    sha256: bytes
    mode: Mode
    copy: int = 0
    sent_ns: int = 0
    block_chunks: int = 0  # chunks per manifest block (0: no manifest)
    mtime_ns: int = 0  # the source's modification time: a changed source never resumes
    nonce: bytes = bytes(NONCE_BYTES)  # the sender's session nonce (key derivation)
    token: bytes = bytes(TOKEN_BYTES)  # the receiver's address token echoed (zeros: none)
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Data:
    """One chunk of the file."""

    session: int
    index: int
    tx: int
    payload: bytes | memoryview
    pass_no: int = 0
    flags: int = 0  # Flags bits, kept as a plain int on the hot path
    sent_ns: int = 0

    @property
    def resent(self) -> bool:
        """True when this is not the chunk's first transmission."""
        return bool(self.flags & Flags.RESENT)


@dataclass(frozen=True, slots=True)
class End:
    """The sender finished pass ``round`` (0 is the first pass)."""

    session: int
    round: int
    chunks_sent: int
    tx_sent: int
    sent_ns: int = 0
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Status:
    """Receiver progress: the highest tx seen, chunks held and the flow-control window."""

    session: int
    echo_ns: int
    highest_tx: int
    held: int
    window: int
    sent_ns: int = 0
    received: int = 0  # DATA datagrams of this session received so far (loss signal)
    queued_ns: int = 0  # how long the echoed datagram waited in the receiver's socket
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Nack:
    """Chunks (or manifest blocks) still missing after round ``round``, as inclusive ranges."""

    session: int
    round: int
    echo_ns: int
    ranges: tuple[tuple[int, int], ...]
    sent_ns: int = 0
    kind: RangeKind = RangeKind.CHUNKS
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Have:
    """Chunk ranges the receiver already holds, verified on disk (a resumed transfer)."""

    session: int
    ranges: tuple[tuple[int, int], ...]
    echo_ns: int = 0
    sent_ns: int = 0
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    """The receiver's verdict on the whole file."""

    session: int
    verdict: Verdict
    held: int
    sha256: bytes
    echo_ns: int = 0
    sent_ns: int = 0
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Abort:
    """The session is over."""

    session: int
    code: AbortCode
    reason: str
    sent_ns: int = 0
    chunks_sent: int = 0  # sender: how far its first pass got (honest loss accounting)
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Hello:
    """The receiver's answer to META."""

    session: int
    flags: HelloFlags
    echo_ns: int = 0
    window: int = 0
    held: int = 0
    token: bytes = bytes(TOKEN_BYTES)
    nonce: bytes = bytes(NONCE_BYTES)
    sent_ns: int = 0
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Manifest:
    """SHA-256 digests of consecutive blocks, starting at block ``first``."""

    session: int
    first: int
    hashes: tuple[bytes, ...]
    sent_ns: int = 0
    pn: int = 0


Packet = Meta | Data | End | Status | Nack | Have | Done | Abort | Hello | Manifest
ControlPacket = Meta | End | Status | Nack | Have | Done | Abort | Hello | Manifest


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed part of a datagram, bounds-checked; ``body`` and ``trailer`` are views."""

    ptype: int
    flags: int
    pass_no: int
    session: int
    seq: int
    pn: int
    sent_ns: int
    body: memoryview
    trailer: memoryview
    prefix: memoryview  # header and body: what the trailer covers
    raw: memoryview  # the whole datagram

    @property
    def keyed(self) -> bool:
        """True when the trailer is an AEAD tag."""
        return bool(self.flags & KEYED_FLAG)

    @property
    def space(self) -> int:
        """The packet-number space: 0 for DATA, 1 for everything else."""
        return 0 if self.ptype == _DATA_TYPE else 1


class Seal:
    """How a datagram's trailer is made and checked: CRC-32 here, an AEAD in ``keys``.

    ``seal`` returns the (possibly encrypted) body followed by the trailer; ``open_untrusted``
    returns the plain body or raises ``MalformedPacket``.
    """

    flags: int = 0
    trailer_bytes: int = CRC_BYTES

    def seal(
        self, space: int, pn: int, header: bytes, body: bytes | memoryview
    ) -> list[bytes | memoryview]:
        """Body and trailer pieces to send after ``header``."""
        check = crc32(body, crc32(header))
        return [body, _CHECK.pack(check)]

    def open_untrusted(self, header: Header) -> memoryview:
        """The plain body of a datagram whose trailer this seal made.

        Raises:
            MalformedPacket: the trailer does not match.
        """
        if header.keyed:
            raise CorruptPacket("keyed datagram, and no key is configured", header.session)
        (check,) = _CHECK.unpack(header.trailer)
        if crc32(header.prefix) != check:
            raise CorruptPacket("integrity check failed", header.session)
        return header.body


CRC = Seal()


def datagrams_per_run(datagram_bytes: int) -> int:
    """How many datagrams of ``datagram_bytes`` one GSO send carries."""
    return max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // max(1, datagram_bytes)))


def chunk_count_for(size: int, chunk_size: int) -> int:
    """Number of chunks a file of ``size`` bytes is cut into."""
    return -(-size // chunk_size)


def block_chunks_for(chunk_count: int, chunk_size: int) -> int:
    """Chunks per manifest block: about 1 MiB, and never more than ``MAX_BLOCKS`` blocks."""
    if chunk_count == 0:
        return 0
    per_target = max(1, BLOCK_TARGET_BYTES // chunk_size)
    return max(per_target, -(-chunk_count // MAX_BLOCKS))


def frame_pieces(
    ptype: int,
    flags: int,
    pass_no: int,
    session: int,
    seq: int,
    pn: int,
    sent_ns: int,
    body: bytes | memoryview,
    seal: Seal = CRC,
) -> list[bytes | memoryview]:
    """A datagram as pieces for a gathered send: header, body (maybe encrypted), trailer."""
    header = HEADER.pack(
        MAGIC, VERSION, ptype, flags | seal.flags, pass_no, session, seq, pn, sent_ns
    )
    return [header, *seal.seal(0 if ptype == _DATA_TYPE else 1, pn, header, body)]


def _frame(
    ptype: int,
    flags: int,
    pass_no: int,
    session: int,
    seq: int,
    pn: int,
    sent_ns: int,
    body: bytes | memoryview,
    seal: Seal,
) -> bytes:
    return b"".join(frame_pieces(ptype, flags, pass_no, session, seq, pn, sent_ns, body, seal))


def encode_data(
    session: int,
    index: int,
    tx: int,
    payload: bytes | memoryview,
    *,
    pass_no: int = 0,
    flags: int = 0,
    sent_ns: int = 0,
    seal: Seal = CRC,
) -> bytes:
    """Encode a DATA datagram without building a ``Data`` object (the sender's hot path)."""
    return _frame(_DATA_TYPE, flags, min(pass_no, 255), session, index, tx, sent_ns, payload, seal)


def _ranges_body(echo_ns: int, kind: RangeKind, ranges: tuple[tuple[int, int], ...]) -> bytes:
    return _RANGES_HEAD.pack(echo_ns, kind, len(ranges)) + b"".join(
        _RANGE.pack(first, last) for first, last in ranges
    )


def encode(packet: Packet, seal: Seal = CRC) -> bytes:
    """Encode any packet into one datagram."""
    seq = 0
    match packet:
        case Data():
            return encode_data(
                packet.session,
                packet.index,
                packet.tx,
                packet.payload,
                pass_no=packet.pass_no,
                flags=int(packet.flags),
                sent_ns=packet.sent_ns,
                seal=seal,
            )
        case Meta():
            name = packet.name.encode("utf-8")
            body = (
                _META.pack(
                    packet.size,
                    packet.chunk_size,
                    packet.chunk_count,
                    packet.block_chunks,
                    packet.sha256,
                    packet.mtime_ns,
                    packet.mode,
                    packet.nonce,
                    packet.token,
                    len(name),
                )
                + name
            )
            ptype, seq = PacketType.META, packet.copy
        case End():
            body = _END.pack(packet.chunks_sent, packet.tx_sent)
            ptype, seq = PacketType.END, packet.round
        case Status():
            body = _STATUS.pack(
                packet.echo_ns,
                packet.highest_tx,
                packet.held,
                packet.window,
                packet.received,
                packet.queued_ns,
            )
            ptype = PacketType.STATUS
        case Nack():
            body = _ranges_body(packet.echo_ns, packet.kind, packet.ranges)
            ptype, seq = PacketType.NACK, packet.round
        case Have():
            body = _ranges_body(packet.echo_ns, RangeKind.CHUNKS, packet.ranges)
            ptype = PacketType.HAVE
        case Done():
            body = _DONE.pack(packet.echo_ns, packet.verdict, packet.held, packet.sha256)
            ptype = PacketType.DONE
        case Abort():
            reason = _cut_utf8(packet.reason, MAX_REASON_BYTES)
            body = _ABORT.pack(packet.code, packet.chunks_sent, len(reason)) + reason
            ptype = PacketType.ABORT
        case Hello():
            body = _HELLO.pack(
                packet.echo_ns, packet.flags, packet.window, packet.held, packet.token, packet.nonce
            )
            ptype = PacketType.HELLO
        case Manifest():
            body = b"".join(packet.hashes)
            ptype, seq = PacketType.MANIFEST, packet.first
    return _frame(ptype, 0, 0, packet.session, seq, packet.pn, packet.sent_ns, body, seal)


def _cut_utf8(text: str, limit: int) -> bytes:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore").encode("utf-8")


class CorruptPacket(MalformedPacket):
    """A datagram with our magic and version whose integrity check fails."""

    def __init__(self, message: str, session: int) -> None:
        super().__init__(message)
        self.session = session


def parse_header_untrusted(datagram: bytes | bytearray | memoryview) -> Header:
    """Split a datagram into its bounds-checked header, body and trailer (no check verified).

    Raises:
        MalformedPacket: too short, wrong magic or version, unknown type or flags, fields out
            of range.
    """
    view = datagram if isinstance(datagram, memoryview) else memoryview(datagram)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if len(view) < HEADER_BYTES + CRC_BYTES:
        raise MalformedPacket(f"datagram of {len(view)} bytes is shorter than header and check")
    magic, version, ptype, flags, pass_no, session, seq, pn, sent_ns = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise MalformedPacket("not a udpxfer datagram (bad magic)")
    if version != VERSION:
        raise MalformedPacket(f"unsupported protocol version {version}")
    if not _FIRST_TYPE <= ptype <= _LAST_TYPE:
        raise MalformedPacket(f"unknown packet type {ptype}")
    if flags & ~_KNOWN_FLAGS:
        raise MalformedPacket(f"unknown flags 0x{flags:02x}")
    if flags & ENCRYPTED_FLAG and not flags & KEYED_FLAG:
        raise MalformedPacket("ENCRYPTED without KEYED")
    if ptype != _DATA_TYPE and (flags & _DATA_ONLY_FLAGS or pass_no):
        raise MalformedPacket(f"{PacketType(ptype).name} with data-only header fields set")
    if pn > MAX_PN:
        raise MalformedPacket(f"packet number {pn} out of range")
    if sent_ns > MAX_STAMP_NS:
        raise MalformedPacket(f"send stamp {sent_ns} out of range")
    trailer_bytes = TAG_BYTES if flags & KEYED_FLAG else CRC_BYTES
    if len(view) < HEADER_BYTES + trailer_bytes:
        raise MalformedPacket(f"datagram of {len(view)} bytes is shorter than header and tag")
    end = len(view) - trailer_bytes
    return Header(
        ptype,
        flags,
        pass_no,
        session,
        seq,
        pn,
        sent_ns,
        view[HEADER_BYTES:end],
        view[end:],
        view[:end],
        view,
    )


def decode_untrusted(datagram: bytes | bytearray | memoryview, seal: Seal = CRC) -> Packet:
    """Decode one datagram from the network.

    Returns:
        The packet. A DATA packet's payload is a view into ``datagram`` (or the decrypted body).

    Raises:
        MalformedPacket: for anything that is not a well-formed udpxfer datagram (never any
            other exception); ``CorruptPacket`` when only the integrity check fails.
    """
    header = parse_header_untrusted(datagram)
    return decode_header_untrusted(header, seal)


def decode_header_untrusted(header: Header, seal: Seal = CRC) -> Packet:
    """Check a parsed datagram's trailer with ``seal`` and decode its body.

    Raises:
        MalformedPacket: the trailer does not match or the body does not fit the type.
    """
    body = seal.open_untrusted(header)
    if header.ptype == _DATA_TYPE:
        return Data(
            header.session,
            header.seq,
            header.pn,
            body,
            header.pass_no,
            header.flags & _DATA_ONLY_FLAGS,
            header.sent_ns,
        )
    kind = PacketType(header.ptype)
    try:
        return _DECODERS[kind](header, body)
    except struct.error as exc:
        raise MalformedPacket(f"truncated {kind.name} body: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"{kind.name} text is not UTF-8") from exc


def _exact(kind: PacketType, body: memoryview, expected: int) -> None:
    if len(body) != expected:
        raise MalformedPacket(f"{kind.name} body of {len(body)} bytes, expected {expected}")


def _enum(kind: type[IntEnum], value: int, what: str) -> IntEnum:
    try:
        return kind(value)
    except ValueError:
        raise MalformedPacket(f"unknown {what} {value}") from None


def _decode_meta(h: Header, body: memoryview) -> Meta:
    size, chunk_size, count, block_chunks, sha, mtime, mode, nonce, token, name_len = (
        _META.unpack_from(body)
    )
    _exact(PacketType.META, body, _META.size + name_len)
    if name_len > MAX_NAME_BYTES:
        raise MalformedPacket(f"META name of {name_len} bytes is too long")
    if not 1 <= chunk_size <= MAX_CHUNK_BYTES:
        raise MalformedPacket(f"META chunk size {chunk_size} out of range")
    if count != chunk_count_for(size, chunk_size):
        raise MalformedPacket("META chunk count does not match size and chunk size")
    if block_chunks and -(-count // block_chunks) > MAX_BLOCKS:
        raise MalformedPacket(f"META blocks of {block_chunks} chunks make too many blocks")
    if mtime > MAX_STAMP_NS:
        raise MalformedPacket("META modification time out of range")
    mode_value = Mode(_enum(Mode, mode, "META mode"))
    name = bytes(body[_META.size :]).decode("utf-8")
    return Meta(
        h.session,
        name,
        size,
        chunk_size,
        count,
        sha,
        mode_value,
        h.seq,
        h.sent_ns,
        block_chunks,
        mtime,
        nonce,
        token,
        h.pn,
    )


_META_NONCE_AT = struct.calcsize("!QIQI32sQB")


def meta_nonce_untrusted(header: Header) -> bytes:
    """The sender's nonce from a META body, before its tag is checked (keys derive from it).

    Raises:
        MalformedPacket: not a META, or a body too short to hold one.
    """
    if header.ptype != PacketType.META or len(header.body) < _META.size:
        raise MalformedPacket("not a META datagram")
    return bytes(header.body[_META_NONCE_AT : _META_NONCE_AT + NONCE_BYTES])


def _decode_end(h: Header, body: memoryview) -> End:
    _exact(PacketType.END, body, _END.size)
    chunks_sent, tx_sent = _END.unpack_from(body)
    return End(h.session, h.seq, chunks_sent, tx_sent, h.sent_ns, h.pn)


def _decode_status(h: Header, body: memoryview) -> Status:
    _exact(PacketType.STATUS, body, _STATUS.size)
    echo_ns, highest_tx, held, window, received, queued_ns = _STATUS.unpack_from(body)
    if highest_tx < -1 or highest_tx > MAX_PN or echo_ns > MAX_STAMP_NS:
        raise MalformedPacket("STATUS field out of range")
    return Status(
        h.session, echo_ns, highest_tx, held, window, h.sent_ns, received, queued_ns, h.pn
    )


def _ranges_untrusted(
    kind: PacketType, body: memoryview
) -> tuple[int, RangeKind, tuple[tuple[int, int], ...]]:
    echo_ns, range_kind, count = _RANGES_HEAD.unpack_from(body)
    _exact(kind, body, _RANGES_HEAD.size + count * _RANGE.size)
    if count > MAX_RANGES:
        raise MalformedPacket(f"{kind.name} with {count} ranges")
    ranges = tuple(_RANGE.iter_unpack(body[_RANGES_HEAD.size :]))
    if any(first > last for first, last in ranges):
        raise MalformedPacket(f"{kind.name} range with first > last")
    return echo_ns, RangeKind(_enum(RangeKind, range_kind, f"{kind.name} range kind")), ranges


def _decode_nack(h: Header, body: memoryview) -> Nack:
    echo_ns, range_kind, ranges = _ranges_untrusted(PacketType.NACK, body)
    return Nack(h.session, h.seq, echo_ns, ranges, h.sent_ns, range_kind, h.pn)


def _decode_have(h: Header, body: memoryview) -> Have:
    echo_ns, range_kind, ranges = _ranges_untrusted(PacketType.HAVE, body)
    if range_kind is not RangeKind.CHUNKS:
        raise MalformedPacket("HAVE counts chunks only")
    return Have(h.session, ranges, echo_ns, h.sent_ns, h.pn)


def _decode_done(h: Header, body: memoryview) -> Done:
    _exact(PacketType.DONE, body, _DONE.size)
    echo_ns, verdict, held, sha = _DONE.unpack_from(body)
    verdict_value = Verdict(_enum(Verdict, verdict, "DONE verdict"))
    return Done(h.session, verdict_value, held, sha, echo_ns, h.sent_ns, h.pn)


def _decode_abort(h: Header, body: memoryview) -> Abort:
    code, chunks_sent, reason_len = _ABORT.unpack_from(body)
    _exact(PacketType.ABORT, body, _ABORT.size + reason_len)
    if reason_len > MAX_REASON_BYTES:
        raise MalformedPacket("ABORT reason too long")
    code_value = AbortCode(_enum(AbortCode, code, "ABORT code"))
    reason = bytes(body[_ABORT.size :]).decode("utf-8")
    return Abort(h.session, code_value, reason, h.sent_ns, chunks_sent, h.pn)


def _decode_hello(h: Header, body: memoryview) -> Hello:
    _exact(PacketType.HELLO, body, _HELLO.size)
    echo_ns, flags, window, held, token, nonce = _HELLO.unpack_from(body)
    if flags & ~int(sum(HelloFlags)):
        raise MalformedPacket(f"HELLO unknown flags 0x{flags:02x}")
    return Hello(h.session, HelloFlags(flags), echo_ns, window, held, token, nonce, h.sent_ns, h.pn)


def _decode_manifest(h: Header, body: memoryview) -> Manifest:
    if len(body) % SHA256_BYTES or not 0 < len(body) <= MANIFEST_HASHES * SHA256_BYTES:
        raise MalformedPacket(f"MANIFEST body of {len(body)} bytes")
    if h.seq >= MAX_BLOCKS:
        raise MalformedPacket(f"MANIFEST first block {h.seq} out of range")
    hashes = tuple(bytes(body[i : i + SHA256_BYTES]) for i in range(0, len(body), SHA256_BYTES))
    return Manifest(h.session, h.seq, hashes, h.sent_ns, h.pn)


_DECODERS: dict[PacketType, Callable[[Header, memoryview], Packet]] = {
    PacketType.META: _decode_meta,
    PacketType.END: _decode_end,
    PacketType.STATUS: _decode_status,
    PacketType.NACK: _decode_nack,
    PacketType.HAVE: _decode_have,
    PacketType.DONE: _decode_done,
    PacketType.ABORT: _decode_abort,
    PacketType.HELLO: _decode_hello,
    PacketType.MANIFEST: _decode_manifest,
}
