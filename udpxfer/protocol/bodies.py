"""Control packet bodies: a Struct per body under its layout comment, encoders and decoders.

Every type but DATA has a body of its own after the header (docs/PROTOCOL.md has the table);
``encode_body`` packs one and ``decode_body_untrusted`` unpacks and bounds-checks one, raising
only ``MalformedPacket``. ``codec`` frames them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum

from udpxfer.errors import MalformedPacket
from udpxfer.protocol.framing import Header
from udpxfer.protocol.wire import (
    HEADER_BYTES,
    MANIFEST_HASHES,
    MAX_BLOCKS,
    MAX_CHUNK_BYTES,
    MAX_NAME_BYTES,
    MAX_PN,
    MAX_REASON_BYTES,
    MAX_STAMP_NS,
    NONCE_BYTES,
    PATH_DATAGRAM_BYTES,
    SHA256_BYTES,
    TAG_BYTES,
    Abort,
    AbortCode,
    ControlPacket,
    Done,
    End,
    Have,
    Hello,
    HelloFlags,
    Manifest,
    Meta,
    Mode,
    Nack,
    PacketType,
    RangeKind,
    Status,
    Verdict,
    chunk_count_for,
)

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


def encode_body(packet: ControlPacket) -> tuple[PacketType, int, bytes]:
    """A control packet's type, ``seq`` header field and body."""
    seq = 0
    match packet:
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
    return ptype, seq, body


def _ranges_body(echo_ns: int, kind: RangeKind, ranges: tuple[tuple[int, int], ...]) -> bytes:
    return _RANGES_HEAD.pack(echo_ns, kind, len(ranges)) + b"".join(
        _RANGE.pack(first, last) for first, last in ranges
    )


def _cut_utf8(text: str, limit: int) -> bytes:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def decode_body_untrusted(header: Header, body: memoryview) -> ControlPacket:
    """The control packet of a datagram whose trailer checked out, from its plain ``body``.

    Raises:
        MalformedPacket: the body does not fit the type, or a field is out of range.
    """
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
    except ValueError as exc:
        raise MalformedPacket(f"unknown {what} {value}") from exc


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


_DECODERS: dict[PacketType, Callable[[Header, memoryview], ControlPacket]] = {
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
