"""Keyed datagrams: the wire format's trailer as an AEAD tag (``udpxfer.keys``), with replay
protection for control datagrams.

Data datagrams are not run through the replay window: a repeated data datagram carries
authenticated content, so storing it again changes nothing; it is counted as a duplicate, as a
duplicate from the network would be (docs/SECURITY.md).
"""

from __future__ import annotations

from udpxfer.errors import AuthenticationFailed
from udpxfer.keys import Direction, PacketProtection, ReplayWindow
from udpxfer.wire import ENCRYPTED_FLAG, HEADER_BYTES, TAG_BYTES, Flags, Header, Seal


class AeadSeal(Seal):
    """Seals one side's datagrams and opens the other side's, for one session stage."""

    trailer_bytes = TAG_BYTES

    def __init__(
        self,
        protection: PacketProtection,
        outgoing: Direction,
        *,
        encrypt: bool,
        replay: bool = True,
    ) -> None:
        self._protection = protection
        self._out = outgoing
        self._in = Direction(1 - outgoing)
        self._encrypt = encrypt
        self.flags = int(Flags.KEYED | (Flags.ENCRYPTED if encrypt else Flags.NONE))
        self._replay = ReplayWindow() if replay else None

    def seal(
        self, space: int, pn: int, header: bytes, body: bytes | memoryview
    ) -> list[bytes | memoryview]:
        """The protected body and its tag, after ``header`` (the associated data)."""
        return [self._protection.seal(self._out, space, pn, header, body, encrypt=self._encrypt)]

    def open_untrusted(self, header: Header) -> memoryview:
        """The plain body of an authenticated datagram from the other side.

        Raises:
            AuthenticationFailed: no tag, a bad tag, or a replayed control datagram.
        """
        if not header.keyed:
            raise AuthenticationFailed("datagram without an authentication tag")
        space = header.space
        replay = self._replay if space else None
        if replay is not None and replay.seen_or_stale(header.pn):
            raise AuthenticationFailed("replayed datagram")
        plain = self._protection.open_untrusted(
            self._in,
            space,
            header.pn,
            bytes(header.raw[:HEADER_BYTES]),
            header.raw[HEADER_BYTES:],
            encrypt=bool(header.flags & ENCRYPTED_FLAG),
        )
        if replay is not None:
            replay.mark(header.pn)
        return plain if isinstance(plain, memoryview) else memoryview(plain)


def session_seals(
    psk: bytes,
    session_id: int,
    sender_nonce: bytes,
    receiver_nonce: bytes,
    outgoing: Direction,
    *,
    encrypt: bool,
) -> tuple[AeadSeal, AeadSeal]:
    """The (handshake, session) seals of one side of a keyed transfer."""
    handshake = AeadSeal(
        PacketProtection.handshake(psk, session_id, sender_nonce), outgoing, encrypt=False
    )
    session = AeadSeal(
        PacketProtection.session(psk, session_id, sender_nonce, receiver_nonce),
        outgoing,
        encrypt=encrypt,
    )
    return handshake, session
