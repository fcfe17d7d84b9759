"""The sender's side of the handshake: decoding under the right seal, HELLO and HAVE."""

from __future__ import annotations

from udpxfer.errors import AuthenticationFailed, MalformedPacket
from udpxfer.protocol.bodies import MAX_RANGES
from udpxfer.protocol.codec import decode_header_untrusted
from udpxfer.protocol.framing import CRC, parse_header_untrusted
from udpxfer.protocol.ranges import clamp_ranges
from udpxfer.protocol.sender_core import SenderCore
from udpxfer.protocol.sender_state import SenderState
from udpxfer.protocol.wire import Have, Hello, HelloFlags, Packet

_HELLO = 8  # PacketType.HELLO

# What a receiver says in an unauthenticated HELLO when keys do not match.
_KEY_PROBLEMS = {
    HelloFlags.NEED_KEY: "the receiver needs a key (--key-file)",
    HelloFlags.NO_KEY: "the receiver has no key: it cannot take a keyed transfer",
    HelloFlags.AUTH_FAILED: "authentication failed (wrong key?)",
}


class SenderHandshake(SenderCore):
    """The handshake part of a sender session: keys, the receiver's HELLO, a resume's HAVE."""

    def _decode(self, data: bytes | bytearray | memoryview, now: float) -> Packet | None:
        """Decode with the seal the packet type calls for; None (counted) when it fails."""
        try:
            header = parse_header_untrusted(data)
            seal = self._handshake_seal if header.ptype == int(_HELLO) else self._seal
            return decode_header_untrusted(header, seal)
        except AuthenticationFailed:
            self._unauthenticated += 1
            self._key_notice(data, now)
            return None
        except MalformedPacket:
            if self.keying is None:
                self._key_notice(data, now)
            self._rejected += 1
            return None

    def _key_notice(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """An unauthenticated HELLO saying the keys do not match: believed only if no
        authenticated answer comes within ``auth_give_up_s`` (a forger cannot stop a
        transfer that is under way)."""
        try:
            packet = decode_header_untrusted(parse_header_untrusted(data), CRC)
        except MalformedPacket:
            return
        if isinstance(packet, Hello) and packet.session == self.session_id:
            self._note_key_problem(packet, now)

    def _note_key_problem(self, hello: Hello, now: float) -> None:
        if self._accepted or self._key_problem is not None:
            return
        for flag, reason in _KEY_PROBLEMS.items():
            if hello.flags & flag:
                self._key_problem = (reason, now + self.config.auth_give_up_s)
                return

    def _on_hello(self, hello: Hello, now: float) -> None:
        self._last_heard = now
        if hello.flags & HelloFlags.RETRY and any(hello.token):
            if hello.token != self._token:
                self._token = hello.token
                self._queue_control(self._meta(0, now))  # echo it at once
            return
        if not hello.flags & HelloFlags.ACCEPTED:
            self._note_key_problem(hello, now)
            return
        self._key_problem = None
        if hello.echo_ns:
            self._rtt.sample(now - hello.echo_ns / 1e9)
        if hello.nonce != self._receiver_nonce and hello.nonce in self._old_nonces:
            return  # a replay of an earlier receiver's answer
        restarted = self._accepted and hello.nonce != self._receiver_nonce
        if restarted and self._receiver_nonce is not None:
            self._old_nonces.add(self._receiver_nonce)
        if self.keying is not None and hello.nonce != self._receiver_nonce:
            self._seal = self.keying.session_seal(hello.nonce)
        self._receiver_nonce = hello.nonce
        self._accepted = True
        self._feedback = True
        self._advertised = max(
            1, min(hello.window or self.config.initial_window, self.config.max_window)
        )
        self._window = (
            self._advertised if self._congestion is None else min(self._window, self._advertised)
        )
        if restarted:
            self._highest_acked = self._tx - 1  # what the old receiver had in flight is gone
            if self._congestion is not None:  # its counters start again from zero
                self._congestion = self._new_congestion(now)
        if self._state is SenderState.HANDSHAKE and self._move(SenderState.SENDING):
            self._meta_at = None
            self._send_manifest(0, len(self._manifest) - 1, now)
            if hello.flags & HelloFlags.RESUMING and hello.held:
                # HAVE datagrams follow this HELLO: wait a moment for them, so that no chunk
                # the receiver holds travels again (a lost HAVE costs only duplicates).
                self._have_expected = min(hello.held, self.chunk_count)
                self._have_wait_until = now + self._handshake_interval()

    def _on_have(self, have: Have, now: float) -> None:
        """Chunks the receiver already holds from an earlier transfer: not sent again."""
        if not self._accepted:
            return
        self._last_heard = now
        for first, last in clamp_ranges(have.ranges, self.chunk_count, limit=MAX_RANGES):
            before = self._first.length
            self._first.discard(first, last)
            self._resumed += before - self._first.length
        if self._resumed >= self._have_expected:
            self._have_wait_until = None
