"""Keyed datagrams: the wire format's trailer as an AEAD tag (``protocol.keys``), with replay
protection for control datagrams.

Data datagrams are not run through the replay window: a repeated data datagram carries
authenticated content, so storing it again changes nothing; it is counted as a duplicate, as a
duplicate from the network would be (docs/SECURITY.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from udpxfer.errors import AuthenticationFailed
from udpxfer.protocol.framing import Header, Seal
from udpxfer.protocol.keys import Direction, PacketProtection, ReplayWindow
from udpxfer.protocol.wire import ENCRYPTED_FLAG, HEADER_BYTES, TAG_BYTES, Flags

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from udpxfer.protocol.batch import DataBatch


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

    def open_batch(
        self, view: memoryview, batch: DataBatch
    ) -> tuple[list[bytes | memoryview], npt.NDArray[np.bool_]]:
        """Authenticate (and decrypt) the keyed DATA rows of a receive buffer.

        Returns the plain payloads of the rows that pass, in order, and a mask of those rows
        (what fails is dropped by the caller and counted as unauthenticated). DATA take no
        replay window, as in ``open_untrusted``.
        """
        import numpy as np

        protection, direction, step = self._protection, self._in, batch.segment
        plain: list[bytes | memoryview] = []
        ok = np.ones(len(batch), dtype=bool)
        rows = zip(
            batch.rows.tolist(), batch.tx.tolist(), batch.payload_bytes.tolist(),
            batch.flags.tolist(), strict=True,
        )  # fmt: skip
        for position, (row, pn, size, flags) in enumerate(rows):
            start = row * step
            try:
                plain.append(
                    protection.open_untrusted(
                        direction,
                        0,
                        pn,
                        view[start : start + HEADER_BYTES],
                        view[start + HEADER_BYTES : start + HEADER_BYTES + size + TAG_BYTES],
                        encrypt=bool(flags & ENCRYPTED_FLAG),
                    )
                )
            except AuthenticationFailed:
                ok[position] = False
        return plain, ok


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
