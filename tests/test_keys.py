"""Keyed mode primitives: AEAD round trips and forgeries, replay window, tokens."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udpxfer.errors import AuthenticationFailed, MalformedPacket
from udpxfer.protocol.keys import (
    KEY_BYTES,
    NONCE_BYTES,
    PN_MAX,
    REPLAY_WINDOW,
    TAG_BYTES,
    TOKEN_BYTES,
    Direction,
    PacketProtection,
    ReplayWindow,
    TokenMinter,
    address_bytes,
)

PSK = bytes(range(KEY_BYTES))
OTHER_PSK = bytes(reversed(range(KEY_BYTES)))
SESSION = 0x0123_4567_89AB_CDEF
SENDER_NONCE = b"s" * NONCE_BYTES
RECEIVER_NONCE = b"r" * NONCE_BYTES
HEADER = bytes(range(44))
BODY = b"udpxfer keyed mode body bytes, 40 long."

TO_R = Direction.TO_RECEIVER
TO_S = Direction.TO_SENDER


def session_keys(psk: bytes = PSK) -> PacketProtection:
    return PacketProtection.session(psk, SESSION, SENDER_NONCE, RECEIVER_NONCE)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# -- packet protection --


@pytest.mark.parametrize("encrypt", [True, False])
@pytest.mark.parametrize("direction", list(Direction))
def test_round_trip(encrypt: bool, direction: Direction) -> None:
    prot = session_keys()
    sealed = prot.seal(direction, 0, 5, HEADER, memoryview(BODY), encrypt=encrypt)
    assert len(sealed) == len(BODY) + TAG_BYTES
    assert (sealed[: len(BODY)] == BODY) is not encrypt  # in clear exactly when not encrypting
    opened = session_keys().open_untrusted(
        direction, 0, 5, memoryview(HEADER), memoryview(sealed), encrypt=encrypt
    )
    assert bytes(opened) == BODY


@pytest.mark.parametrize("encrypt", [True, False])
def test_empty_body_and_extreme_numbers_round_trip(encrypt: bool) -> None:
    prot = session_keys()
    for space, pn in [(0, 0), (255, PN_MAX), (1, 1 << 63)]:
        sealed = prot.seal(TO_S, space, pn, b"", b"", encrypt=encrypt)
        assert len(sealed) == TAG_BYTES
        assert bytes(prot.open_untrusted(TO_S, space, pn, b"", sealed, encrypt=encrypt)) == b""


@pytest.mark.parametrize("encrypt", [True, False])
def test_every_bit_flip_fails_authentication(encrypt: bool) -> None:
    prot = session_keys()
    sealed = prot.seal(TO_R, 0, 9, HEADER, BODY, encrypt=encrypt)
    for bit in range(len(HEADER) * 8):
        with pytest.raises(AuthenticationFailed):
            prot.open_untrusted(TO_R, 0, 9, flip(HEADER, bit), sealed, encrypt=encrypt)
    for bit in range(len(sealed) * 8):  # body and tag
        with pytest.raises(AuthenticationFailed):
            prot.open_untrusted(TO_R, 0, 9, HEADER, flip(sealed, bit), encrypt=encrypt)


@pytest.mark.parametrize("encrypt", [True, False])
def test_every_truncation_fails_authentication(encrypt: bool) -> None:
    prot = session_keys()
    sealed = prot.seal(TO_R, 1, 3, HEADER, BODY, encrypt=encrypt)
    for length in range(len(sealed)):
        with pytest.raises(AuthenticationFailed):
            prot.open_untrusted(TO_R, 1, 3, HEADER, sealed[:length], encrypt=encrypt)
    for length in range(len(HEADER)):
        with pytest.raises(AuthenticationFailed):
            prot.open_untrusted(TO_R, 1, 3, HEADER[:length], sealed, encrypt=encrypt)


@pytest.mark.parametrize("encrypt", [True, False])
def test_wrong_key_direction_space_pn_or_mode_fail(encrypt: bool) -> None:
    prot = session_keys()
    sealed = prot.seal(TO_R, 0, 77, HEADER, BODY, encrypt=encrypt)
    attempts = [
        (session_keys(OTHER_PSK), TO_R, 0, 77, encrypt),
        (
            PacketProtection.session(PSK, SESSION + 1, SENDER_NONCE, RECEIVER_NONCE),
            TO_R,
            0,
            77,
            encrypt,
        ),
        (PacketProtection.session(PSK, SESSION, SENDER_NONCE, SENDER_NONCE), TO_R, 0, 77, encrypt),
        (PacketProtection.handshake(PSK, SESSION, SENDER_NONCE), TO_R, 0, 77, encrypt),
        (prot, TO_S, 0, 77, encrypt),
        (prot, TO_R, 1, 77, encrypt),
        (prot, TO_R, 0, 78, encrypt),
        (prot, TO_R, 0, 77 | 1 << 40, encrypt),
        (prot, TO_R, 0, 77, not encrypt),
    ]
    for other, direction, space, pn, mode in attempts:
        with pytest.raises(AuthenticationFailed):
            other.open_untrusted(direction, space, pn, HEADER, sealed, encrypt=mode)


def test_out_of_range_numbers_and_garbage_raise_only_authentication_failed() -> None:
    prot = session_keys()
    for space, pn in [(-1, 0), (256, 0), (0, -1), (0, PN_MAX + 1)]:
        with pytest.raises(AuthenticationFailed):
            prot.open_untrusted(TO_R, space, pn, HEADER, bytes(64), encrypt=True)
        with pytest.raises(ValueError, match="out of range"):
            prot.seal(TO_R, space, pn, HEADER, BODY, encrypt=True)
    for garbage in [b"", bytes(TAG_BYTES - 1), bytes(TAG_BYTES), os.urandom(3000)]:
        for encrypt in (True, False):
            with pytest.raises(AuthenticationFailed):
                prot.open_untrusted(TO_S, 1, 0, HEADER, garbage, encrypt=encrypt)
    assert issubclass(AuthenticationFailed, MalformedPacket)


def test_handshake_and_session_keys_differ_and_are_deterministic() -> None:
    handshake = PacketProtection.handshake(PSK, SESSION, SENDER_NONCE)
    session = session_keys()
    for direction in Direction:
        a = handshake.seal(direction, 0, 0, HEADER, BODY, encrypt=True)
        b = session.seal(direction, 0, 0, HEADER, BODY, encrypt=True)
        assert a != b
        again = PacketProtection.handshake(PSK, SESSION, SENDER_NONCE)
        assert again.seal(direction, 0, 0, HEADER, BODY, encrypt=True) == a
    # The two directions never share a key stream.
    assert session.seal(TO_R, 0, 0, HEADER, BODY, encrypt=True) != session.seal(
        TO_S, 0, 0, HEADER, BODY, encrypt=True
    )


def test_bad_construction_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="pre-shared key"):
        PacketProtection.handshake(PSK[:16], SESSION, SENDER_NONCE)
    with pytest.raises(ValueError, match="session nonce"):
        PacketProtection.session(PSK, SESSION, SENDER_NONCE, b"short")
    with pytest.raises(ValueError, match="session id"):
        PacketProtection.handshake(PSK, 1 << 64, SENDER_NONCE)


# -- replay window --


def test_replay_window_basic_cases() -> None:
    window = ReplayWindow()
    assert not window.seen_or_stale(0)
    assert not window.seen_or_stale(0)  # checking does not change state
    window.mark(0)
    assert window.seen_or_stale(0)
    assert not window.seen_or_stale(1)
    window.mark(5)
    assert not window.seen_or_stale(3)  # late but inside the window
    window.mark(3)
    assert window.seen_or_stale(3)
    assert window.seen_or_stale(5)
    assert window.seen_or_stale(0)


def test_replay_window_far_jump_and_extremes() -> None:
    window = ReplayWindow()
    window.mark(10)
    window.mark(PN_MAX)  # a jump of ~2^64 in one step
    assert window.seen_or_stale(PN_MAX)
    assert window.seen_or_stale(10)  # far behind: stale
    assert window.seen_or_stale(PN_MAX - REPLAY_WINDOW)  # just beyond the window
    assert not window.seen_or_stale(PN_MAX - REPLAY_WINDOW + 1)  # oldest slot still open
    window.mark(PN_MAX - REPLAY_WINDOW + 1)
    assert window.seen_or_stale(PN_MAX - REPLAY_WINDOW + 1)
    window.mark(PN_MAX - REPLAY_WINDOW - 5)  # stale: ignored, changes nothing
    assert not window.seen_or_stale(PN_MAX - 1)
    for bad in (-1, PN_MAX + 1):
        assert window.seen_or_stale(bad)
        with pytest.raises(ValueError, match="64-bit"):
            window.mark(bad)


def test_replay_window_in_the_past_beyond_the_window() -> None:
    window = ReplayWindow()
    window.mark(REPLAY_WINDOW * 3)
    assert window.seen_or_stale(REPLAY_WINDOW * 2)
    assert not window.seen_or_stale(REPLAY_WINDOW * 2 + 1)
    window.mark(REPLAY_WINDOW * 3 + REPLAY_WINDOW // 2)  # slide by half: earlier marks kept
    assert window.seen_or_stale(REPLAY_WINDOW * 3)


class ReferenceWindow:
    """The window's contract spelled out with a set: seen, or too old for the window."""

    def __init__(self) -> None:
        self.marked: set[int] = set()

    def seen_or_stale(self, pn: int) -> bool:
        top = max(self.marked, default=-1)
        return pn in self.marked or (top >= 0 and pn <= top - REPLAY_WINDOW)

    def mark(self, pn: int) -> None:
        if not self.seen_or_stale(pn):
            self.marked.add(pn)


pns = st.one_of(
    st.integers(0, 3 * REPLAY_WINDOW),
    st.integers(0, PN_MAX),
    st.sampled_from([0, 1, REPLAY_WINDOW - 1, REPLAY_WINDOW, PN_MAX - REPLAY_WINDOW, PN_MAX]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(pns, st.booleans()), max_size=60))
def test_replay_window_matches_a_set_model(steps: list[tuple[int, bool]]) -> None:
    window, model = ReplayWindow(), ReferenceWindow()
    for pn, do_mark in steps:
        assert window.seen_or_stale(pn) == model.seen_or_stale(pn), pn
        if do_mark:
            window.mark(pn)
            model.mark(pn)
    for pn in {pn for pn, _ in steps} | {0, PN_MAX}:
        assert window.seen_or_stale(pn) == model.seen_or_stale(pn), pn


# -- address tokens --

V4 = address_bytes(("192.0.2.7", 4500))
V6 = address_bytes(("2001:db8::1", 4500, 0, 0))


def test_address_bytes_are_canonical() -> None:
    assert bytes([192, 0, 2, 7]) + (4500).to_bytes(2, "big") == V4
    assert len(V6) == 18
    assert address_bytes(("::ffff:192.0.2.7", 4500, 0, 0)) == V4
    assert address_bytes(("fe80::1%eth0", 9, 0, 2)) == address_bytes(("fe80::1", 9, 0, 0))
    assert address_bytes(("192.0.2.7", 4501)) != V4
    for bad in [("192.0.2.7",), ("nowhere", 1), ("192.0.2.7", "80")]:
        with pytest.raises(ValueError, match="address"):
            address_bytes(bad)


def test_token_valid_within_lifetime_and_not_after() -> None:
    minter = TokenMinter(b"k" * 32, lifetime_s=60.0)
    for minted_at in (0.0, 59.999, 1_000_000.5):
        token = minter.mint(V4, SESSION, minted_at)
        assert len(token) == TOKEN_BYTES
        assert minter.valid(token, V4, SESSION, minted_at)
        assert minter.valid(token, V4, SESSION, minted_at + 59.99)
        assert not minter.valid(token, V4, SESSION, minted_at + 120.0)
        assert not minter.valid(token, V4, SESSION, minted_at - 60.0)  # from the future


def test_token_bound_to_address_session_and_secret() -> None:
    minter = TokenMinter(b"k" * 32)
    token = minter.mint(V4, SESSION, 10.0)
    assert not minter.valid(token, V6, SESSION, 10.0)
    assert not minter.valid(token, address_bytes(("192.0.2.7", 4501)), SESSION, 10.0)
    assert not minter.valid(token, V4, SESSION ^ 1, 10.0)
    assert not TokenMinter(b"j" * 32).valid(token, V4, SESSION, 10.0)
    assert not minter.valid(token[:-1], V4, SESSION, 10.0)
    assert not minter.valid(flip(token, 0), V4, SESSION, 10.0)
    assert not minter.valid(token, V4, 1 << 64, 10.0)


def test_token_minter_refuses_weak_settings() -> None:
    with pytest.raises(ValueError, match="secret"):
        TokenMinter(b"short")
    with pytest.raises(ValueError, match="lifetime"):
        TokenMinter(b"k" * 32, lifetime_s=0)
