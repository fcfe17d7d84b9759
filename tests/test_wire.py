"""Wire format: one table of (packet, bytes) checked both ways, and hostile input."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udpxfer.errors import MalformedPacket
from udpxfer.wire import (
    HEADER_BYTES,
    MAX_NACK_RANGES,
    Abort,
    AbortCode,
    CorruptPacket,
    Data,
    Done,
    End,
    Flags,
    Meta,
    Mode,
    Nack,
    Packet,
    Status,
    Verdict,
    chunk_count_for,
    decode_untrusted,
    encode,
)


def frame(ptype: int, flags: int, pass_no: int, session: int, seq: int, tx: int, sent: int,
          body: bytes) -> bytes:  # fmt: skip
    """Build a datagram by hand from the layout in docs/PROTOCOL.md (independent of encode)."""
    prefix = b"UDPX" + struct.pack("!BBBBQQQQ", 1, ptype, flags, pass_no, session, seq, tx, sent)
    return prefix + struct.pack("!I", zlib.crc32(body, zlib.crc32(prefix))) + body


SHA = bytes(range(32))
CASES: list[tuple[Packet, bytes]] = [
    (
        Meta(7, "a.txt", 10, 4, 3, SHA, Mode.BLAST, 2, 99),
        frame(1, 0, 0, 7, 2, 0, 99, struct.pack("!QIQ32sBH", 10, 4, 3, SHA, 1, 5) + b"a.txt"),
    ),
    (
        Meta(1, "é", 0, 1400, 0, SHA, Mode.RELIABLE, 0, 0),
        frame(1, 0, 0, 1, 0, 0, 0, struct.pack("!QIQ32sBH", 0, 1400, 0, SHA, 0, 2) + "é".encode()),
    ),
    (
        Data(2, 5, 9, b"payload", 1, int(Flags.RESENT), 123),
        frame(2, 1, 1, 2, 5, 9, 123, b"payload"),
    ),
    (
        Data(2, 0, 0, b"", 0, int(Flags.ACK_REQUESTED), 1),
        frame(2, 2, 0, 2, 0, 0, 1, b""),
    ),
    (End(3, 4, 100, 140, 5), frame(3, 0, 0, 3, 4, 0, 5, struct.pack("!QQ", 100, 140))),
    (
        Status(4, 11, -1, 0, 64, 12, 99, 7),
        frame(4, 0, 0, 4, 0, 0, 12, struct.pack("!QqQIQI", 11, -1, 0, 64, 99, 7)),
    ),
    (
        Nack(5, 2, 77, ((1, 3), (9, 9)), 8),
        frame(5, 0, 0, 5, 2, 0, 8, struct.pack("!QHQQQQ", 77, 2, 1, 3, 9, 9)),
    ),
    (
        Done(6, Verdict.MISMATCH, 3, SHA, 4, 5),
        frame(6, 0, 0, 6, 0, 0, 5, struct.pack("!QBQ32s", 4, 1, 3, SHA)),
    ),
    (
        Abort(7, AbortCode.TIMEOUT, "bye", 6),
        frame(7, 0, 0, 7, 0, 0, 6, struct.pack("!BH", 4, 3) + b"bye"),
    ),
]


def normalised(packet: Packet) -> Packet:
    """Data payloads decode as views; compare them as bytes."""
    if isinstance(packet, Data):
        return Data(
            packet.session,
            packet.index,
            packet.tx,
            bytes(packet.payload),
            packet.pass_no,
            int(packet.flags),
            packet.sent_ns,
        )
    return packet


@pytest.mark.parametrize(("packet", "datagram"), CASES)
def test_encode_matches_the_documented_layout(packet: Packet, datagram: bytes) -> None:
    assert encode(packet) == datagram


@pytest.mark.parametrize(("packet", "datagram"), CASES)
def test_decode_reads_the_documented_layout(packet: Packet, datagram: bytes) -> None:
    assert normalised(decode_untrusted(datagram)) == packet


@pytest.mark.parametrize(("packet", "datagram"), CASES)
def test_every_truncation_is_malformed(packet: Packet, datagram: bytes) -> None:
    for n in range(len(datagram)):
        with pytest.raises(MalformedPacket):
            decode_untrusted(datagram[:n])


@pytest.mark.parametrize(("packet", "datagram"), CASES)
def test_every_single_bit_flip_is_malformed(packet: Packet, datagram: bytes) -> None:
    for bit in range(len(datagram) * 8):
        mutated = bytearray(datagram)
        mutated[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(MalformedPacket):
            decode_untrusted(bytes(mutated))


def test_a_corrupt_datagram_names_its_session() -> None:
    datagram = bytearray(encode(Data(42, 1, 1, b"abc")))
    datagram[-1] ^= 0xFF
    with pytest.raises(CorruptPacket) as info:
        decode_untrusted(bytes(datagram))
    assert info.value.session == 42


def test_header_is_44_bytes_and_a_nack_fits_an_ipv6_ethernet_payload() -> None:
    assert HEADER_BYTES == 44
    ranges = tuple((i * 2, i * 2) for i in range(MAX_NACK_RANGES))
    assert len(encode(Nack(1, 0, 0, ranges))) <= 1452


@pytest.mark.parametrize(
    ("body_fix", "message"),
    [
        (lambda b: b[:-1], "expected"),  # name shorter than announced
        (lambda b: b + b"x", "expected"),  # trailing byte
    ],
)
def test_meta_length_must_be_exact(body_fix: object, message: str) -> None:
    body = struct.pack("!QIQ32sBH", 10, 4, 3, SHA, 1, 5) + b"a.txt"
    fix = body_fix  # type: ignore[assignment]
    with pytest.raises(MalformedPacket, match=message):
        decode_untrusted(frame(1, 0, 0, 7, 0, 0, 0, fix(body)))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("size", "chunk", "count", "mode"),
    [(10, 4, 2, 0), (10, 0, 0, 0), (10, 4, 3, 9), (1, 70000, 1, 0)],
)
def test_meta_with_inconsistent_fields_is_malformed(
    size: int, chunk: int, count: int, mode: int
) -> None:
    body = struct.pack("!QIQ32sBH", size, chunk, count, SHA, mode, 1) + b"n"
    with pytest.raises(MalformedPacket):
        decode_untrusted(frame(1, 0, 0, 7, 0, 0, 0, body))


def test_meta_name_must_be_utf8() -> None:
    body = struct.pack("!QIQ32sBH", 1, 1, 1, SHA, 0, 2) + b"\xff\xfe"
    with pytest.raises(MalformedPacket, match="UTF-8"):
        decode_untrusted(frame(1, 0, 0, 7, 0, 0, 0, body))


@pytest.mark.parametrize(
    "datagram",
    [
        frame(9, 0, 0, 1, 0, 0, 0, b""),  # unknown type
        frame(2, 0x80, 0, 1, 0, 0, 0, b""),  # tagged: no key agreed
        frame(3, 1, 0, 1, 0, 0, 0, struct.pack("!QQ", 1, 1)),  # data flags on END
        frame(5, 0, 0, 1, 0, 0, 0, struct.pack("!QHQQ", 0, 1, 5, 4)),  # first > last
        frame(6, 0, 0, 1, 0, 0, 0, struct.pack("!QBQ32s", 0, 7, 0, SHA)),  # unknown verdict
        frame(7, 0, 0, 1, 0, 0, 0, struct.pack("!BH", 99, 0)),  # unknown abort code
        b"UDPX" + bytes([2]) + bytes(HEADER_BYTES),  # another version
        b"XXXX" + bytes(HEADER_BYTES),  # foreign
    ],
)
def test_illegal_datagrams_are_malformed(datagram: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode_untrusted(datagram)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_only_malformed(data: bytes) -> None:
    try:
        packet = decode_untrusted(data)
    except MalformedPacket:
        return
    assert encode(packet) == data  # anything accepted is in canonical form


@settings(max_examples=2000, deadline=None)
@given(
    st.integers(0, 7),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=120),
)
def test_well_framed_random_bodies_decode_or_raise_only_malformed(
    ptype: int, flags: int, pass_no: int, body: bytes
) -> None:
    try:
        packet = decode_untrusted(frame(ptype, flags, pass_no, 1, 2, 3, 4, body))
    except MalformedPacket:
        return
    assert encode(packet) == frame(ptype, flags, pass_no, 1, 2, 3, 4, body)


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=300),
    st.integers(0, 1 << 40),
    st.integers(1, 65000),
    st.sampled_from(list(Mode)),
)
def test_meta_round_trips(name: str, size: int, chunk: int, mode: Mode) -> None:
    meta = Meta(3, name, size, chunk, chunk_count_for(size, chunk), SHA, mode, 1, 2)
    assert decode_untrusted(encode(meta)) == meta
