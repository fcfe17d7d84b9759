"""Any packet to one datagram and back: ``encode`` and ``decode_untrusted``."""

from __future__ import annotations

from udpxfer.protocol.bodies import decode_body_untrusted, encode_body
from udpxfer.protocol.framing import (
    CRC,
    Header,
    Seal,
    encode_data,
    frame_pieces,
    parse_header_untrusted,
)
from udpxfer.protocol.wire import DATA_ONLY_FLAGS, DATA_TYPE, Data, Packet


def encode(packet: Packet, seal: Seal = CRC) -> bytes:
    """Encode any packet into one datagram."""
    if isinstance(packet, Data):
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
    ptype, seq, body = encode_body(packet)
    pieces = frame_pieces(ptype, 0, 0, packet.session, seq, packet.pn, packet.sent_ns, body, seal)
    return b"".join(pieces)


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
    if header.ptype == DATA_TYPE:
        return Data(
            header.session,
            header.seq,
            header.pn,
            body,
            header.pass_no,
            header.flags & DATA_ONLY_FLAGS,
            header.sent_ns,
        )
    return decode_body_untrusted(header, body)
