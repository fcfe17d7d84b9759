"""The receiver endpoint's stateless handshake: address tokens, keyed METAs, early HELLOs.

A META's tag is checked in keyed mode, and the HELLOs sent before any session exists (RETRY,
key notices) are built here, as are a new session's seals. Nothing here keeps state per
source: a token is checked against the secret it was minted with (QUIC's Retry, RFC 9000
section 8.1), a HELLO is built and handed back to be sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from udpxfer.errors import AuthenticationFailed, MalformedPacket
from udpxfer.protocol.bodies import meta_nonce_untrusted
from udpxfer.protocol.codec import decode_header_untrusted, encode
from udpxfer.protocol.framing import CRC, Header, Seal
from udpxfer.protocol.receiver_core import Peer, ns
from udpxfer.protocol.wire import (
    Hello,
    HelloFlags,
    Meta,
)


@dataclass(frozen=True, slots=True)
class Keying:
    """What keyed mode needs on the receiver: the pre-shared key, and whether to encrypt."""

    psk: bytes
    encrypt: bool = True


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """A datagram from ``peer`` failed authentication (or a key mismatch): for the log."""

    peer: Peer
    reason: str


@dataclass(frozen=True, slots=True)
class KeyProblem:
    """A META that keyed mode turns away: the log's ``reason``, the HELLO's ``flag``."""

    reason: str
    flag: HelloFlags


class Handshake:
    """Tokens minted under ``token_secret``; with ``psk``, the keys of keyed mode (sessions
    ``encrypt`` their payloads, or only authenticate them)."""

    def __init__(self, token_secret: bytes, psk: bytes | None = None, encrypt: bool = True) -> None:
        from udpxfer.protocol.keys import TokenMinter

        self._minter = TokenMinter(token_secret)
        self._psk = psk
        self._encrypt = encrypt

    def open_meta(self, header: Header) -> Meta | KeyProblem | None:
        """Check a META's tag (keyed) and decode it: the META, the key problem that turns it
        away, or None when it does not decode."""
        psk = self._psk
        seal: Seal = CRC
        if psk is not None:
            if not header.keyed:
                return KeyProblem(
                    "the sender has no key; this receiver needs one", HelloFlags.NEED_KEY
                )
            try:
                nonce = meta_nonce_untrusted(header)
            except MalformedPacket:
                return None
            seal = self._handshake_seal(header.session, nonce)
        elif header.keyed:
            return KeyProblem("the sender uses a key; this receiver has none", HelloFlags.NO_KEY)
        try:
            packet = decode_header_untrusted(header, seal)
        except AuthenticationFailed:
            return KeyProblem("authentication failed (wrong key?)", HelloFlags.AUTH_FAILED)
        except MalformedPacket:
            return None
        assert isinstance(packet, Meta)
        return packet

    def token_valid(self, meta: Meta, peer: Peer, now: float) -> bool:
        """``meta`` echoes a token this receiver minted for ``peer`` lately."""
        from udpxfer.protocol.keys import address_bytes

        if not any(meta.token):
            return False
        return self._minter.valid(meta.token, address_bytes(peer), meta.session, now)  # type: ignore[arg-type]

    def retry(self, peer: Peer, meta: Meta, now: float, pn: int) -> bytes:
        """HELLO(RETRY) with a fresh token for ``peer``, sealed as the sender expects it."""
        from udpxfer.protocol.keys import address_bytes

        token = self._minter.mint(address_bytes(peer), meta.session, now)  # type: ignore[arg-type]
        seal: Seal = CRC
        if self._psk is not None:
            seal = self._handshake_seal(meta.session, meta.nonce)
        hello = Hello(
            meta.session, HelloFlags.RETRY, meta.sent_ns, token=token, sent_ns=ns(now), pn=pn
        )
        return encode(hello, seal)

    @staticmethod
    def notice(header: Header, flag: HelloFlags, pn: int) -> bytes:
        """An unauthenticated HELLO telling the sender of ``header`` that keys do not match."""
        return encode(Hello(header.session, flag, header.sent_ns, pn=pn))

    def session_seals(self, meta: Meta, nonce: bytes) -> tuple[Seal, Seal]:
        """The (handshake, session) seals of a new session whose own nonce is ``nonce``: its
        HELLO goes under the first, everything after under the second (CRC without a key)."""
        if self._psk is None:
            return CRC, CRC
        from udpxfer.protocol.keyed import session_seals
        from udpxfer.protocol.keys import Direction

        return session_seals(
            self._psk, meta.session, meta.nonce, nonce, Direction.TO_SENDER, encrypt=self._encrypt
        )

    def _handshake_seal(self, session: int, sender_nonce: bytes) -> Seal:
        from udpxfer.protocol.keyed import AeadSeal
        from udpxfer.protocol.keys import Direction, PacketProtection

        assert self._psk is not None
        return AeadSeal(
            PacketProtection.handshake(self._psk, session, sender_nonce),
            Direction.TO_SENDER,
            encrypt=False,
        )
