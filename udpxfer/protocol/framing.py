"""Framing: a datagram's header parsed untrusted, its trailer sealed and checked, DATA encoded.

A datagram is the 40-byte ``HEADER`` (layout in ``wire``), a body and a trailer; this module
splits one into bounds-checked views, and builds one from its fields as pieces for a gathered
send. The trailer is a CRC-32 here (``CRC``) or an AEAD tag (``keyed.AeadSeal``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from udpxfer.errors import CorruptPacket, MalformedPacket
from udpxfer.protocol.checksum import crc32
from udpxfer.protocol.wire import (
    CRC_BYTES,
    DATA_ONLY_FLAGS,
    DATA_TYPE,
    ENCRYPTED_FLAG,
    HEADER,
    HEADER_BYTES,
    KEYED_FLAG,
    MAGIC,
    MAX_PN,
    MAX_STAMP_NS,
    TAG_BYTES,
    VERSION,
    PacketType,
)

_CHECK = struct.Struct("!I")  # the keyless trailer: CRC-32 of header and body
_KNOWN_FLAGS = DATA_ONLY_FLAGS | KEYED_FLAG | ENCRYPTED_FLAG
_FIRST_TYPE, _LAST_TYPE = int(PacketType.META), int(PacketType.HAVE)


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
        return 0 if self.ptype == DATA_TYPE else 1


class Seal:
    """How a datagram's trailer is made and checked: CRC-32 here, an AEAD in ``keyed``.

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
    return [header, *seal.seal(0 if ptype == DATA_TYPE else 1, pn, header, body)]


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
    pieces = frame_pieces(
        DATA_TYPE, flags, min(pass_no, 255), session, index, tx, sent_ns, payload, seal
    )
    return b"".join(pieces)


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
    if ptype != DATA_TYPE and (flags & DATA_ONLY_FLAGS or pass_no):
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
