"""TCP file transfer: header, byte-exact delivery, reports, and every way it can break off."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from companion_helpers import WAIT_S, background, run_cli, running, wait_for

from udpxfer.companions.tcp_receiver import run_tcp_receiver
from udpxfer.companions.tcp_transfer import (
    HEADER,
    MAX_NAME_BYTES,
    TransferHeader,
    decode_header_untrusted,
    decode_verdict_untrusted,
    encode_header,
    encode_verdict,
    header_length_untrusted,
    send_file,
)
from udpxfer.errors import MalformedPacket, TransferError, UsageError
from udpxfer.units import Address

MB = 1_000_000


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def receiver(tmp_path: Path, **kwargs: Any) -> Any:
    return running(
        run_tcp_receiver,
        out_dir=tmp_path / "received",
        reports_dir=tmp_path / "reports",
        **kwargs,
    )


# ---------------------------------------------------------------- wire


def test_header_round_trip_and_layout() -> None:
    header = TransferHeader("résumé.pdf", 123_456_789, bytes(range(32)))
    data = encode_header(header)
    assert data[:8] == b"UXTC\x01\x00\x00\x0c"  # magic, version, flags, name length 12
    assert struct.unpack("!Q", data[8:16]) == (123_456_789,)
    assert header_length_untrusted(data[: HEADER.size]) == len(data) == 48 + 12
    assert decode_header_untrusted(data) == header


def test_every_truncation_and_forgery_is_a_malformed_packet() -> None:
    data = encode_header(TransferHeader("a.bin", 5, b"\x01" * 32))
    for cut in range(len(data)):
        with pytest.raises(MalformedPacket):
            decode_header_untrusted(data[:cut])
    forged = [
        b"HTTP" + data[4:],
        data[:4] + b"\x02" + data[5:],
        data[:6] + struct.pack("!H", MAX_NAME_BYTES + 1) + data[8:],
        data[: HEADER.size] + b"\xff\xfe\xfd\xfc\xfb",
        data + b"x",
    ]
    for bad in forged:
        with pytest.raises(MalformedPacket):
            decode_header_untrusted(bad)


def test_verdict_lines() -> None:
    assert decode_verdict_untrusted(encode_verdict(True, "sha256=ab")) == (True, "sha256=ab")
    assert decode_verdict_untrusted(encode_verdict(False, "no\nspace")) == (False, "no space")
    with pytest.raises(MalformedPacket):
        decode_verdict_untrusted(b"HTTP/1.1 400 Bad Request\r\n")


# ---------------------------------------------------------------- transfers


@pytest.mark.parametrize("size", [0, 1, 1000, 20 * MB])
def test_byte_exact_delivery_and_report(tmp_path: Path, size: int) -> None:
    source = make_file(tmp_path / f"file-{size}.bin", size)
    with receiver(tmp_path, once=True) as rx:
        result = send_file(source, rx.address)
        rx.thread.join(WAIT_S)
        received = rx.stop()
    target = tmp_path / "received" / source.name
    assert target.read_bytes() == source.read_bytes()
    assert result.sha256_hex == hashlib.sha256(source.read_bytes()).hexdigest()
    assert not list((tmp_path / "received").glob("*.partial"))
    (report_path,) = received.report_paths
    doc = json.loads(report_path.read_text())
    assert report_path.parent == tmp_path / "reports"
    assert doc["transport"] == "tcp"
    assert doc["mode"] == "reliable"
    assert doc["gaps"] == doc["first_pass_gaps"] == []
    assert doc["file"] == {
        "name": source.name,
        "size": size,
        "path": str(target),
        "sha256_expected": result.sha256_hex,
        "sha256_actual": result.sha256_hex,
        "complete": True,
        "verified": True,
    }
    chunks = doc["chunks"]
    assert chunks["size"] == 1 << 20
    assert chunks["total"] == chunks["received"] == -(-size // (1 << 20))
    assert chunks["missing"] == 0
    assert doc["loss"]["rate"] == 0.0
    assert {"duration_s", "goodput_bps"} <= doc["timing"].keys()
    assert {"received", "rejected"} <= doc["datagrams"].keys()


def test_a_long_running_receiver_never_overwrites(tmp_path: Path) -> None:
    source = make_file(tmp_path / "same.txt", 5000)
    report = tmp_path / "run.json"
    with receiver(tmp_path, report=report) as rx:
        for _ in range(3):
            send_file(source, rx.address)
        received = rx.stop()
    names = sorted(p.name for p in (tmp_path / "received").iterdir())
    assert names == ["same-1.txt", "same-2.txt", "same.txt"]
    assert received.report_paths == [report, tmp_path / "run-1.json", tmp_path / "run-2.json"]
    paths = {json.loads(p.read_text())["file"]["path"] for p in received.report_paths}
    assert len(paths) == 3


def test_concurrent_transfers_are_all_delivered(tmp_path: Path) -> None:
    sources = [make_file(tmp_path / f"part{i}.bin", 3 * MB + i, seed=i) for i in range(4)]
    errors: list[BaseException] = []

    def send(path: Path, to: Address) -> None:
        try:
            send_file(path, to)
        except BaseException as exc:
            errors.append(exc)

    with receiver(tmp_path) as rx:
        senders = [threading.Thread(target=send, args=(p, rx.address)) for p in sources]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(WAIT_S)
        received = rx.stop()
    assert errors == []
    assert sorted(doc["file"]["verified"] for doc in received.reports) == [True] * 4
    for source in sources:
        assert (tmp_path / "received" / source.name).read_bytes() == source.read_bytes()


def test_junk_is_rejected_and_does_not_end_a_once_receiver(tmp_path: Path) -> None:
    source = make_file(tmp_path / "after-junk.bin", 10_000)
    with receiver(tmp_path, once=True, idle_timeout_s=5.0) as rx:
        port = rx.control.port
        for junk in (b"GET / HTTP/1.0\r\n\r\n" * 4, b"", b"UXTC\x07" + bytes(60)):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(junk)
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(100) == b""  # closed without an answer
        send_file(source, rx.address)
        rx.thread.join(WAIT_S)
        received = rx.stop()
    assert received.rejected == 3
    assert len(received.reports) == 1
    assert received.reports[0]["file"]["verified"]


def test_unsafe_names_stay_inside_the_output_directory(tmp_path: Path) -> None:
    with receiver(tmp_path, once=True) as rx:
        verdict = _raw_send(rx.control.port, "../../escape.txt", b"data")
        rx.thread.join(WAIT_S)
        rx.stop()
    assert verdict.startswith(b"OK ")
    assert (tmp_path / "received" / "escape.txt").read_bytes() == b"data"
    assert not (tmp_path / "escape.txt").exists()


def test_a_hash_mismatch_is_refused_and_left_partial(tmp_path: Path) -> None:
    with receiver(tmp_path, once=True) as rx:
        verdict = _raw_send(rx.control.port, "liar.bin", b"payload", digest=b"\x00" * 32)
        rx.thread.join(WAIT_S)
        received = rx.stop()
    assert verdict == b"FAIL SHA-256 mismatch\n"
    doc = received.reports[0]
    assert doc["outcome"] == "hash mismatch"
    assert doc["file"]["complete"] is True
    assert doc["file"]["verified"] is False
    assert doc["file"]["sha256_actual"] == hashlib.sha256(b"payload").hexdigest()
    assert doc["file"]["path"].endswith("liar.bin.partial")
    assert (tmp_path / "received" / "liar.bin.partial").read_bytes() == b"payload"


def test_a_sender_that_stops_midway_leaves_a_partial_and_a_report(tmp_path: Path) -> None:
    size = 3 * (1 << 20) + 5
    with receiver(tmp_path, once=True) as rx:
        _raw_send(rx.control.port, "cut.bin", b"\xab" * (2 * (1 << 20) + 100), size=size)
        rx.thread.join(WAIT_S)
        received = rx.stop()
    doc = received.reports[0]
    assert doc["outcome"] == "abandoned"
    assert doc["file"]["complete"] is False
    assert doc["file"]["sha256_actual"] is None
    assert doc["gaps"] == [[2, 3]]
    assert doc["first_pass_gaps"] == []
    assert (doc["chunks"]["received"], doc["chunks"]["missing"]) == (2, 2)
    partial = tmp_path / "received" / "cut.bin.partial"
    assert doc["file"]["path"] == str(partial)
    assert partial.stat().st_size == size
    assert partial.read_bytes()[: 2 * (1 << 20) + 100] == b"\xab" * (2 * (1 << 20) + 100)


def test_stopping_the_receiver_mid_transfer_reports_it_interrupted(tmp_path: Path) -> None:
    with receiver(tmp_path) as rx, socket.create_connection(("127.0.0.1", rx.control.port)) as sock:
        header = TransferHeader("slow.bin", 1000, b"\x00" * 32)
        sock.sendall(encode_header(header) + b"x" * 10)
        wait_for(lambda: (tmp_path / "received" / "slow.bin.partial").exists())
        received = rx.stop()
    assert received.interrupted
    assert received.reports[0]["outcome"] == "interrupted"


def test_once_ends_with_the_first_transfer_even_when_another_is_running(tmp_path: Path) -> None:
    source = make_file(tmp_path / "quick.bin", 1000)
    with (
        receiver(tmp_path, once=True) as rx,
        socket.create_connection(("127.0.0.1", rx.control.port)) as slow,
    ):
        slow.sendall(encode_header(TransferHeader("slow.bin", 1000, b"\x00" * 32)) + b"x")
        wait_for(lambda: (tmp_path / "received" / "slow.bin.partial").exists())
        send_file(source, rx.address)
        rx.thread.join(WAIT_S)
        received = rx.stop()
    assert not received.interrupted
    assert received.once_report is not None
    assert received.once_report["file"]["name"] == "quick.bin"
    assert received.once_report["file"]["verified"]
    assert sorted(doc["outcome"] for doc in received.reports) == ["complete", "interrupted"]


def test_sender_reports_a_receiver_that_drops_the_connection(tmp_path: Path) -> None:
    source = make_file(tmp_path / "big.bin", 20 * MB)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def accept_then_reset() -> None:
            conn, _ = listener.accept()
            with conn:
                got = 0
                while got < 500_000:
                    got += len(conn.recv(65536))
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        thread = threading.Thread(target=accept_then_reset, daemon=True)
        thread.start()
        with pytest.raises(TransferError, match=r"connection to receiver .* lost after sending"):
            send_file(source, Address("127.0.0.1", listener.getsockname()[1]), timeout_s=10)
        thread.join(WAIT_S)


def test_sender_refuses_what_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        send_file(tmp_path / "missing", Address("127.0.0.1", 9))
    with pytest.raises(UsageError, match="not a regular file"):
        send_file(tmp_path, Address("127.0.0.1", 9))


def _raw_send(
    port: int, name: str, body: bytes, *, size: int | None = None, digest: bytes | None = None
) -> bytes:
    """Send a hand-made transfer; return the verdict line (empty if the body is cut short)."""
    header = TransferHeader(
        name, len(body) if size is None else size, digest or hashlib.sha256(body).digest()
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(encode_header(header) + body)
        if size is not None and size > len(body):
            return b""
        return sock.makefile("rb").readline()


# ---------------------------------------------------------------- the command line

_STALLING_RECEIVER = """
import functools, pathlib, sys, threading
from udpxfer.companions.tcp_receiver import run_tcp_receiver
from udpxfer.units import Address

out, marker, reports = map(pathlib.Path, sys.argv[1:4])

class Stall:
    def __init__(self, label, total):
        self.seen = 0
    def update(self, n):
        self.seen += n
        if self.seen >= 2_000_000:
            marker.write_text("stalled")
            threading.Event().wait()  # hang mid-transfer until the test kills us
    def close(self):
        pass

say = functools.partial(print, flush=True)
run_tcp_receiver(Address("127.0.0.1", 0), out, log=say, reports_dir=reports, progress=Stall,
                 ready=lambda control: say("PORT", control.port))
"""


def test_receiver_killed_midway_leaves_partial_and_sender_fails(tmp_path: Path) -> None:
    source = make_file(tmp_path / "victim.bin", 20 * MB)
    out, marker = tmp_path / "received", tmp_path / "stalled"
    command = [sys.executable, "-c", _STALLING_RECEIVER, str(out), str(marker), str(tmp_path)]
    with background(command=command) as rx:
        port = rx.expect(r"PORT (\d+)")[1]
        with background("tcp", "send", str(source), "--to", f"127.0.0.1:{port}") as sender:
            wait_for(marker.exists, what="the receiver to stall")
            rx.proc.kill()
            rx.finish()
            assert sender.finish() == 1
    assert sender.stderr.count("\n") == 1
    assert sender.stderr.startswith("udpxfer: error: ")
    assert "lost after sending" in sender.stderr
    assert "Traceback" not in sender.stderr
    partial = out / "victim.bin.partial"
    assert partial.stat().st_size == 20 * MB
    assert partial.read_bytes()[:2_000_000] == source.read_bytes()[:2_000_000]
    assert not (out / "victim.bin").exists()


def test_cli_send_and_recv_once(tmp_path: Path) -> None:
    source = make_file(tmp_path / "hello.txt", 12_345)
    report = tmp_path / "r.json"
    out = tmp_path / "rx"
    args = ["tcp", "recv", "--bind", "127.0.0.1:0", "--out", str(out), "--report", str(report)]
    with background(*args, "--once", cwd=tmp_path) as rx:
        port = rx.port()
        sent = run_cli("tcp", "send", str(source), "--to", f"127.0.0.1:{port}")
        assert rx.finish() == 0, rx.stderr
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("sent hello.txt (12.1 KiB) in ")
    assert (out / "hello.txt").read_bytes() == source.read_bytes()
    doc = json.loads(report.read_text())
    assert (doc["transport"], doc["file"]["verified"]) == ("tcp", True)
    assert rx.lines[-1].endswith(
        "TCP receiver stopped: 1 transfer (1 verified), 0 connections rejected, "
        "12345 bytes received"
    )
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_cli_recv_stops_cleanly_when_idle(tmp_path: Path) -> None:
    with background("tcp", "recv", "--bind", "127.0.0.1:0", cwd=tmp_path) as rx:
        rx.port()
        rx.signal(signal.SIGTERM)
        assert rx.finish() == 0, rx.stderr
    assert "TCP receiver stopped: 0 transfers" in rx.lines[-1]
    assert (tmp_path / "received").is_dir()  # the documented defaults, relative to the cwd
    assert (tmp_path / "reports").is_dir()


def test_cli_usage_errors_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        ("tcp", "send", str(tmp_path / "missing.bin"), "--to", "127.0.0.1:9"),
        ("tcp", "send", str(tmp_path), "--to", "127.0.0.1:9"),
        ("tcp", "send", str(blocker), "--to", "127.0.0.1:99999"),
        ("tcp", "recv", "--bind", "127.0.0.1:0", "--out", str(blocker / "sub"), "--once"),
    ]
    for args in cases:
        done = run_cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("udpxfer: error: ")
