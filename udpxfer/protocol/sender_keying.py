"""The sender's side of keyed mode: the seals a pre-shared key and two nonces make."""

from __future__ import annotations

from udpxfer.protocol.framing import Seal


class SenderKeying:
    """Keyed mode on the sender: the pre-shared key, our nonce, and the seals they make."""

    def __init__(self, psk: bytes, session_id: int, nonce: bytes, *, encrypt: bool = True) -> None:
        from udpxfer.protocol.keyed import AeadSeal
        from udpxfer.protocol.keys import Direction, PacketProtection

        self.psk = psk
        self.session_id = session_id
        self.nonce = nonce
        self.encrypt = encrypt
        # No replay window here: a receiver restarted while we send numbers its HELLOs from
        # a new random start. A replayed HELLO changes nothing (see SenderHandshake._on_hello).
        self._handshake = AeadSeal(
            PacketProtection.handshake(psk, session_id, nonce),
            Direction.TO_RECEIVER,
            encrypt=False,
            replay=False,
        )

    def handshake_seal(self) -> Seal:
        """The seal of META and of the receiver's HELLO."""
        return self._handshake

    def session_seal(self, receiver_nonce: bytes) -> Seal:
        """The seal of everything after the HELLO, from both nonces."""
        from udpxfer.protocol.keyed import AeadSeal
        from udpxfer.protocol.keys import Direction, PacketProtection

        return AeadSeal(
            PacketProtection.session(self.psk, self.session_id, self.nonce, receiver_nonce),
            Direction.TO_RECEIVER,
            encrypt=self.encrypt,
        )
