"""Attacks from the outside, end to end on loopback: forged, out-of-range and replayed
datagrams, forged verdicts, amplification, slot exhaustion, wrong keys.

An on-path attacker is played by a relay between sender and receiver that injects datagrams
of its choosing; every test is bounded in time.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import zlib
from pathlib import Path

import pytest
from helpers import LossyRelay, receiver, wait_for

from udpxfer.net import sending
from udpxfer.net.keyfile import new_key
from udpxfer.net.receiving import TransferResult
from udpxfer.net.sending import send_file
from udpxfer.protocol.codec import decode_untrusted, encode
from udpxfer.protocol.framing import encode_data, parse_header_untrusted
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.wire import (
    HEADER,
    MAGIC,
    VERSION,
    Abort,
    AbortCode,
    Done,
    End,
    Flags,
    Meta,
    Mode,
    Nack,
    PacketType,
    Verdict,
)
from udpxfer.units import Address

CHUNK = 1000
U64 = (1 << 64) - 1


def make_file(tmp_path: Path, size: int, seed: int = 0) -> Path:
    path = tmp_path / "source.bin"
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def raw_datagram(ptype: int, session: int, seq: int, pn: int, sent_ns: int, body: bytes) -> bytes:
    """A datagram with any header values (bounds ignored) and a valid CRC trailer."""
    head = HEADER.pack(MAGIC, VERSION, ptype, 0, 0, session & U64, seq & U64, pn & U64,
                       sent_ns & U64)  # fmt: skip
    prefix = head + body
    return prefix + struct.pack("!I", zlib.crc32(prefix))


def session_of(datagram: bytes) -> tuple[int, int]:
    """(type, session id) of one of our datagrams, read from its clear header."""
    header = parse_header_untrusted(datagram)
    return header.ptype, header.session


def test_out_of_range_forgeries_leave_a_live_receiver_running(tmp_path: Path) -> None:
    source = make_file(tmp_path, CHUNK * 400 + 7)
    forged: list[bytes] = []

    def inject(datagram: bytes, forward: bool) -> bool:
        ptype, session = session_of(datagram)
        if forward and ptype == PacketType.DATA and not forged:
            for value in (0, 1 << 31, (1 << 62) - 1, (1 << 63) - 1, U64):
                wide = struct.pack("!QQ", value, value)
                forged.append(raw_datagram(PacketType.DATA, session, value or U64, value, value,
                                           b"x" * CHUNK))  # fmt: skip
                forged.append(raw_datagram(PacketType.DATA, session, 5, 9, value, b"z" * 3))
                forged.append(raw_datagram(PacketType.END, session, value, 1, value, bytes(16)))
                forged.append(raw_datagram(PacketType.END, session, 0, 2, 0, wide))
                forged.append(raw_datagram(PacketType.ABORT, session, 0, 3, 0, b"\x09" + bytes(10)))
            for datagram_out in forged:
                relay.back.send(datagram_out, relay.server)
        return False

    with receiver(tmp_path) as (server, results):
        with LossyRelay(server.address, inject) as relay:
            session = send_file(source, Address(*relay.address), SenderConfig(chunk_size=CHUNK))
        wait_for(lambda: len(results) == 1)
        assert session.outcome is not None
        assert session.outcome.outcome == "complete"
        assert results[0].file_path.read_bytes() == source.read_bytes()
        assert results[0].report["datagrams"]["rejected"] >= 10  # counted, not acted on
        # And the next transfer still works.
        again = send_file(source, Address(*server.address), SenderConfig(chunk_size=CHUNK))
        wait_for(lambda: len(results) == 2)
    assert again.outcome is not None
    assert again.outcome.outcome == "complete"
    assert results[1].file_path.read_bytes() == source.read_bytes()


def test_a_forged_nack_for_every_index_costs_one_resend_of_the_file_at_most(
    tmp_path: Path,
) -> None:
    source = make_file(tmp_path, CHUNK * 300)
    injected = 0

    def inject(datagram: bytes, forward: bool) -> bool:
        nonlocal injected
        packet = decode_untrusted(datagram)
        if forward and isinstance(packet, End) and injected < 50:
            nack = encode(Nack(packet.session, packet.round, 0, ((0, U64),) * 80, pn=10**6))
            for _ in range(10):  # repeated: merged, never walked twice
                relay.front.send(nack, relay.client)
                injected += 1
        return False

    with receiver(tmp_path) as (server, results):
        with LossyRelay(server.address, inject) as relay:
            config = SenderConfig(chunk_size=CHUNK, give_up_s=10)
            session = send_file(source, Address(*relay.address), config)
        wait_for(lambda: len(results) == 1)
    assert injected
    assert session.outcome is not None
    assert session.outcome.outcome == "complete"
    stats = session.stats()
    assert stats.finished_at is not None
    assert stats.finished_at - stats.started_at < 10
    assert stats.chunks_resent <= 300 * (stats.repair_rounds or 1)
    assert results[0].file_path.read_bytes() == source.read_bytes()


def test_an_unvalidated_address_never_gets_more_than_three_times_what_it_sent(
    tmp_path: Path,
) -> None:
    with receiver(tmp_path) as (server, results):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.3)
            sent = received = 0
            rng = random.Random(3)
            for session in range(300):
                mode = Mode.BLAST if session % 2 else Mode.RELIABLE
                name = "x" * rng.randrange(0, 3)
                datagrams = [
                    encode(Meta(session, name, 10**9, 1, 10**9, bytes(32), mode)),
                    encode_data(session, rng.randrange(10**9), session, b"d"),
                    encode(End(session, 0, 10**9, 10**9)),
                    encode(End(session, 1, 10**9, 10**9, pn=2)),
                ]
                for datagram in datagrams:
                    sock.sendto(datagram, server.address)
                    sent += len(datagram)
            try:
                while True:
                    received += len(sock.recv(65535))
            except TimeoutError:
                pass
        wait_for(lambda: server.endpoint.received == 1200)
    assert received <= 3 * sent
    assert not results  # none of it became a transfer


def test_keyed_transfer_survives_a_forger_on_the_path(tmp_path: Path) -> None:
    key = new_key()
    source = make_file(tmp_path, CHUNK * 500 + 1)
    forged = {"data": 0, "verdicts": 0}

    def inject(datagram: bytes, forward: bool) -> bool:
        ptype, session = session_of(datagram)
        if forward and ptype == PacketType.DATA and forged["data"] < 60:
            for variant in range(3):
                payload = bytes([variant]) * CHUNK
                fake = encode_data(session, forged["data"] % 50, 10**7 + forged["data"], payload)
                if variant == 1:  # claims a tag: random bytes instead of one
                    head = bytearray(fake[:40])
                    head[6] |= int(Flags.KEYED | Flags.ENCRYPTED)
                    fake = bytes(head) + payload + random.randbytes(16)
                relay.back.send(fake, relay.server)
                forged["data"] += 1
        if not forward and forged["verdicts"] < 40:
            for fake in (
                encode(Done(session, Verdict.VERIFIED, 10**6, bytes(32))),
                encode(Abort(session, AbortCode.CANCELLED, "forged")),
            ):
                relay.front.send(fake, relay.client)
                forged["verdicts"] += 1
        return False

    with receiver(tmp_path, key=key) as (server, results):
        with LossyRelay(server.address, inject) as relay:
            session = send_file(
                source, Address(*relay.address), SenderConfig(chunk_size=CHUNK), key=key
            )
        wait_for(lambda: len(results) == 1)
    assert forged["data"]
    assert forged["verdicts"]
    assert session.outcome is not None
    assert session.outcome.outcome == "complete", session.outcome
    assert results[0].file_path.read_bytes() == source.read_bytes()
    report = results[0].report
    assert report["file"]["verified"]
    assert report["datagrams"]["unauthenticated"] >= forged["data"] // 2
    stats = session.stats()
    assert stats.unauthenticated + stats.rejected >= forged["verdicts"] // 2


def test_a_wrong_key_fails_fast_on_the_sender(tmp_path: Path) -> None:
    source = make_file(tmp_path, CHUNK * 20)
    with receiver(tmp_path, key=new_key()) as (server, results):
        session = send_file(
            source, Address(*server.address), SenderConfig(chunk_size=CHUNK), key=new_key()
        )
        assert server.endpoint.unauthenticated >= 1
    assert session.outcome is not None
    assert session.outcome.outcome == "unauthenticated"
    assert "wrong key" in session.outcome.reason
    stats = session.stats()
    assert stats.finished_at is not None
    assert stats.finished_at - stats.started_at < 5
    assert not results


def test_junk_from_another_host_does_not_lock_a_sender_out(tmp_path: Path) -> None:
    source = make_file(tmp_path, CHUNK * 200)
    with (
        receiver(tmp_path, max_pending_sessions=64) as (server, results),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk,
    ):
        junk.bind(("127.0.0.2", 0))
        for session_id in range(3000):  # slot-filling METAs: probation, then evicted
            mode = Mode.BLAST if session_id % 3 else Mode.RELIABLE
            meta = Meta(session_id, "j", 10, 5, 2, bytes(32), mode)
            junk.sendto(encode(meta), server.address)
            junk.sendto(encode_data(session_id, 0, 0, b"12345"), server.address)
        session = send_file(source, Address(*server.address), SenderConfig(chunk_size=CHUNK))
        wait_for(lambda: any(r.report["file"]["verified"] for r in results))
    assert session.outcome is not None
    assert session.outcome.outcome == "complete"
    real = [r for r in results if r.report["file"]["name"] == "source.bin"]
    assert real
    assert real[0].file_path.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("hash_while_sending", [False, True])
def test_forged_content_with_a_valid_check_is_found_and_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hash_while_sending: bool
) -> None:
    """Keyless, an on-path forger can make a DATA datagram whose CRC holds; the block hashes
    of the manifest find the bad block and the receiver fetches it again. A large file's
    sender computes them only then, on the receiver's request (``hash_while_sending``: this
    file takes the large files' path)."""
    if hash_while_sending:
        monkeypatch.setattr(sending, "HASH_WHILE_SENDING_BYTES", 0)
    source = make_file(tmp_path, CHUNK * 3000)
    forged: list[int] = []

    def inject(datagram: bytes, forward: bool) -> bool:
        ptype, session = session_of(datagram)
        if forward and ptype == PacketType.DATA and not forged:
            for index in range(2000, 2010):  # ahead of the sender: they arrive first
                fake = encode_data(session, index, 10**6 + index, b"F" * CHUNK)
                relay.back.send(fake, relay.server)
                forged.append(index)
        return False

    with receiver(tmp_path) as (server, results):
        with LossyRelay(server.address, inject) as relay:
            session = send_file(source, Address(*relay.address), SenderConfig(chunk_size=CHUNK))
        wait_for(lambda: len(results) == 1)
    assert forged
    assert session.outcome is not None
    assert session.outcome.outcome == "complete", session.outcome
    assert results[0].file_path.read_bytes() == source.read_bytes()
    assert results[0].report["repair"]["bad_blocks"] >= 1
    assert (
        results[0].report["file"]["sha256_expected"]
        == hashlib.sha256(source.read_bytes()).hexdigest()
    )


def _serve_once(tmp_path: Path, *, report_path: Path, trace_path: Path) -> TransferResult:
    """One transfer of 20 chunks into a ``ReceiverServer`` with these report and trace paths."""
    import threading

    from udpxfer.net.receiving import ReceiverServer
    from udpxfer.protocol.receiver import ReceiverConfig

    source = make_file(tmp_path, CHUNK * 20)
    server = ReceiverServer(
        Address("127.0.0.1", 0), tmp_path / "out", report_path=report_path,
        trace_path=trace_path, once=True, config=ReceiverConfig(),
    )  # fmt: skip
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    send_file(source, Address(*server.address), SenderConfig(chunk_size=CHUNK))
    thread.join(timeout=20)
    assert not thread.is_alive()
    (result,) = server.results
    return result


def test_a_report_or_trace_path_that_exists_is_never_replaced(tmp_path: Path) -> None:
    """A symbolic link or an earlier trace at --report/--trace stays as it is: the receiver
    writes beside it under a numbered name."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "r.json"
    link.symlink_to(target)
    earlier = tmp_path / "t.npz"
    earlier.write_bytes(b"an earlier trace")
    result = _serve_once(tmp_path, report_path=link, trace_path=earlier)
    assert link.is_symlink()
    assert target.read_text() == "keep me"
    assert earlier.read_bytes() == b"an earlier trace"
    assert result.report_path == tmp_path / "r-1.json"
    assert result.trace_path == tmp_path / "t-1.npz"
    assert result.report["file"]["verified"]


def test_a_trace_at_a_fifo_is_written_into_it_and_the_fifo_stays(tmp_path: Path) -> None:
    """A FIFO is not replaced either: the trace goes into it, to whoever reads it."""
    import os
    import threading

    from udpxfer.analysis.trace import Trace

    fifo = tmp_path / "t.npz"
    os.mkfifo(fifo)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = _serve_once(tmp_path, report_path=tmp_path / "r.json", trace_path=fifo)
    reader.join(timeout=20)
    assert fifo.is_fifo()
    assert result.trace_path == fifo
    (tmp_path / "copy.npz").write_bytes(read[0])
    assert len(Trace.load(tmp_path / "copy.npz")) > 0
