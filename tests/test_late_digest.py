"""A large reliable file is sent at once: its digest follows in a META, its manifest only when
a receiver asks for it (after its whole-file hash failed)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import PEER, Link, drive, drop_types, receiver, run_pair, wait_for

from udpxfer.net import sending
from udpxfer.protocol.codec import decode_untrusted, encode
from udpxfer.protocol.endpoint import ReceiverEndpoint
from udpxfer.protocol.events import Outcome, TransferEnded
from udpxfer.protocol.receiver import ReceiverConfig, ReceiverSession
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.wire import Data, End, Meta, PacketType, Verdict
from udpxfer.units import Address

DATA = random.Random(3).randbytes(3_000_000)  # 2143 chunks of 1400, three manifest blocks
CONFIG = SenderConfig(chunk_size=1400)


def _metas(sent: list[bytes]) -> list[Meta]:
    return [p for p in map(decode_untrusted, sent) if isinstance(p, Meta)]


def _recording(
    sent: list[bytes], drop: Callable[[bytes], bool] | None = None
) -> Callable[[bytes], bool]:
    def rule(datagram: bytes) -> bool:
        sent.append(datagram)
        return drop(datagram) if drop is not None else False

    return rule


@pytest.mark.parametrize("digest_at", [1.0, 1.02, 20.0])  # at once, mid-pass, long after
@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_a_digest_that_follows_verifies_the_file(digest_at: float, loss: float) -> None:
    sent: list[bytes] = []
    result = run_pair(
        DATA,
        sender_config=CONFIG,
        forward=Link(random.Random(7), loss=loss, drop=_recording(sent)),
        reverse=Link(random.Random(8), loss=loss),
        late_digest_at=digest_at,
    )
    assert bytes(result.stored[: len(DATA)]) == DATA
    assert result.session is not None
    assert result.session.verdict is Verdict.VERIFIED
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == Outcome.COMPLETE
    metas = _metas(sent)
    assert metas[0].sha256 == bytes(32)  # the transfer began without it
    assert metas[-1].sha256 == hashlib.sha256(DATA).digest()
    assert metas[0].block_chunks  # the receiver knows the blocks, their hashes come on request
    # Nobody asked for the manifest: it was never computed nor sent.
    assert not any(PacketType(d[5]) is PacketType.MANIFEST for d in sent)
    if digest_at == 20.0:
        assert result.elapsed_s >= 20.0  # the receiver held every chunk and waited for it


def test_lost_digest_metas_are_sent_again_with_every_end() -> None:
    # Every META but the last of the handshake lost: the first with the digest goes too.
    lost = drop_types(PacketType.META, times=4)
    sent: list[bytes] = []
    result = run_pair(
        DATA,
        sender_config=CONFIG,
        forward=Link(random.Random(1), drop=_recording(sent, lost)),
        late_digest_at=1.01,
    )
    assert result.session is not None
    assert result.session.verdict is Verdict.VERIFIED
    with_digest = [m for m in _metas(sent) if any(m.sha256)]
    assert len(with_digest) >= 2


class _Forging(Link):
    """Replaces the first copy of chunk ``index`` with other bytes under a valid CRC."""

    def __init__(self, rng: random.Random, index: int) -> None:
        super().__init__(rng)
        self.index = index
        self.forged = 0

    def carry(self, datagram: bytes, now: float) -> list[tuple[float, bytes]]:
        packet = decode_untrusted(datagram)
        if isinstance(packet, Data) and packet.index == self.index and not self.forged:
            self.forged += 1
            wrong = bytes(len(packet.payload))
            datagram = encode(Data(packet.session, packet.index, packet.tx, wrong, 0,
                                   packet.flags, packet.sent_ns))  # fmt: skip
        return super().carry(datagram, now)


def test_a_forged_chunk_is_found_with_a_manifest_computed_on_request() -> None:
    forward = _Forging(random.Random(2), index=1500)
    result = run_pair(DATA, sender_config=CONFIG, forward=forward, late_digest_at=1.0)
    assert forward.forged == 1
    assert bytes(result.stored[: len(DATA)]) == DATA
    session = result.session
    assert session is not None
    assert session.verdict is Verdict.VERIFIED
    assert session.block_repairs == 1
    assert session.bad_blocks == 1
    assert session.manifest_complete
    assert not session.manifest_needed


def test_a_digest_is_given_once_and_never_changes() -> None:
    # An on-path forger gets in first with a wrong digest: the sender's own is refused, and
    # the transfer ends as a mismatch (a keyless path has no defence against this; a key does).
    forged: list[bytes] = []

    class _Digests(Link):
        def carry(self, datagram: bytes, now: float) -> list[tuple[float, bytes]]:
            packet = decode_untrusted(datagram)
            out = super().carry(datagram, now)
            if isinstance(packet, Meta) and any(packet.sha256) and not forged:
                forged.append(encode(dataclasses.replace(packet, sha256=bytes(range(32)))))
                out.insert(0, (now, forged[0]))
            return out

    result = run_pair(
        DATA, sender_config=CONFIG, forward=_Digests(random.Random(4)), late_digest_at=1.01
    )
    assert forged
    session = result.session
    assert session is not None
    assert session.meta is not None
    assert session.meta.sha256 == bytes(range(32))
    assert session.verdict is Verdict.MISMATCH
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == Outcome.MISMATCH


def test_a_receiver_waiting_for_the_digest_gives_up_when_the_sender_falls_silent() -> None:
    # The sender's digest never comes and everything it sends after its first pass is lost.
    passed: list[bool] = []

    def after_the_pass(datagram: bytes) -> bool:
        if PacketType(datagram[5]) is PacketType.END:
            passed.append(True)
        return bool(passed)

    result = run_pair(
        DATA,
        sender_config=CONFIG,
        receiver_config=ReceiverConfig(idle_timeout_s=5.0),
        forward=Link(random.Random(5), drop=after_the_pass),
        late_digest_at=1e9,
        max_time_s=1e4,
    )
    session = result.session
    assert session is not None
    assert session.outcome is not None
    assert session.outcome.outcome == Outcome.TIMEOUT
    assert session.meta is not None
    assert session.held_count == session.meta.chunk_count
    assert session.verdict is None


def test_block_hashes_already_there_name_the_bad_block_when_the_digest_comes() -> None:
    # A forged chunk, and every block hash already delivered (unasked) before the digest that
    # comes only after every chunk is held: the bad block is found then, not a mismatch.
    from helpers import block_hashes

    from udpxfer.protocol.wire import Manifest

    hashes = block_hashes(DATA, 1400)
    injected: list[bool] = []

    class _Both(_Forging):
        def carry(self, datagram: bytes, now: float) -> list[tuple[float, bytes]]:
            out = super().carry(datagram, now)
            packet = decode_untrusted(datagram)
            if isinstance(packet, Data) and not injected:
                injected.append(True)
                manifest = encode(Manifest(packet.session, 0, hashes, packet.sent_ns, 1 << 20))
                out.append((now, manifest))
            return out

    forward = _Both(random.Random(6), index=100)
    result = run_pair(DATA, sender_config=CONFIG, forward=forward, late_digest_at=20.0)
    session = result.session
    assert session is not None
    assert injected
    assert forward.forged == 1
    assert session.verdict is Verdict.VERIFIED
    assert session.block_repairs == 1
    assert bytes(result.stored[: len(DATA)]) == DATA


@pytest.mark.parametrize("keyed", [False, True])
def test_the_driver_hashes_while_it_sends_and_the_file_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyed: bool
) -> None:
    # This small file takes the large files' path: the digest from the worker thread reaches
    # a real receiver over loopback (sealed under the handshake key when keyed).
    monkeypatch.setattr(sending, "HASH_WHILE_SENDING_BYTES", 0)
    source = tmp_path / "data.bin"
    source.write_bytes(DATA)
    key = bytes(range(32)) if keyed else None
    with receiver(tmp_path, key=key) as (server, results):
        session = sending.send_file(source, Address(*server.address), CONFIG, key=key)
        wait_for(lambda: len(results) == 1, timeout_s=20, what="the receiver's report")
    assert session.outcome is not None
    assert session.outcome.outcome == Outcome.COMPLETE
    assert session.meta.sha256 == hashlib.sha256(DATA).digest()
    doc = results[0].report
    assert doc["file"]["verified"] is True
    assert doc["file"]["sha256_expected"] == hashlib.sha256(DATA).hexdigest()
    assert results[0].file_path is not None
    assert results[0].file_path.read_bytes() == DATA


def _until_waiting(
    endpoint: ReceiverEndpoint, sender: SenderSession
) -> tuple[ReceiverSession, float]:
    """Run a late-digest sender (never given its digest) against ``endpoint`` on a clean fake
    link until the receiver holds and has hashed every chunk; its session and the time."""

    def waiting() -> list[ReceiverSession]:
        return [s for s in endpoint.sessions.values() if s.waits_for_sender]

    now = drive(sender, endpoint, 1.0, 100.0, stop=lambda: bool(waiting()))
    assert waiting(), "the receiver never came to wait for the digest"
    return waiting()[0], now


def test_a_receiver_waits_for_the_digest_at_most_its_idle_timeout_even_with_ends_coming() -> None:
    # A path that drops every META with a digest (and nothing else): the sender's ENDs keep
    # the receiver hearing from it, but the wait for the digest is bounded all the same.
    endpoint = ReceiverEndpoint(ReceiverConfig(idle_timeout_s=3.0))
    sender = SenderSession(
        DATA, name="x.bin", sha256=bytes(32), session_id=77, now=1.0, config=CONFIG,
        manifest_later=True,
    )  # fmt: skip
    session, now = _until_waiting(endpoint, sender)
    for _ in range(20):  # an END every half second for ten seconds: the receiver hears them
        now += 0.5
        endpoint.receive_datagram(
            encode(End(77, 0, sender.chunk_count, sender.chunk_count, int(now * 1e9), 1)),
            PEER,
            now,
        )
        timer = endpoint.get_timer()
        if timer is not None and timer <= now:
            endpoint.handle_timer(now)
        if session.outcome is not None:
            break
    assert session.outcome is not None
    assert session.outcome.outcome == Outcome.TIMEOUT
    assert "digest did not come" in session.outcome.reason
    assert now <= session.waiting_since + 3.0 + 0.5


def test_a_resumed_send_supersedes_a_transfer_waiting_for_its_digest() -> None:
    # The sender was killed while the receiver waited for its digest, and runs again: the old
    # transfer ends (a report, its file closed) so that the new one resumes from it.
    endpoint = ReceiverEndpoint()
    sender = SenderSession(
        DATA, name="x.bin", sha256=bytes(32), session_id=78, now=1.0, config=CONFIG,
        manifest_later=True,
    )  # fmt: skip
    session, now = _until_waiting(endpoint, sender)
    session.supersede(now)
    assert session.outcome is not None
    assert session.outcome.outcome == Outcome.ABORTED
    ended = []
    while (item := endpoint.next_event()) is not None:
        ended.append(item[1])
    assert any(isinstance(event, TransferEnded) for event in ended)
