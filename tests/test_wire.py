"""Wire format v2: one table of (packet, bytes) checked both ways, fields at their bounds, keyed
seals, and hostile input (h11's SIMPLE_CASES and fuzzing style)."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from fuzzing import frame
from hypothesis import given, settings
from hypothesis import strategies as st

from udpxfer.errors import AuthenticationFailed, CorruptPacket, MalformedPacket
from udpxfer.protocol.bodies import MAX_RANGES
from udpxfer.protocol.codec import decode_untrusted, encode
from udpxfer.protocol.framing import Seal, encode_data, parse_header_untrusted
from udpxfer.protocol.keyed import AeadSeal, session_seals
from udpxfer.protocol.keys import Direction, PacketProtection
from udpxfer.protocol.wire import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_KEYED_CHUNK_BYTES,
    HEADER_BYTES,
    MANIFEST_HASHES,
    MAX_BLOCKS,
    MAX_CHUNK_BYTES,
    MAX_NAME_BYTES,
    MAX_PN,
    MAX_REASON_BYTES,
    MAX_STAMP_NS,
    PATH_DATAGRAM_BYTES,
    Abort,
    AbortCode,
    Data,
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
    chunk_count_for,
)

# The layout of docs/PROTOCOL.md: header "!4sBBBBQQQQ" (magic, version, type, flags, pass,
# session, seq, pn, sent_ns), the body, then CRC-32 of all bytes before it (fuzzing.frame).
META = "!QIQI32sQB16s16sH"  # size, chunk size, chunk count, block chunks, sha256, mtime, mode,
# nonce, token, name length; then the name
SHA = bytes(range(32))
NONCE = bytes(range(100, 116))
TOKEN = bytes(range(200, 216))
TOP = (1 << 64) - 1


def meta_body(
    size: int, chunk: int, count: int, name: bytes, *, blocks: int = 0, mode: int = 0, **kw: int
) -> bytes:
    mtime = kw.get("mtime", 0)
    fields = (
        size,
        chunk,
        count,
        blocks,
        SHA,
        mtime,
        mode,
        NONCE,
        TOKEN,
        kw.get("length", len(name)),
    )
    return struct.pack(META, *fields) + name


def ranges_body(echo: int, kind: int, ranges: list[tuple[int, int]], count: int = -1) -> bytes:
    head = struct.pack("!QBH", echo, kind, len(ranges) if count < 0 else count)
    return head + b"".join(struct.pack("!QQ", first, last) for first, last in ranges)


CASES: list[tuple[Packet, bytes]] = [
    (
        Meta(7, "a.txt", 10, 4, 3, SHA, Mode.BLAST, 2, 99, 0, 5, NONCE, TOKEN, 11),
        frame(1, 7, meta_body(10, 4, 3, b"a.txt", mode=1, mtime=5), seq=2, pn=11, sent_ns=99),
    ),
    (
        Meta(1, "é/../\0", 0, 1400, 0, SHA, Mode.RELIABLE, 0, 0, 0, 0, NONCE, TOKEN, 0),
        frame(1, 1, meta_body(0, 1400, 0, "é/../\0".encode())),
    ),
    (
        Meta(
            2,
            "big",
            1 << 40,
            1400,
            chunk_count_for(1 << 40, 1400),
            SHA,
            Mode.RELIABLE,
            block_chunks=1 << 19,
            mtime_ns=MAX_STAMP_NS,
            nonce=NONCE,
            token=TOKEN,
            pn=MAX_PN,
        ),
        frame(
            1,
            2,
            meta_body(
                1 << 40,
                1400,
                chunk_count_for(1 << 40, 1400),
                b"big",
                blocks=1 << 19,
                mtime=MAX_STAMP_NS,
            ),
            pn=MAX_PN,
        ),
    ),
    (
        Data(2, 5, 9, b"payload", 1, int(Flags.RESENT), 123),
        frame(2, 2, b"payload", flags=1, pass_no=1, seq=5, pn=9, sent_ns=123),
    ),
    (
        Data(TOP, TOP, MAX_PN, b"", 255, int(Flags.ACK_REQUESTED), MAX_STAMP_NS),
        frame(2, TOP, b"", flags=2, pass_no=255, seq=TOP, pn=MAX_PN, sent_ns=MAX_STAMP_NS),
    ),
    (
        End(3, 4, 100, 140, 5, 6),
        frame(3, 3, struct.pack("!QQ", 100, 140), seq=4, pn=6, sent_ns=5),
    ),
    (
        Status(4, 11, -1, 0, 64, 12, 99, 7, 8),
        frame(4, 4, struct.pack("!QqQIQI", 11, -1, 0, 64, 99, 7), pn=8, sent_ns=12),
    ),
    (
        Status(4, MAX_STAMP_NS, MAX_PN, TOP, 0xFFFFFFFF, 0, TOP, 0xFFFFFFFF, 1),
        frame(
            4, 4, struct.pack("!QqQIQI", MAX_STAMP_NS, MAX_PN, TOP, 2**32 - 1, TOP, 2**32 - 1), pn=1
        ),
    ),
    (
        Nack(5, 2, 77, ((1, 3), (9, 9)), 8, RangeKind.CHUNKS, 3),
        frame(5, 5, ranges_body(77, 0, [(1, 3), (9, 9)]), seq=2, pn=3, sent_ns=8),
    ),
    (
        Nack(5, 0, 0, ((0, TOP),), 0, RangeKind.BLOCKS, 1),
        frame(5, 5, ranges_body(0, 1, [(0, TOP)]), pn=1),
    ),
    (
        Have(6, ((0, 9), (20, 29)), 4, 5, 6),
        frame(10, 6, ranges_body(4, 0, [(0, 9), (20, 29)]), pn=6, sent_ns=5),
    ),
    (
        Done(6, Verdict.MISMATCH, 3, SHA, 4, 5, 6),
        frame(6, 6, struct.pack("!QBQ32s", 4, 1, 3, SHA), pn=6, sent_ns=5),
    ),
    (
        Abort(7, AbortCode.BUSY, "receiver busy", 6, 42, 9),
        frame(7, 7, struct.pack("!BQH", 5, 42, 13) + b"receiver busy", pn=9, sent_ns=6),
    ),
    (
        Hello(8, HelloFlags.RETRY, 31, token=TOKEN, sent_ns=32, pn=1),
        frame(8, 8, struct.pack("!QBIQ16s16s", 31, 1, 0, 0, TOKEN, bytes(16)), pn=1, sent_ns=32),
    ),
    (
        Hello(8, HelloFlags.ACCEPTED | HelloFlags.RESUMING, 31, 512, 77, nonce=NONCE, pn=2),
        frame(8, 8, struct.pack("!QBIQ16s16s", 31, 6, 512, 77, bytes(16), NONCE), pn=2),
    ),
    (
        Manifest(9, 3, (SHA, bytes(32)), 10, 11),
        frame(9, 9, SHA + bytes(32), seq=3, pn=11, sent_ns=10),
    ),
]
CASE_IDS = [f"{PacketType(datagram[5]).name}-{i}" for i, (_, datagram) in enumerate(CASES)]


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


def test_the_table_covers_every_packet_type() -> None:
    assert {PacketType(datagram[5]) for _, datagram in CASES} == set(PacketType)


@pytest.mark.parametrize(("packet", "datagram"), CASES, ids=CASE_IDS)
def test_encode_matches_the_documented_layout(packet: Packet, datagram: bytes) -> None:
    assert encode(packet) == datagram


@pytest.mark.parametrize(("packet", "datagram"), CASES, ids=CASE_IDS)
def test_decode_reads_the_documented_layout(packet: Packet, datagram: bytes) -> None:
    assert normalised(decode_untrusted(datagram)) == packet
    assert normalised(decode_untrusted(bytearray(datagram))) == packet
    assert normalised(decode_untrusted(memoryview(datagram))) == packet


@pytest.mark.parametrize(("packet", "datagram"), CASES, ids=CASE_IDS)
def test_every_truncation_is_malformed(packet: Packet, datagram: bytes) -> None:
    for n in range(len(datagram)):
        with pytest.raises(MalformedPacket):
            decode_untrusted(datagram[:n])


@pytest.mark.parametrize(("packet", "datagram"), CASES, ids=CASE_IDS)
def test_every_single_bit_flip_is_malformed(packet: Packet, datagram: bytes) -> None:
    for bit in range(len(datagram) * 8):
        mutated = bytearray(datagram)
        mutated[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(MalformedPacket):
            decode_untrusted(bytes(mutated))


def test_encode_data_matches_encode() -> None:
    packet = Data(3, 4, 5, b"abc", 2, int(Flags.RESENT | Flags.ACK_REQUESTED), 6)
    assert encode_data(3, 4, 5, b"abc", pass_no=2, flags=3, sent_ns=6) == encode(packet)
    # The repair round saturates at 255 rather than failing to pack.
    assert decode_untrusted(encode_data(3, 4, 5, b"", pass_no=1000)).pass_no == 255  # type: ignore[union-attr]


def test_a_corrupt_datagram_names_its_session() -> None:
    datagram = bytearray(encode(Data(42, 1, 1, b"abc")))
    datagram[-1] ^= 0xFF
    with pytest.raises(CorruptPacket, match="integrity check failed") as info:
        decode_untrusted(bytes(datagram))
    assert info.value.session == 42


def test_the_check_covers_one_contiguous_span() -> None:
    """The trailer is the CRC of every byte before it: a numpy view can check it in bulk."""
    header = parse_header_untrusted(encode(End(1, 2, 3, 4, 5, 6)))
    assert bytes(header.prefix) + bytes(header.trailer) == bytes(header.raw)
    assert len(header.trailer) == 4
    assert bytes(header.body) == struct.pack("!QQ", 3, 4)
    assert (header.space, header.keyed) == (1, False)
    assert parse_header_untrusted(encode(Data(1, 2, 3, b"x"))).space == 0


def test_header_sizes_fit_an_ipv6_ethernet_payload() -> None:
    assert HEADER_BYTES == 40
    assert len(encode_data(1, 0, 0, bytes(DEFAULT_CHUNK_BYTES))) == 1444
    keyed = seals(encrypt=True)[0]
    keyed_data = encode_data(1, 0, 0, bytes(DEFAULT_KEYED_CHUNK_BYTES), seal=keyed)
    assert len(keyed_data) == 1448
    ranges = tuple((i * 2, i * 2) for i in range(MAX_RANGES))
    assert len(encode(Nack(1, 0, 0, ranges, pn=1), keyed)) <= PATH_DATAGRAM_BYTES
    assert len(encode(Manifest(1, 0, (SHA,) * MANIFEST_HASHES, pn=2), keyed)) <= PATH_DATAGRAM_BYTES


# -- fields at their bounds -------------------------------------------------------------------

END_BODY = struct.pack("!QQ", 1, 1)


def illegal(datagram: bytes, message: str) -> tuple[bytes, str]:
    return datagram, message


ILLEGAL = {
    # header
    "pn above 2^62-1 (DATA)": illegal(frame(2, 1, b"x", pn=MAX_PN + 1), "packet number"),
    "pn 2^64-1 (END)": illegal(frame(3, 1, END_BODY, pn=TOP), "packet number"),
    "sent_ns 2^63": illegal(frame(2, 1, b"x", sent_ns=1 << 63), "send stamp"),
    "sent_ns 2^64-1": illegal(frame(4, 1, bytes(40), sent_ns=TOP), "send stamp"),
    "unknown flag 0x10": illegal(frame(2, 1, b"x", flags=0x10), "unknown flags"),
    "unknown flag 0x80": illegal(frame(3, 1, END_BODY, flags=0x80), "unknown flags"),
    "ENCRYPTED without KEYED": illegal(frame(2, 1, b"x", flags=0x08), "ENCRYPTED without KEYED"),
    "RESENT on END": illegal(frame(3, 1, END_BODY, flags=1), "data-only"),
    "ACK_REQUESTED on NACK": illegal(frame(5, 1, ranges_body(0, 0, []), flags=2), "data-only"),
    "pass on HELLO": illegal(frame(8, 1, bytes(53), pass_no=1), "data-only"),
    "type 0": illegal(frame(0, 1, b""), "unknown packet type"),
    "type 11": illegal(frame(11, 1, b""), "unknown packet type"),
    "type 255": illegal(frame(255, 1, b""), "unknown packet type"),
    "version 1": illegal(frame(2, 1, b"x", version=1), "unsupported protocol version"),
    "version 3": illegal(frame(2, 1, b"x", version=3), "unsupported protocol version"),
    "foreign magic": illegal(b"XXXX" + frame(2, 1, b"x")[4:], "bad magic"),
    "keyed, no key": illegal(frame(2, 1, bytes(16), flags=0x04), "no key"),
    # bodies: enums
    "META mode 2": illegal(frame(1, 1, meta_body(1, 1, 1, b"n", mode=2)), "META mode"),
    "DONE verdict 3": illegal(frame(6, 1, struct.pack("!QBQ32s", 0, 3, 0, SHA)), "verdict"),
    "ABORT code 0": illegal(frame(7, 1, struct.pack("!BQH", 0, 0, 0)), "ABORT code"),
    "ABORT code 7": illegal(frame(7, 1, struct.pack("!BQH", 7, 0, 0)), "ABORT code"),
    "NACK kind 2": illegal(frame(5, 1, ranges_body(0, 2, [(0, 0)])), "range kind"),
    "HAVE of blocks": illegal(frame(10, 1, ranges_body(0, 1, [(0, 0)])), "chunks only"),
    "HELLO flag 0x40": illegal(
        frame(8, 1, struct.pack("!QBIQ16s16s", 0, 0x40, 0, 0, TOKEN, NONCE)), "HELLO unknown"
    ),
    # bodies: ranges
    "NACK first > last": illegal(frame(5, 1, ranges_body(0, 0, [(5, 4)])), "first > last"),
    "HAVE first > last": illegal(frame(10, 1, ranges_body(0, 0, [(TOP, 0)])), "first > last"),
    "NACK too many ranges": illegal(
        frame(5, 1, ranges_body(0, 0, [(0, 0)] * (MAX_RANGES + 1))), "ranges"
    ),
    "NACK count larger than body": illegal(
        frame(5, 1, ranges_body(0, 0, [(0, 0)], count=2)), "expected"
    ),
    "NACK count smaller than body": illegal(
        frame(5, 1, ranges_body(0, 0, [(0, 0), (2, 2)], count=1)), "expected"
    ),
    # bodies: META
    "META name too long": illegal(
        frame(1, 1, meta_body(1, 1, 1, b"n" * (MAX_NAME_BYTES + 1))), "too long"
    ),
    "META name of 4 KB": illegal(frame(1, 1, meta_body(1, 1, 1, b"../" * 1365)), "too long"),
    "META chunk count too small": illegal(
        frame(1, 1, meta_body(10, 4, 2, b"n")), "chunk count does not match"
    ),
    "META chunk count 2^64-1": illegal(
        frame(1, 1, meta_body(10, 4, TOP, b"n")), "chunk count does not match"
    ),
    "META chunk size 0": illegal(frame(1, 1, meta_body(10, 0, 0, b"n")), "chunk size"),
    "META chunk size too big": illegal(
        frame(1, 1, meta_body(1, MAX_CHUNK_BYTES + 1, 1, b"n")), "chunk size"
    ),
    "META too many blocks": illegal(
        frame(1, 1, meta_body(MAX_BLOCKS + 1, 1, MAX_BLOCKS + 1, b"n", blocks=1)), "too many"
    ),
    "META mtime 2^63": illegal(
        frame(1, 1, meta_body(1, 1, 1, b"n", mtime=1 << 63)), "modification time"
    ),
    "META name not UTF-8": illegal(frame(1, 1, meta_body(1, 1, 1, b"\xff\xfe")), "UTF-8"),
    "META name shorter than said": illegal(
        frame(1, 1, meta_body(1, 1, 1, b"ab", length=3)), "expected"
    ),
    "META name longer than said": illegal(
        frame(1, 1, meta_body(1, 1, 1, b"ab", length=1)), "expected"
    ),
    "META truncated body": illegal(frame(1, 1, meta_body(1, 1, 1, b"")[:-1]), "truncated"),
    # bodies: the rest
    "END with a trailing byte": illegal(frame(3, 1, END_BODY + b"\0"), "expected"),
    "STATUS highest tx -2": illegal(
        frame(4, 1, struct.pack("!QqQIQI", 0, -2, 0, 0, 0, 0)), "out of range"
    ),
    "STATUS highest tx 2^62": illegal(
        frame(4, 1, struct.pack("!QqQIQI", 0, MAX_PN + 1, 0, 0, 0, 0)), "out of range"
    ),
    "STATUS echo 2^63": illegal(
        frame(4, 1, struct.pack("!QqQIQI", 1 << 63, 0, 0, 0, 0, 0)), "out of range"
    ),
    "ABORT reason too long": illegal(
        frame(7, 1, struct.pack("!BQH", 1, 0, MAX_REASON_BYTES + 1) + b"r" * 513), "too long"
    ),
    "ABORT reason not UTF-8": illegal(frame(7, 1, struct.pack("!BQH", 1, 0, 1) + b"\xff"), "UTF-8"),
    "DONE short": illegal(frame(6, 1, struct.pack("!QBQ32s", 0, 0, 0, SHA)[:-1]), "expected"),
    "HELLO short": illegal(frame(8, 1, bytes(52)), "expected"),
    "MANIFEST empty": illegal(frame(9, 1, b""), "MANIFEST body"),
    "MANIFEST not whole hashes": illegal(frame(9, 1, SHA + b"x"), "MANIFEST body"),
    "MANIFEST too many hashes": illegal(frame(9, 1, SHA * (MANIFEST_HASHES + 1)), "MANIFEST body"),
    "MANIFEST first block too far": illegal(frame(9, 1, SHA, seq=MAX_BLOCKS), "first block"),
    "shorter than header and check": illegal(frame(2, 1, b"")[:-1], "shorter"),
    "keyed, shorter than header and tag": illegal(
        frame(2, 1, bytes(8), flags=0x04), "shorter than header and tag"
    ),
}


@pytest.mark.parametrize(("datagram", "message"), ILLEGAL.values(), ids=ILLEGAL.keys())
def test_illegal_datagrams_are_malformed(datagram: bytes, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message):
        decode_untrusted(datagram)


@pytest.mark.parametrize(
    "datagram",
    [
        frame(2, 1, b"x", pn=MAX_PN, sent_ns=MAX_STAMP_NS),
        frame(1, 1, meta_body(1, 1, 1, b"n" * MAX_NAME_BYTES)),
        frame(1, 1, meta_body(1, MAX_CHUNK_BYTES, 1, b"n")),
        frame(1, 1, meta_body(MAX_BLOCKS, 1, MAX_BLOCKS, b"n", blocks=1)),
        frame(5, 1, ranges_body(0, 0, [(0, TOP)] * MAX_RANGES)),
        frame(7, 1, struct.pack("!BQH", 1, TOP, MAX_REASON_BYTES) + b"r" * MAX_REASON_BYTES),
        frame(9, 1, SHA * MANIFEST_HASHES, seq=MAX_BLOCKS - 1),
    ],
    ids=["pn-and-stamp", "name", "chunk-size", "blocks", "ranges", "reason", "manifest"],
)
def test_the_largest_legal_values_decode_and_round_trip(datagram: bytes) -> None:
    assert encode(decode_untrusted(datagram)) == datagram


def test_an_abort_reason_is_cut_on_a_character_boundary() -> None:
    packet = decode_untrusted(encode(Abort(1, AbortCode.PROTOCOL, "é" * 400)))
    assert isinstance(packet, Abort)
    assert packet.reason == "é" * (MAX_REASON_BYTES // 2)


# -- keyed seals ------------------------------------------------------------------------------

PSK = bytes(range(32))
SENDER_NONCE = bytes(16)
RECEIVER_NONCE = bytes([1]) * 16


def seals(*, encrypt: bool, psk: bytes = PSK) -> tuple[Seal, Seal]:
    """(sender's, receiver's) session seals of one keyed transfer."""
    _, sender = session_seals(
        psk, 1, SENDER_NONCE, RECEIVER_NONCE, Direction.TO_RECEIVER, encrypt=encrypt
    )
    _, receiver = session_seals(
        psk, 1, SENDER_NONCE, RECEIVER_NONCE, Direction.TO_SENDER, encrypt=encrypt
    )
    return sender, receiver


@pytest.mark.parametrize("encrypt", [True, False], ids=["encrypted", "tag-only"])
@pytest.mark.parametrize(("packet", "datagram"), CASES, ids=CASE_IDS)
def test_keyed_round_trip_and_a_bit_flip_fails_authentication(
    packet: Packet, datagram: bytes, encrypt: bool
) -> None:
    sender, receiver = seals(encrypt=encrypt)
    sealed = encode(packet, sender)
    header = parse_header_untrusted(sealed)
    assert header.keyed
    assert bool(header.flags & Flags.ENCRYPTED) == encrypt
    assert len(sealed) == len(datagram) - 4 + 16  # the CRC's place holds a 16-byte tag
    # Every flipped bit of body or tag is refused as unauthenticated; a flip in the header
    # (the associated data) too, unless the header itself no longer parses.
    for bit in range(len(sealed) * 8):
        mutated = bytearray(sealed)
        mutated[bit // 8] ^= 1 << (bit % 8)
        expected = AuthenticationFailed if bit >= HEADER_BYTES * 8 else MalformedPacket
        with pytest.raises(expected):
            decode_untrusted(bytes(mutated), receiver)
    assert normalised(decode_untrusted(sealed, receiver)) == packet
    if header.space:  # control datagrams are numbered: a replay is refused
        with pytest.raises(AuthenticationFailed, match="replayed"):
            decode_untrusted(sealed, receiver)
    else:  # data is idempotent: a repeat is a duplicate, not an attack
        assert normalised(decode_untrusted(sealed, receiver)) == packet


def test_an_encrypted_body_is_not_in_clear() -> None:
    sender, _ = seals(encrypt=True)
    payload = b"secret payload " * 10
    assert payload not in encode_data(1, 0, 0, payload, seal=sender)
    tag_only, _ = seals(encrypt=False)
    assert payload in encode_data(1, 0, 0, payload, seal=tag_only)


@pytest.mark.parametrize(
    ("make", "opener"),
    [
        (lambda: seals(encrypt=True)[0], lambda: seals(encrypt=True, psk=bytes(32))[1]),
        (lambda: seals(encrypt=True)[0], lambda: seals(encrypt=True)[0]),  # own direction
        (
            lambda: seals(encrypt=True)[0],
            lambda: AeadSeal(
                PacketProtection.handshake(PSK, 1, SENDER_NONCE), Direction.TO_SENDER, encrypt=True
            ),
        ),  # another stage
        (lambda: Seal(), lambda: seals(encrypt=True)[1]),  # keyless into a keyed session
    ],
    ids=["wrong-key", "wrong-direction", "handshake-keys", "no-tag"],
)
def test_a_datagram_under_other_keys_fails_authentication(
    make: Callable[[], Seal], opener: Callable[[], Seal]
) -> None:
    datagram = encode(End(1, 0, 1, 1, 5, 6), make())
    with pytest.raises(AuthenticationFailed):
        decode_untrusted(datagram, opener())


def test_a_keyed_datagram_without_a_key_is_corrupt_not_fatal() -> None:
    datagram = encode(End(9, 0, 1, 1, 5, 6), seals(encrypt=False)[0])
    with pytest.raises(CorruptPacket, match="no key") as info:
        decode_untrusted(datagram)
    assert info.value.session == 9


# -- properties -------------------------------------------------------------------------------


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_only_malformed(data: bytes) -> None:
    try:
        packet = decode_untrusted(data)
    except MalformedPacket:
        return
    assert encode(packet) == data  # anything accepted is in canonical form


@settings(max_examples=800, deadline=None)
@given(
    st.integers(0, 12),
    st.integers(0, 255),
    st.sampled_from([0, 0, 1, 255]),
    st.integers(0, TOP),
    st.integers(0, TOP),
    st.binary(max_size=160),
)
def test_well_framed_random_bodies_decode_or_raise_only_malformed(
    ptype: int, flags: int, pass_no: int, seq: int, pn: int, body: bytes
) -> None:
    datagram = frame(ptype, 1, body, flags=flags, pass_no=pass_no, seq=seq, pn=pn, sent_ns=pn >> 1)
    try:
        packet = decode_untrusted(datagram)
    except MalformedPacket:
        return
    assert encode(packet) == datagram


names = st.text(max_size=300).filter(lambda s: len(s.encode("utf-8")) <= MAX_NAME_BYTES)


@settings(max_examples=300, deadline=None)
@given(names, st.integers(0, 1 << 40), st.integers(1, MAX_CHUNK_BYTES), st.sampled_from(Mode))
def test_meta_round_trips(name: str, size: int, chunk: int, mode: Mode) -> None:
    count = chunk_count_for(size, chunk)
    blocks = max(1, -(-count // MAX_BLOCKS))
    meta = Meta(3, name, size, chunk, count, SHA, mode, 1, 2, blocks, 3, NONCE, TOKEN, 4)
    assert decode_untrusted(encode(meta)) == meta


ranges = st.lists(
    st.tuples(st.integers(0, TOP), st.integers(0, TOP)).map(lambda r: (min(r), max(r))),
    max_size=MAX_RANGES,
).map(tuple)


@settings(max_examples=100, deadline=None)
@given(ranges, st.integers(0, TOP), st.sampled_from(RangeKind))
def test_nack_and_have_round_trip(spans: tuple[tuple[int, int], ...], round_no: int,
                                  kind: RangeKind) -> None:  # fmt: skip
    nack = Nack(1, round_no, 5, spans, 6, kind, 7)
    assert decode_untrusted(encode(nack)) == nack
    have = Have(1, spans, 5, 6, 7)
    assert decode_untrusted(encode(have)) == have
