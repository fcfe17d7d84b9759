"""The command line as a user runs it: exit codes, one-line errors, reports on disk."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import UDPXFER, recv_process, run
from helpers import LossyRelay

from udpxfer.cli.signals import handled, raise_interrupted
from udpxfer.errors import Interrupted
from udpxfer.protocol.codec import decode_untrusted
from udpxfer.protocol.wire import Data, PacketType


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("udpxfer: error:")
    assert fragment in lines[0]


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.bin"
    path.write_bytes(random.Random(0).randbytes(300_000))
    return path


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("send", "recv", "tcp", "udp"):
        assert command in result.stdout
    for sub in ("send", "recv"):
        help_text = run(sub, "--help", cwd=tmp_path)
        assert help_text.returncode == 0
        assert "Exit" in help_text.stdout


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(run("send", "nope.bin", "--to", "9", cwd=tmp_path), "no such file")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert_one_line_error(run("send", ".", "--to", "9", cwd=tmp_path), "not a regular file")


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--chunk-size", "abc", "bad size"),
        ("--chunk-size", "70000", "chunk size"),
        ("--chunk-size", "0", "chunk size"),
        ("--rate", "fast", "bad rate"),
        ("--to", "host:port", "bad address"),
        ("--to", "[::1", "bad address"),
        ("--to", "1.2.3.4:99999", "port"),
    ],
)
def test_bad_send_options(
    tmp_path: Path, sample: Path, option: str, value: str, fragment: str
) -> None:
    assert_one_line_error(run("send", str(sample), option, value, cwd=tmp_path), fragment)


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        result = run("recv", "--bind", f"127.0.0.1:{port}", "--once", cwd=tmp_path)
    assert_one_line_error(result, "already in use")


def test_unwritable_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("recv", "--bind", "127.0.0.1:0", "--out", str(blocker / "sub"), cwd=tmp_path)
    assert_one_line_error(result, f"{blocker} is a file, not a directory")


def test_send_and_recv_exit_zero_and_write_the_report(tmp_path: Path, sample: Path) -> None:
    with recv_process(tmp_path, "--once", "--out", "in", "--report", "r.json") as (proc, port):
        sent = run("send", str(sample), "--to", f"127.0.0.1:{port}", cwd=tmp_path)
        out, err = proc.communicate(timeout=30)
    assert sent.returncode == 0, sent.stderr
    assert "verified by the receiver" in sent.stdout
    assert proc.returncode == 0, err
    assert "complete, SHA-256 verified" in out
    assert (tmp_path / "in" / "sample.bin").read_bytes() == sample.read_bytes()
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["file"]["verified"] is True
    assert doc["file"]["path"] == str(Path("in") / "sample.bin")


def test_blast_with_loss_exits_one_on_the_receiver_zero_on_the_sender(
    tmp_path: Path, sample: Path
) -> None:
    def drop(datagram: bytes, forward: bool) -> bool:
        if not forward or datagram[5] != PacketType.DATA:
            return False
        packet = decode_untrusted(datagram)
        return isinstance(packet, Data) and packet.index in {5, 6, 100}

    with (
        recv_process(tmp_path, "--once", "--out", "in", "--report", "r.json") as (proc, port),
        LossyRelay(("127.0.0.1", port), drop) as relay,
    ):
        relay_port = relay.address[1]
        sent = run(
            "send", str(sample), "--to", f"127.0.0.1:{relay_port}", "--mode", "blast",
            "--rate", "100M", cwd=tmp_path,
        )  # fmt: skip
        _out, _ = proc.communicate(timeout=30)
    assert sent.returncode == 0, sent.stderr
    assert "chunks missing" in sent.stdout
    assert proc.returncode == 1
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["gaps"] == [[5, 6], [100, 100]]
    assert (tmp_path / "in" / "sample.bin.partial").exists()
    assert not (tmp_path / "in" / "sample.bin").exists()


def test_reliable_send_to_nobody_gives_up_with_exit_one(tmp_path: Path, sample: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # a port that swallows datagrams and never answers
        port = silent.getsockname()[1]
        result = run("send", str(sample), "--to", f"127.0.0.1:{port}", "--timeout", "1",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert "no answer from the receiver" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_receiver_stops_on_signals(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    with recv_process(tmp_path) as (proc, _port):
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == code
    assert "Traceback" not in err


def test_handled_signals_reach_the_handler_and_the_previous_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    seen: list[signal.Signals] = []
    with handled(seen.append, signal.SIGUSR1):
        signal.raise_signal(signal.SIGUSR1)
    assert seen == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) is before
    with pytest.raises(Interrupted, match="SIGUSR1"), handled(raise_interrupted, signal.SIGUSR1):
        signal.raise_signal(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_send_to_a_closed_port_says_nothing_listens(tmp_path: Path, sample: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: the kernel answers port unreachable
    result = run("send", str(sample), "--to", f"127.0.0.1:{port}", "--timeout", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert f"nothing is listening at 127.0.0.1:{port}" in result.stderr


def test_report_option_with_a_trailing_slash_is_a_directory(tmp_path: Path, sample: Path) -> None:
    with recv_process(tmp_path, "--once", "--out", "in", "--report", "reps/") as (proc, port):
        sent = run("send", str(sample), "--to", f"127.0.0.1:{port}", cwd=tmp_path)
        proc.communicate(timeout=30)
    assert sent.returncode == 0
    (report,) = (tmp_path / "reps").glob("*.json")
    assert json.loads(report.read_text())["file"]["name"] == "sample.bin"


def _has_data(path: Path) -> bool:
    """Some of ``path`` is written (it exists and has blocks allocated)."""
    try:
        return path.stat().st_blocks > 0
    except FileNotFoundError:
        return False


def test_ctrl_c_on_the_sender_aborts_the_transfer_on_both_sides(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(1).randbytes(20_000_000))
    with recv_process(tmp_path, "--once", "--out", "in", "--report", "r.json") as (proc, port):
        sender = subprocess.Popen(
            [*UDPXFER, "send", str(big), "--to", f"127.0.0.1:{port}", "--rate", "20M",
             "--report", "send.json"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        partial = tmp_path / "in" / "big.bin.partial"
        deadline = time.monotonic() + 20
        # Bounded wait for the first chunks on disk (the partial file is sparse until then;
        # it appears at META, before any DATA, and a Ctrl-C then would send nothing).
        while not _has_data(partial) and time.monotonic() < deadline:
            select.select([], [], [], 0.02)
        assert _has_data(partial)
        sender.send_signal(signal.SIGINT)
        _, sender_err = sender.communicate(timeout=20)
        proc.communicate(timeout=20)
    assert sender.returncode == 130
    assert "interrupted" in sender_err
    assert "Traceback" not in sender_err
    assert proc.returncode == 1
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["outcome"] == "aborted"
    assert doc["file"]["path"].endswith("big.bin.partial")
    sent = json.loads((tmp_path / "send.json").read_text())  # written although interrupted
    assert (sent["outcome"], sent["verdict"]) == ("aborted", None)
    assert 0 < sent["chunks"]["sent"] < sent["chunks"]["total"]
    assert sent["session_id"] == doc["session_id"]


def test_version(tmp_path: Path) -> None:
    from udpxfer import __version__

    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"udpxfer {__version__}"
