"""End to end over real sockets on loopback: send_file against a ReceiverServer."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import LossyRelay, receiver, wait_for

from udpxfer.net.sending import send_file
from udpxfer.protocol.codec import decode_untrusted, encode
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.wire import Data, Meta, Mode, PacketType
from udpxfer.units import Address

CHUNK = 1400
REPORT_KEYS = {
    "schema",
    "transport",
    "mode",
    "file",
    "chunks",
    "gaps",
    "first_pass_gaps",
    "loss",
    "timing",
    "datagrams",
}


def make_file(tmp_path: Path, size: int, name: str = "data.bin", seed: int = 0) -> Path:
    path = tmp_path / name
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def chunk_of(data: bytes, index: int) -> bytes:
    return data[index * CHUNK : (index + 1) * CHUNK]


@pytest.mark.parametrize("size", [0, 1, CHUNK * 10, CHUNK * 10 + 1, CHUNK * 10 - 1])
@pytest.mark.parametrize("mode", [Mode.RELIABLE, Mode.BLAST])
def test_sizes_and_modes_arrive_byte_exact(tmp_path: Path, size: int, mode: Mode) -> None:
    source = make_file(tmp_path, size)
    with receiver(tmp_path) as (server, results):
        session = send_file(source, Address(*server.address), SenderConfig(mode=mode))
        wait_for(lambda: len(results) == 1)
    assert session.outcome is not None
    assert session.outcome.outcome == "complete"
    (result,) = results
    assert result.file_path == tmp_path / "out" / "data.bin"
    assert result.file_path.read_bytes() == source.read_bytes()
    doc = json.loads(result.report_path.read_text())
    assert doc.keys() >= REPORT_KEYS
    assert doc["schema"] == "udpxfer.report/1"
    assert doc["mode"] == mode.label
    assert doc["file"]["verified"] is True
    assert doc["file"]["sha256_actual"] == doc["file"]["sha256_expected"]
    assert doc["chunks"]["total"] == -(-size // CHUNK)
    assert doc["chunks"]["received"] == doc["chunks"]["total"]
    assert doc["gaps"] == []
    assert doc["first_pass_gaps"] == []
    assert doc["loss"]["rate"] == 0.0
    assert result.report_path.parent == tmp_path / "reports"


@pytest.mark.parametrize("mode", [Mode.RELIABLE, Mode.BLAST])
def test_twenty_megabytes(tmp_path: Path, mode: Mode) -> None:
    source = make_file(tmp_path, 20_000_000)
    with receiver(tmp_path) as (server, results):
        session = send_file(source, Address(*server.address), SenderConfig(mode=mode))
        wait_for(lambda: len(results) == 1)
    assert session.outcome is not None
    assert session.outcome.outcome == "complete"
    assert results[0].file_path.read_bytes() == source.read_bytes()


def test_ipv6_loopback(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1 on this machine")
    source = make_file(tmp_path, CHUNK * 100 + 5)
    with receiver(tmp_path, host="::1") as (server, results):
        session = send_file(source, Address("::1", server.address[1]), SenderConfig())
        wait_for(lambda: len(results) == 1)
    assert session.outcome is not None
    assert session.outcome.outcome == "complete"
    assert results[0].file_path.read_bytes() == source.read_bytes()
    assert results[0].report["peer"].startswith("[::1]:")


def first_copy_dropper(lost: set[int]) -> Callable[[bytes, bool], bool]:
    def drop(datagram: bytes, forward: bool) -> bool:
        if not forward or datagram[5] != PacketType.DATA:
            return False
        packet = decode_untrusted(datagram)
        return isinstance(packet, Data) and not packet.resent and packet.index in lost

    return drop


def test_blast_gaps_equal_the_relays_drops(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(CHUNK * 700 + 99)
    source = tmp_path / "photo.jpg"
    source.write_bytes(data)
    lost = {0, 1, 2, 3, 100, 350, 351, 698, 699, 700}
    with (
        receiver(tmp_path, blast_grace_s=0.3) as (server, results),
        LossyRelay(server.address, first_copy_dropper(lost)) as relay,
    ):
        config = SenderConfig(mode=Mode.BLAST, rate_bps=200_000_000)
        session = send_file(source, Address(*relay.address), config)
        wait_for(lambda: len(results) == 1)
    assert session.outcome is not None
    assert session.outcome.outcome == "incomplete"
    doc = results[0].report
    assert doc["gaps"] == [[0, 3], [100, 100], [350, 351], [698, 700]]
    assert doc["first_pass_gaps"] == doc["gaps"]
    assert doc["chunks"]["missing"] == len(lost)
    assert doc["chunks"]["received"] == 701 - len(lost)
    assert doc["loss"]["rate"] == pytest.approx(len(lost) / 701)
    assert doc["file"]["complete"] is False
    assert doc["file"]["verified"] is False
    assert doc["file"]["sha256_actual"] is None
    partial = Path(doc["file"]["path"])
    assert partial.name == "photo.jpg.partial"
    stored = partial.read_bytes()
    assert len(stored) == len(data)
    for index in range(701):
        expected = bytes(len(chunk_of(data, index))) if index in lost else chunk_of(data, index)
        assert chunk_of(stored, index) == expected, index


@pytest.mark.parametrize(
    "lost",
    [set(range(300, 500)), {0, 999}],
    ids=["burst-200", "first-and-last"],
)
def test_reliable_repairs_relay_drops(tmp_path: Path, lost: set[int]) -> None:
    source = make_file(tmp_path, CHUNK * 1000)
    with (
        receiver(tmp_path) as (server, results),
        LossyRelay(server.address, first_copy_dropper(lost)) as relay,
    ):
        session = send_file(source, Address(*relay.address), SenderConfig(rate_bps=300_000_000))
        wait_for(lambda: len(results) == 1)
    assert session.outcome is not None
    assert session.outcome.outcome == "complete"
    assert results[0].file_path.read_bytes() == source.read_bytes()
    doc = results[0].report
    first_pass = {i for a, b in doc["first_pass_gaps"] for i in range(a, b + 1)}
    assert lost <= first_pass
    assert doc["chunks"]["retransmitted"] >= len(lost)
    assert doc["gaps"] == []


def test_reliable_with_twenty_percent_loss_both_ways(tmp_path: Path) -> None:
    source = make_file(tmp_path, CHUNK * 1500)
    rng = random.Random(20)
    with (
        receiver(tmp_path) as (server, results),
        LossyRelay(server.address, lambda d, f: rng.random() < 0.2) as relay,
    ):
        session = send_file(source, Address(*relay.address), SenderConfig(rate_bps=300_000_000))
        wait_for(lambda: len(results) == 1)
    assert session.outcome is not None
    assert session.outcome.outcome == "complete"
    assert results[0].file_path.read_bytes() == source.read_bytes()
    assert 0.1 < results[0].report["loss"]["rate"] < 0.3


def junk_datagrams(count: int, seed: int) -> list[bytes]:
    """Random bytes, truncations, bit flips and forged sessions of real datagrams."""
    rng = random.Random(seed)
    meta = encode(Meta(77, "junk.bin", 5000, 1000, 5, bytes(32), Mode.RELIABLE))
    data = encode(Data(77, 1, 1, b"x" * 1000))
    out: list[bytes] = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 1500)))
        elif kind == 1:
            base = rng.choice([meta, data])
            out.append(base[: rng.randrange(0, len(base))])
        elif kind == 2:
            mutated = bytearray(rng.choice([meta, data]))
            for bit in rng.sample(range(len(mutated) * 8), rng.randrange(1, 4)):
                mutated[bit // 8] ^= 1 << (bit % 8)
            out.append(bytes(mutated))
        else:
            out.append(b"UDPX" + rng.randbytes(rng.randrange(0, 100)))
    return out


def test_junk_is_counted_and_the_next_transfer_works(tmp_path: Path) -> None:
    source = make_file(tmp_path, CHUNK * 300 + 1)
    junk = junk_datagrams(4000, seed=1)
    with receiver(tmp_path) as (server, results):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for datagram in junk:
                sock.sendto(datagram, server.address)
        wait_for(lambda: server.endpoint.received == len(junk))
        assert server.endpoint.rejected == len(junk)
        session = send_file(source, Address(*server.address), SenderConfig())
        wait_for(lambda: len(results) == 1)
    assert session.outcome is not None
    assert session.outcome.outcome == "complete"
    assert results[0].file_path.read_bytes() == source.read_bytes()
    assert results[0].report["datagrams"]["rejected"] == len(junk)
    assert results[0].report["datagrams"]["received"] >= len(junk) + 301


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../x", "x"),
        ("/etc/passwd", "passwd"),
        ("..", "unnamed"),
        ("", "unnamed"),
        ("a\0b", "ab"),
        ("c:\\windows\\evil.dll", "evil.dll"),
        (".hidden", "hidden"),
        ("x" * 4096, "x" * 200),
    ],
)
def test_hostile_names_stay_inside_the_output_directory(
    tmp_path: Path, name: str, expected: str
) -> None:
    source = make_file(tmp_path, 3000)
    with receiver(tmp_path) as (server, results):
        send_file(source, Address(*server.address), SenderConfig(chunk_size=1000), name=name)
        wait_for(lambda: len(results) == 1)
    out = tmp_path / "out"
    assert results[0].file_path == out / expected
    assert results[0].file_path.read_bytes() == source.read_bytes()
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {source, results[0].file_path, results[0].report_path}
    assert results[0].report_path.parent == tmp_path / "reports"


def test_a_second_transfer_never_overwrites_the_first(tmp_path: Path) -> None:
    first = make_file(tmp_path, 5000, "same.bin", seed=1)
    with receiver(tmp_path) as (server, results):
        send_file(first, Address(*server.address), SenderConfig())
        wait_for(lambda: len(results) == 1)
        first.write_bytes(b"different content")
        send_file(first, Address(*server.address), SenderConfig())
        wait_for(lambda: len(results) == 2)
    assert results[0].file_path.name == "same.bin"
    assert results[1].file_path.name == "same-1.bin"
    assert results[1].file_path.read_bytes() == b"different content"
    assert results[0].report_path != results[1].report_path
    assert len(os.listdir(tmp_path / "reports")) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_refuses_the_transfer_instead_of_crashing(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        big = make_file(tmp_path, 3_000_000, "big.bin")
        tiny = make_file(tmp_path, 5_000, "tiny.bin")
        with receiver(small) as (server, results):
            session = send_file(big, Address(*server.address), SenderConfig(give_up_s=5))
            wait_for(lambda: len(results) == 1)
            assert session.outcome is not None
            assert session.outcome.outcome == "aborted"
            assert "No space left" in session.outcome.reason
            second = send_file(tiny, Address(*server.address), SenderConfig())
            wait_for(lambda: len(results) == 2)
        assert results[0].report["outcome"] == "aborted"
        assert results[0].file_path is None or not results[0].file_path.exists()
        assert not list((small / "out").glob("big*"))
        assert second.outcome is not None
        assert second.outcome.outcome == "complete"
        assert results[1].file_path is not None
        assert results[1].file_path.read_bytes() == tiny.read_bytes()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_reports_are_strict_json_whatever_the_figures(tmp_path: Path) -> None:
    from udpxfer.reports.output import write_report

    path = write_report(
        {"loss": {"rate": float("nan"), "ci95": [0.0, float("inf")]}}, tmp_path / "r.json"
    )
    text = path.read_text()
    assert "NaN" not in text
    assert "Infinity" not in text
    assert json.loads(text) == {"loss": {"rate": None, "ci95": [0.0, None]}}


class _Stop(Exception):
    """Leaves the send loop without passing through its own Ctrl-C handling."""


def test_ctrl_c_that_escapes_the_send_loop_still_aborts_the_transfer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPython 3.11 can raise KeyboardInterrupt at a loop's back edge outside the ``try``
    around the loop (python/cpython#108214): model it by leaving the loop under way with
    another exception and raising KeyboardInterrupt from outside it."""
    import udpxfer.net.sending

    source = make_file(tmp_path, 2_000_000)
    run_sender = udpxfer.net.sending._run_sender

    def escaping(session: Any, transport: Any, clock: Any, on_progress: Any, *args: Any) -> None:
        def progress(current: Any) -> None:
            if current.stats().first_pass_sent:
                raise _Stop

        try:
            run_sender(session, transport, clock, progress, *args)
        except _Stop:
            raise KeyboardInterrupt from None

    monkeypatch.setattr(udpxfer.net.sending, "_run_sender", escaping)
    with receiver(tmp_path, idle_timeout_s=60) as (server, results):
        with pytest.raises(KeyboardInterrupt):
            send_file(source, Address(*server.address), SenderConfig(rate_bps=20_000_000))
        wait_for(lambda: len(results) == 1, timeout_s=10, what="the receiver to end it")
    assert results[0].report["outcome"] == "aborted"
    assert "sender interrupted" in results[0].report["reason"]


def test_ctrl_c_while_a_chunk_is_framed_is_an_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interrupt's traceback holds a view of the mapped file (the chunk being framed):
    closing the map must not turn Ctrl-C into a BufferError."""
    import udpxfer.protocol.sender_data

    source = make_file(tmp_path, 2_000_000)
    crc32 = udpxfer.protocol.sender_data.crc32
    calls = 0

    def interrupted(data: Any, value: int = 0) -> int:
        nonlocal calls
        calls += 1
        if calls == 40:
            raise KeyboardInterrupt  # this frame (and the run's pieces) hold views of the file
        return crc32(data, value)

    monkeypatch.setattr(udpxfer.protocol.sender_data, "crc32", interrupted)
    with receiver(tmp_path, idle_timeout_s=60) as (server, results):
        with pytest.raises(KeyboardInterrupt):
            send_file(source, Address(*server.address), SenderConfig())
        wait_for(lambda: len(results) == 1, timeout_s=10, what="the receiver to end it")
    assert results[0].report["outcome"] == "aborted"


def test_ctrl_c_between_two_runs_counts_only_what_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of DATA built but not yet sent when Ctrl-C comes are not counted as sent: the
    receiver's report shows no first-pass loss on clean loopback, the rest as not sent."""
    from udpxfer.net.transport import UdpTransport

    source = make_file(tmp_path, 2_000_000)
    send_gathered = UdpTransport.send_gathered
    calls = 0

    def interrupted(self: UdpTransport, *args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 6:  # runs are left in the batch behind this one
            raise KeyboardInterrupt
        send_gathered(self, *args)

    monkeypatch.setattr(UdpTransport, "send_gathered", interrupted)
    with receiver(tmp_path, idle_timeout_s=60) as (server, results):
        with pytest.raises(KeyboardInterrupt):
            send_file(source, Address(*server.address), SenderConfig(chunk_size=1000))
        wait_for(lambda: len(results) == 1, timeout_s=10, what="the receiver to end it")
    doc = results[0].report
    assert doc["outcome"] == "aborted"
    chunks = doc["chunks"]
    assert 0 < chunks["received"] < chunks["total"]
    assert chunks["received"] + chunks["not_sent"] == chunks["total"]
    assert doc["loss"]["first_pass_missing"] == 0
