"""The udpxfer wire format: one header Struct, a dataclass per packet, encode and decode.

Every datagram starts with this 44-byte header (network byte order); docs/PROTOCOL.md has
the same layout as a table.

    offset size field
    0      4    magic        b"UDPX"
    4      1    version      1
    5      1    type         PacketType
    6      1    flags        Flags (RESENT, ACK_REQUESTED; TAGGED reserved for a keyed tag)
    7      1    pass_no      DATA: 0 for a first transmission, k for a resend in repair round k
    8      8    session      random session id chosen by the sender
    16     8    seq          DATA: chunk index; END/NACK: round; META: copy number; else 0
    24     8    tx           DATA: the sender's transmission counter (0, 1, 2, ...); else 0
    32     8    sent_ns      sender of this datagram's clock, nanoseconds
    40     4    check        CRC-32 (zlib) of bytes 0..39 followed by the body
    44     ...  body         per packet type, below

A datagram with the TAGGED flag would carry a keyed authentication tag after the body; this
version rejects such datagrams (no key has been agreed).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from udpxfer.errors import MalformedPacket

MAGIC = b"UDPX"
VERSION = 1

HEADER = struct.Struct("!4sBBBBQQQQI")
HEADER_BYTES = HEADER.size  # 44
_PREFIX_BYTES = HEADER_BYTES - 4  # the part of the header the check covers
_CHECK = struct.Struct("!I")

MAX_DATAGRAM_BYTES = 65507  # largest UDP payload over IPv4
MAX_CHUNK_BYTES = MAX_DATAGRAM_BYTES - HEADER_BYTES
# 1500-byte Ethernet MTU - 40 (IPv6 header) - 8 (UDP header) - 44 (ours) = 1408; round down.
DEFAULT_CHUNK_BYTES = 1400
SHA256_BYTES = 32
MAX_NAME_BYTES = 4096
MAX_REASON_BYTES = 1024

# Bodies.
_META = struct.Struct("!QIQ32sBH")  # size, chunk_size, chunk_count, sha256, mode, name length
_END = struct.Struct("!QQ")  # chunks sent in this pass, data datagrams sent so far (tx count)
# echo_ns, highest tx seen (-1 none), chunks held, window, DATA datagrams received,
# nanoseconds the acknowledged datagram waited in the receiver's own socket queue
_STATUS = struct.Struct("!QqQIQI")
_NACK_HEAD = struct.Struct("!QH")  # echo_ns, number of ranges
_RANGE = struct.Struct("!QQ")  # first, last chunk index (inclusive)
_DONE = struct.Struct("!QBQ32s")  # echo_ns, verdict, chunks held, sha256 of what was received
_ABORT = struct.Struct("!BH")  # code, reason length

# How many NACK ranges fit a datagram that stays under the IPv6 Ethernet payload (1452).
MAX_NACK_RANGES = (1452 - HEADER_BYTES - _NACK_HEAD.size) // _RANGE.size


class PacketType(IntEnum):
    """What a datagram is."""

    META = 1  # sender -> receiver: file metadata, repeated
    DATA = 2  # sender -> receiver: one chunk
    END = 3  # sender -> receiver: a pass is over (round in seq)
    STATUS = 4  # receiver -> sender: progress and flow-control window
    NACK = 5  # receiver -> sender: ranges still missing after a round
    DONE = 6  # receiver -> sender: the verdict
    ABORT = 7  # either way: the session is over, with a reason


class Flags(IntFlag):
    """Header flag bits."""

    NONE = 0
    RESENT = 0x01  # DATA: not the chunk's first transmission
    ACK_REQUESTED = 0x02  # DATA: answer with a STATUS now
    TAGGED = 0x80  # reserved: an authentication tag follows the body


_UNKNOWN_FLAGS = 0xFF & ~int(Flags.RESENT | Flags.ACK_REQUESTED)
_DATA_TYPE = int(PacketType.DATA)


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


@dataclass(frozen=True, slots=True)
class Nack:
    """Chunks still missing after round ``round``, as inclusive ranges."""

    session: int
    round: int
    echo_ns: int
    ranges: tuple[tuple[int, int], ...]
    sent_ns: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    """The receiver's verdict on the whole file."""

    session: int
    verdict: Verdict
    held: int
    sha256: bytes
    echo_ns: int = 0
    sent_ns: int = 0


@dataclass(frozen=True, slots=True)
class Abort:
    """The session is over."""

    session: int
    code: AbortCode
    reason: str
    sent_ns: int = 0


Packet = Meta | Data | End | Status | Nack | Done | Abort


def chunk_count_for(size: int, chunk_size: int) -> int:
    """Number of chunks a file of ``size`` bytes is cut into."""
    return -(-size // chunk_size)


def _frame(
    ptype: PacketType,
    flags: int,
    pass_no: int,
    session: int,
    seq: int,
    tx: int,
    sent_ns: int,
    body: bytes | memoryview,
) -> bytes:
    prefix = HEADER.pack(MAGIC, VERSION, ptype, flags, pass_no, session, seq, tx, sent_ns, 0)[
        :_PREFIX_BYTES
    ]
    check = zlib.crc32(body, zlib.crc32(prefix))
    return b"".join((prefix, _CHECK.pack(check), body))


def encode_data(
    session: int,
    index: int,
    tx: int,
    payload: bytes | memoryview,
    *,
    pass_no: int = 0,
    flags: int = 0,
    sent_ns: int = 0,
) -> bytes:
    """Encode a DATA datagram without building a ``Data`` object (the sender's hot path)."""
    return _frame(PacketType.DATA, flags, min(pass_no, 255), session, index, tx, sent_ns, payload)


def encode(packet: Packet) -> bytes:
    """Encode any packet into one datagram."""
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
            )
        case Meta():
            name = packet.name.encode("utf-8")
            body = (
                _META.pack(
                    packet.size,
                    packet.chunk_size,
                    packet.chunk_count,
                    packet.sha256,
                    packet.mode,
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
            ptype, seq = PacketType.STATUS, 0
        case Nack():
            body = _NACK_HEAD.pack(packet.echo_ns, len(packet.ranges)) + b"".join(
                _RANGE.pack(first, last) for first, last in packet.ranges
            )
            ptype, seq = PacketType.NACK, packet.round
        case Done():
            body = _DONE.pack(packet.echo_ns, packet.verdict, packet.held, packet.sha256)
            ptype, seq = PacketType.DONE, 0
        case Abort():
            reason = packet.reason.encode("utf-8")[:MAX_REASON_BYTES]
            body = _ABORT.pack(packet.code, len(reason)) + reason
            ptype, seq = PacketType.ABORT, 0
    return _frame(ptype, 0, 0, packet.session, seq, 0, packet.sent_ns, body)


class CorruptPacket(MalformedPacket):
    """A datagram with our magic and version whose integrity check fails."""

    def __init__(self, message: str, session: int) -> None:
        super().__init__(message)
        self.session = session


DataFields = tuple[int, int, int, memoryview, int, int, int]


def data_fields_untrusted(view: memoryview) -> DataFields | None:
    """The receiver's hot path: (session, index, tx, payload, pass_no, flags, sent_ns).

    Returns None for anything but an intact DATA datagram; ``decode_untrusted`` then says
    what is wrong with it. ``view`` must be a byte-format memoryview.
    """
    if len(view) < HEADER_BYTES:
        return None
    magic, version, ptype, flags, pass_no, session, seq, tx, sent_ns, check = HEADER.unpack_from(
        view
    )
    if ptype != _DATA_TYPE or magic != MAGIC or version != VERSION or flags & _UNKNOWN_FLAGS:
        return None
    body = view[HEADER_BYTES:]
    if zlib.crc32(body, zlib.crc32(view[:_PREFIX_BYTES])) != check:
        return None
    return session, seq, tx, body, pass_no, flags, sent_ns


def decode_untrusted(datagram: bytes | bytearray | memoryview) -> Packet:
    """Decode one datagram from the network.

    Returns:
        The packet. A DATA packet's payload is a view into ``datagram``.

    Raises:
        MalformedPacket: for anything that is not a well-formed udpxfer datagram (never any
            other exception); ``CorruptPacket`` when only the integrity check fails.
    """
    view = datagram if isinstance(datagram, memoryview) else memoryview(datagram)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if len(view) < HEADER_BYTES:
        raise MalformedPacket(f"datagram of {len(view)} bytes is shorter than the header")
    magic, version, ptype, flags, pass_no, session, seq, tx, sent_ns, check = HEADER.unpack_from(
        view
    )
    if magic != MAGIC:
        raise MalformedPacket("not a udpxfer datagram (bad magic)")
    if version != VERSION:
        raise MalformedPacket(f"unsupported protocol version {version}")
    body = view[HEADER_BYTES:]
    if zlib.crc32(body, zlib.crc32(view[:_PREFIX_BYTES])) != check:
        raise CorruptPacket("integrity check failed", session)
    if flags & _UNKNOWN_FLAGS:
        raise MalformedPacket(f"unknown flags 0x{flags:02x}")
    if ptype == _DATA_TYPE:
        return Data(session, seq, tx, body, pass_no, flags, sent_ns)
    try:
        kind = PacketType(ptype)
    except ValueError:
        raise MalformedPacket(f"unknown packet type {ptype}") from None
    if flags or pass_no or tx:
        raise MalformedPacket(f"{kind.name} with data-only header fields set")
    try:
        return _decode_control(kind, session, seq, sent_ns, body)
    except struct.error as exc:
        raise MalformedPacket(f"truncated {kind.name} body: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"{kind.name} text is not UTF-8") from exc


def _exact(kind: PacketType, body: memoryview, expected: int) -> None:
    if len(body) != expected:
        raise MalformedPacket(f"{kind.name} body of {len(body)} bytes, expected {expected}")


def _decode_control(
    kind: PacketType, session: int, seq: int, sent_ns: int, body: memoryview
) -> Packet:
    if kind is PacketType.META:
        size, chunk_size, chunk_count, sha, mode, name_len = _META.unpack_from(body)
        _exact(kind, body, _META.size + name_len)
        if name_len > MAX_NAME_BYTES:
            raise MalformedPacket(f"META name of {name_len} bytes is too long")
        if not 1 <= chunk_size <= MAX_CHUNK_BYTES:
            raise MalformedPacket(f"META chunk size {chunk_size} out of range")
        if chunk_count != chunk_count_for(size, chunk_size):
            raise MalformedPacket("META chunk count does not match size and chunk size")
        try:
            mode_value = Mode(mode)
        except ValueError:
            raise MalformedPacket(f"META unknown mode {mode}") from None
        name = bytes(body[_META.size :]).decode("utf-8")
        return Meta(session, name, size, chunk_size, chunk_count, sha, mode_value, seq, sent_ns)
    if kind is PacketType.END:
        _exact(kind, body, _END.size)
        chunks_sent, tx_sent = _END.unpack_from(body)
        return End(session, seq, chunks_sent, tx_sent, sent_ns)
    if kind is PacketType.STATUS:
        _exact(kind, body, _STATUS.size)
        echo_ns, highest_tx, held, window, received, queued_ns = _STATUS.unpack_from(body)
        return Status(session, echo_ns, highest_tx, held, window, sent_ns, received, queued_ns)
    if kind is PacketType.NACK:
        echo_ns, count = _NACK_HEAD.unpack_from(body)
        _exact(kind, body, _NACK_HEAD.size + count * _RANGE.size)
        ranges = tuple(_RANGE.iter_unpack(body[_NACK_HEAD.size :]))
        if any(first > last for first, last in ranges):
            raise MalformedPacket("NACK range with first > last")
        return Nack(session, seq, echo_ns, ranges, sent_ns)
    if kind is PacketType.DONE:
        _exact(kind, body, _DONE.size)
        echo_ns, verdict, held, sha = _DONE.unpack_from(body)
        try:
            verdict_value = Verdict(verdict)
        except ValueError:
            raise MalformedPacket(f"DONE unknown verdict {verdict}") from None
        return Done(session, verdict_value, held, sha, echo_ns, sent_ns)
    code, reason_len = _ABORT.unpack_from(body)
    _exact(kind, body, _ABORT.size + reason_len)
    try:
        code_value = AbortCode(code)
    except ValueError:
        raise MalformedPacket(f"ABORT unknown code {code}") from None
    reason = bytes(body[_ABORT.size :]).decode("utf-8")
    return Abort(session, code_value, reason, sent_ns)
