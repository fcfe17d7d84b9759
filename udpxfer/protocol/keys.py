"""Keyed mode primitives: per-session AEAD, an anti-replay window, address tokens.

Pure functions and small classes: no sockets, no clocks (``now`` comes in as an argument), no
files and no randomness (keys, nonces and secrets come in as arguments: ``udpxfer.net.keyfile``
reads key files and draws the random bytes). The wire format decides where these bytes go; this
module only protects them.

Key schedule (RFC 5869 HKDF-SHA256, one key and one 12-byte IV per stage and direction)::

    handshake:  HKDF(salt = sender_nonce,
                     ikm  = psk,
                     info = "udpxfer/2 handshake <direction>" || session_id)
    session:    HKDF(salt = sender_nonce || receiver_nonce,
                     ikm  = psk,
                     info = "udpxfer/2 session <direction>" || session_id)

    nonce = IV XOR (space as 4 bytes || pn as 8 bytes)      (as QUIC, RFC 9001 section 5.3)
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from udpxfer.errors import AuthenticationFailed

KEY_BYTES = 32  # pre-shared key and per-direction AEAD keys (AES-256)
TAG_BYTES = 16  # AEAD tag appended to every protected body
NONCE_BYTES = 16  # session nonces chosen by each side
TOKEN_BYTES = 16  # address-validation tokens (truncated HMAC-SHA256)
IV_BYTES = 12  # AEAD nonce length (the IV the per-packet nonce is XORed into)
SECRET_BYTES = 32  # token minter secret
SESSION_ID_BYTES = 8
SPACE_MAX = 0xFF
PN_MAX = (1 << 64) - 1

SPACE_DATA = 0  # data datagrams, numbered by the sender's transmission counter
SPACE_CONTROL = 1  # control datagrams, with their own counter per direction

_LABEL = b"udpxfer/2 "
_TOKEN_LABEL = b"udpxfer/2 address token"


class Direction(IntEnum):
    """Who sends the datagram being protected."""

    TO_RECEIVER = 0
    TO_SENDER = 1


# -- packet protection --

# Cipher choice, measured on this machine (2-core x86-64 with AES-NI, cryptography 4x on OpenSSL 3,
# benchmarks/aead.py; seal = one encrypt() call per datagram on a reused cipher object, including
# the nonce computation and Python call overhead of PacketProtection.seal):
#
#                     1400-byte body            8800-byte body
#   AES-256-GCM       seal 0.99 M/s (1.4 GB/s)  seal 0.63 M/s (5.5 GB/s)
#   ChaCha20-Poly1305 seal 0.40 M/s (0.56 GB/s) seal 0.18 M/s (1.6 GB/s)
#
# (`python benchmarks/aead.py --repeat 7`, best of 7, encrypting seal and open alike, on a
# machine shared with other work, 2026-12-05.) AES-256-GCM is 2.5x to 3.5x ChaCha20-Poly1305
# per datagram where the CPU has AES-NI, which every x86-64 and ARMv8 server of the last decade
# has; so it is the one cipher. A CPU without AES instructions would favour ChaCha20.
#
# Usage limits (RFC 9001 section 6.6, RFC 8446 section 5.5): AES-GCM keeps a confidentiality
# advantage below 2^-57 for 2^23 packets of up to 16 KiB each; for our <= 8800-byte bodies the
# AEBounds formula ((q * blocks)^2 / 2^128) stays below 2^-56 up to 2^30 packets per key and
# direction (about 9 TB at 8800 bytes). Its integrity limit is 2^52 forgery attempts per key.
# A session that could approach either must be rekeyed by the caller (a new session).


def _derive(psk: bytes, salt: bytes, label: bytes, session_id: int) -> tuple[AESGCM, int]:
    """One AEAD key and IV (as an int, to XOR the per-packet counter into) from HKDF."""
    info = _LABEL + label + session_id.to_bytes(SESSION_ID_BYTES, "big")
    okm = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES + IV_BYTES, salt=salt, info=info).derive(
        psk
    )
    return AESGCM(okm[:KEY_BYTES]), int.from_bytes(okm[KEY_BYTES:], "big")


def _check_inputs(psk: bytes, session_id: int, *nonces: bytes) -> None:
    if len(psk) != KEY_BYTES:
        raise ValueError(f"a pre-shared key is {KEY_BYTES} bytes, not {len(psk)}")
    if not 0 <= session_id < 1 << (8 * SESSION_ID_BYTES):
        raise ValueError(f"session id {session_id} does not fit {SESSION_ID_BYTES} bytes")
    for nonce in nonces:
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a session nonce is {NONCE_BYTES} bytes, not {len(nonce)}")


class PacketProtection:
    """AEAD protection for one transfer session, both directions (AES-256-GCM).

    The caller promises that a (direction, space, pn) triple is never sealed twice under one
    instance's keys: a repeated nonce under AES-GCM reveals the XOR of the plaintexts and lets
    an attacker forge tags. Numbering each space with a counter that only grows (the sender's
    transmission counter for data, a per-direction counter for control) keeps that promise.
    Each side seals in its own direction and opens the other's.
    """

    __slots__ = ("_aeads", "_ivs")

    def __init__(self, aeads: tuple[AESGCM, AESGCM], ivs: tuple[int, int]) -> None:
        self._aeads = aeads
        self._ivs = ivs

    @classmethod
    def handshake(cls, psk: bytes, session_id: int, sender_nonce: bytes) -> PacketProtection:
        """Keys for the sender's first datagrams (META) and the receiver's first reply.

        Known before the receiver's nonce is: only the sender's nonce is mixed in.
        """
        _check_inputs(psk, session_id, sender_nonce)
        to_receiver = _derive(psk, sender_nonce, b"handshake to-receiver", session_id)
        to_sender = _derive(psk, sender_nonce, b"handshake to-sender", session_id)
        return cls((to_receiver[0], to_sender[0]), (to_receiver[1], to_sender[1]))

    @classmethod
    def session(
        cls, psk: bytes, session_id: int, sender_nonce: bytes, receiver_nonce: bytes
    ) -> PacketProtection:
        """The per-session keys, once both sides' nonces are known."""
        _check_inputs(psk, session_id, sender_nonce, receiver_nonce)
        salt = sender_nonce + receiver_nonce
        to_receiver = _derive(psk, salt, b"session to-receiver", session_id)
        to_sender = _derive(psk, salt, b"session to-sender", session_id)
        return cls((to_receiver[0], to_sender[0]), (to_receiver[1], to_sender[1]))

    def _nonce(self, direction: Direction, space: int, pn: int) -> bytes:
        if not 0 <= space <= SPACE_MAX or not 0 <= pn <= PN_MAX:
            raise ValueError(f"space {space} or packet number {pn} out of range")
        return (self._ivs[direction] ^ (space << 64 | pn)).to_bytes(IV_BYTES, "big")

    def seal(
        self,
        direction: Direction,
        space: int,
        pn: int,
        header: bytes | memoryview,
        body: bytes | memoryview,
        *,
        encrypt: bool,
    ) -> bytes:
        """The protected body followed by its TAG_BYTES tag.

        With ``encrypt`` the body is encrypted and ``header`` is associated data; without it
        the body stays in clear and header and body are both associated data (a tag only).
        """
        nonce = self._nonce(direction, space, pn)
        aead = self._aeads[direction]
        if encrypt:
            return aead.encrypt(nonce, body, header)
        # Two copies of the body (into the associated data, into the result), no more.
        tag = aead.encrypt(nonce, b"", b"".join((header, body)))
        return b"".join((body, tag))

    def open_untrusted(
        self,
        direction: Direction,
        space: int,
        pn: int,
        header: bytes | memoryview,
        protected: bytes | memoryview,
        *,
        encrypt: bool,
    ) -> bytes | memoryview:
        """The plain body of a datagram sealed by :meth:`seal`.

        Raises:
            AuthenticationFailed: whatever is wrong (too short, another key, direction, space,
                packet number, header or mode, any changed bit); never any other exception.
        """
        if len(protected) < TAG_BYTES:
            raise AuthenticationFailed(f"protected body of {len(protected)} bytes has no tag")
        try:
            nonce = self._nonce(direction, space, pn)
            aead = self._aeads[direction]
            if encrypt:
                return aead.decrypt(nonce, protected, header)
            view = memoryview(protected)
            body = view[:-TAG_BYTES]
            aead.decrypt(nonce, view[-TAG_BYTES:], b"".join((header, body)))
        except (InvalidTag, ValueError, OverflowError, IndexError) as exc:
            raise AuthenticationFailed("datagram failed authentication") from exc
        return body


# -- anti-replay --

REPLAY_WINDOW = 4096  # packet numbers tracked below the highest one seen


class ReplayWindow:
    """Sliding anti-replay window over 64-bit packet numbers (RFC 4303 section 3.4.3).

    Bit ``i`` of an int bitmap records whether ``top - i`` was marked. Packet numbers more than
    REPLAY_WINDOW below ``top`` are stale: refused without knowing whether they were seen. Every
    operation is one shift and mask of a REPLAY_WINDOW-bit int, whatever the distance jumped.
    Keep one window per packet-number space and direction.
    """

    __slots__ = ("_bits", "_top")

    _MASK = (1 << REPLAY_WINDOW) - 1

    def __init__(self) -> None:
        self._top = -1  # nothing marked yet
        self._bits = 0

    def seen_or_stale(self, pn: int) -> bool:
        """True if ``pn`` was marked, lies below the window, or is no 64-bit number; no change."""
        if not 0 <= pn <= PN_MAX:
            return True
        if pn > self._top:
            return False
        distance = self._top - pn
        return distance >= REPLAY_WINDOW or bool(self._bits >> distance & 1)

    def mark(self, pn: int) -> None:
        """Record ``pn``; call only once its datagram has authenticated."""
        if not 0 <= pn <= PN_MAX:
            raise ValueError(f"packet number {pn} is not a 64-bit number")
        if pn > self._top:
            shift = pn - self._top
            self._bits = 1 if shift >= REPLAY_WINDOW else (self._bits << shift | 1) & self._MASK
            self._top = pn
        elif self._top - pn < REPLAY_WINDOW:
            self._bits |= 1 << (self._top - pn)


# -- address validation --


def address_bytes(peer: tuple[object, ...]) -> bytes:
    """Canonical bytes of a socket address: the packed IP then the port (2 bytes, big endian).

    IPv4 ``(host, port)`` and IPv6 ``(host, port, flowinfo, scope_id)`` tuples; an IPv4-mapped
    IPv6 address gives the same bytes as the IPv4 address, and a ``%scope`` suffix is dropped.
    """
    if len(peer) not in (2, 4) or not isinstance(peer[0], str) or not isinstance(peer[1], int):
        raise ValueError(f"not an IP socket address: {peer!r}")
    return _packed_ip(peer[0]) + peer[1].to_bytes(2, "big")


@functools.lru_cache(maxsize=4096)
def _packed_ip(host: str) -> bytes:
    # Cached: parsing an address costs more than the HMAC of a token, and a receiver hears
    # the same few hosts over and over.
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.packed


class TokenMinter:
    """Stateless address-validation tokens, as QUIC's Retry token (RFC 9000 section 8.1).

    A token is HMAC-SHA256(secret, label || address || session id || time bucket) truncated to
    TOKEN_BYTES. ``valid`` accepts the current and the previous bucket of ``lifetime_s``
    seconds, so a token stays valid for at least ``lifetime_s`` and at most twice that.
    """

    __slots__ = ("_lifetime_s", "_secret")

    def __init__(self, secret: bytes, lifetime_s: float = 60.0) -> None:
        if len(secret) < 16:
            raise ValueError("a token secret needs at least 16 bytes")
        if not lifetime_s > 0:
            raise ValueError(f"token lifetime must be positive, not {lifetime_s}")
        self._secret = bytes(secret)
        self._lifetime_s = lifetime_s

    def _bucket(self, now: float) -> int:
        return int(now // self._lifetime_s)

    def _tag(self, address: bytes, session_id: int, bucket: int) -> bytes:
        message = (
            _TOKEN_LABEL
            + address
            + session_id.to_bytes(SESSION_ID_BYTES, "big")
            + bucket.to_bytes(8, "big", signed=True)
        )
        return hmac.digest(self._secret, message, "sha256")[:TOKEN_BYTES]

    def mint(self, address: bytes, session_id: int, now: float) -> bytes:
        """A token proving, when echoed back, that ``address`` receives what is sent to it."""
        return self._tag(address, session_id, self._bucket(now))

    def valid(self, token: bytes, address: bytes, session_id: int, now: float) -> bool:
        """Whether ``token`` was minted for this address and session, now or a bucket ago."""
        if len(token) != TOKEN_BYTES or not 0 <= session_id < 1 << (8 * SESSION_ID_BYTES):
            return False
        bucket = self._bucket(now)
        current = hmac.compare_digest(token, self._tag(address, session_id, bucket))
        previous = hmac.compare_digest(token, self._tag(address, session_id, bucket - 1))
        return current | previous
