"""Resume and honest accounting end to end: real `udpxfer send` and `recv` processes on
loopback, killed mid-transfer (SIGKILL, SIGINT) and run again.

Transfers are paced (``--rate 40M``, a 12 MB file: under 3 s each) so that a kill lands in the
middle; progress is read from the receiver's files (the ``NAME.partial.state`` sidecar, the
blocks the partial file holds on disk), polled with bounded deadlines.
"""

from __future__ import annotations

import base64
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

pytestmark = pytest.mark.timeout(90)

UDPXFER = [sys.executable, "-m", "udpxfer"]
# The same CLI, with this small file taking a large file's path: sent at once, the digest
# computed while it goes and announced later (``udpxfer.net.hashjobs``).
UDPXFER_HASHING_WHILE_SENDING = [
    sys.executable,
    "-c",
    "import sys, udpxfer.net.sending as s; s.HASH_WHILE_SENDING_BYTES = 0; "
    "from udpxfer.cli import main; sys.argv[0] = 'udpxfer'; main()",
]
SIZE = 12_000_000
RATE = "40M"  # 5 MB/s: about 2.4 s for the whole file


class Procs:
    """Processes a test started: any still running at its end are killed and reaped."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def recv(self, cwd: Path, port: int, *args: str) -> tuple[subprocess.Popen[str], int]:
        """``udpxfer recv`` on ``127.0.0.1:port`` (0: ephemeral) once it says it listens, and
        the port it listens on."""
        proc = self._start(cwd, "recv", "--bind", f"127.0.0.1:{port}", "--out", "in", *args)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the receiver did not start"
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        return proc, int(line.rsplit(":", 1)[1])

    def send(
        self, cwd: Path, source: Path, port: int, rate: str = RATE, *, late: bool = False
    ) -> subprocess.Popen[str]:
        return self._start(
            cwd, "send", str(source), "--to", f"127.0.0.1:{port}", "--rate", rate, "-q",
            command=UDPXFER_HASHING_WHILE_SENDING if late else UDPXFER,
        )  # fmt: skip

    def _start(self, cwd: Path, *args: str, command: list[str] = UDPXFER) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*command, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    try:
        yield started
    finally:
        started.close()


def free_port() -> int:
    """A loopback UDP port nobody holds right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def make_source(path: Path, seed: int) -> bytes:
    data = random.Random(seed).randbytes(SIZE)
    path.write_bytes(data)
    return data


def state_fraction(partial: Path) -> float:
    """Share of the file's blocks the sidecar records as synced on disk (0 without one)."""
    try:
        doc = json.loads(Path(str(partial) + ".state").read_text())
    except (OSError, ValueError):
        return 0.0  # not written yet, or being replaced this very moment
    chunks: int = -(-doc["size"] // doc["chunk_size"])
    blocks: int = -(-chunks // doc["block_chunks"])
    bits = sum(bin(byte).count("1") for byte in base64.b64decode(doc["blocks"]))
    return bits / blocks


def disk_fraction(partial: Path) -> float:
    """Share of the (sparse) partial file that has data blocks: what was written so far."""
    try:
        return min(1.0, os.stat(partial).st_blocks * 512 / SIZE)
    except OSError:
        return 0.0


def wait_for_progress(partial: Path, sender: subprocess.Popen[str], fraction: float) -> None:
    """Wait until the receiver holds ``fraction`` of the file (by the sidecar or the disk)."""

    def reached() -> bool:
        assert sender.poll() is None, f"the sender ended before {fraction:.0%}: {sender.stderr}"
        return max(state_fraction(partial), disk_fraction(partial)) >= fraction

    wait_for(reached, timeout_s=30, what=f"{partial.name} to reach {fraction:.0%}")


def wait_for_synced_blocks(partial: Path, sender: subprocess.Popen[str]) -> None:
    """Wait until the sidecar says some blocks are on disk (not all of them)."""

    def some() -> bool:
        assert sender.poll() is None, "the sender ended before any block was recorded"
        return state_fraction(partial) > 0

    wait_for(some, timeout_s=30, what=f"{partial.name}.state to record a block")
    assert state_fraction(partial) < 1


def finish(proc: subprocess.Popen[str], timeout: float = 40) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def reports(tmp_path: Path) -> list[dict[str, Any]]:
    """The receiver's reports in the order written (r.json, r-1.json, ...)."""
    paths = sorted(tmp_path.glob("r*.json"), key=lambda p: (len(p.name), p.name))
    return [json.loads(p.read_text()) for p in paths]


def assert_only_final_file(out_dir: Path, name: str) -> None:
    assert sorted(p.name for p in out_dir.iterdir()) == [name]


@dataclass
class TwoRuns:
    """A sender interrupted mid-transfer, then ``send`` run again (on the same source or a
    changed one) to the same receiver, which runs without ``--once`` and stops on SIGTERM."""

    final: bytes  # the source's content at the second run
    old_state: float  # share of blocks the sidecar held when the second run started
    out_dir: Path
    sender_out: str
    receiver_out: str
    reports: list[dict[str, Any]]


def interrupt_and_send_again(
    tmp_path: Path,
    *,
    sig: signal.Signals,
    at: float,
    change_to_seed: int | None = None,
    second_rate: str = RATE,
    late: bool = False,
) -> TwoRuns:
    """Send, stop the sender with ``sig`` once the receiver holds ``at`` of the file (0: as
    soon as its sidecar records a block), optionally change the source, and send again."""
    procs = Procs()
    try:
        source = tmp_path / "big.bin"
        data = make_source(source, seed=1)
        receiver, port = procs.recv(tmp_path, 0, "--report", "r.json")
        first = procs.send(tmp_path, source, port, late=late)
        partial = tmp_path / "in" / "big.bin.partial"
        if at:
            wait_for_progress(partial, first, at)
        else:
            wait_for_synced_blocks(partial, first)
        first.send_signal(sig)
        code, _, err = finish(first, timeout=20)
        if sig == signal.SIGINT:
            assert code == 130, err
            assert "interrupted" in err
            wait_for(lambda: len(reports(tmp_path)) == 1, timeout_s=20, what="the aborted report")
        else:
            assert code == -sig
        old_state = state_fraction(partial)
        if change_to_seed is not None:
            data = make_source(source, seed=change_to_seed)  # same size, new content and mtime

        again = procs.send(tmp_path, source, port, rate=second_rate, late=late)
        code, out, err = finish(again)
        assert code == 0, err
        receiver.send_signal(signal.SIGTERM)
        recv_code, recv_out, recv_err = finish(receiver, timeout=20)
        assert recv_code == 0, recv_err
        return TwoRuns(data, old_state, tmp_path / "in", out, recv_out, reports(tmp_path))
    finally:
        procs.close()


@pytest.fixture(scope="module", params=[False, True], ids=["hash-first", "hash-while-sending"])
def resumed_run(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> TwoRuns:
    """``kill -9`` of the sender, then the same ``send`` again."""
    return interrupt_and_send_again(
        tmp_path_factory.mktemp("resumed"), sig=signal.SIGKILL, at=0, late=request.param
    )


def test_sender_killed_and_run_again_sends_only_the_missing_part(resumed_run: TwoRuns) -> None:
    assert (resumed_run.out_dir / "big.bin").read_bytes() == resumed_run.final
    assert_only_final_file(resumed_run.out_dir, "big.bin")
    first, last = resumed_run.reports
    assert first["outcome"] == "aborted"  # the new META ended the killed sender's transfer
    assert last["outcome"] == "complete"
    assert last["file"]["path"] == str(Path("in") / "big.bin")
    chunks = last["chunks"]
    resumed, total = chunks["resumed"], chunks["total"]
    assert 0 < resumed < total
    assert resumed <= first["chunks"]["received"]  # never more than the first run delivered
    assert f"{resumed} chunks already there" in resumed_run.sender_out
    datagrams = last["datagrams"]
    assert datagrams["sender_data_sent"] == total - resumed  # the rest never travelled
    assert datagrams["session"] < total  # datagrams of this transfer: not the whole file
    assert last["loss"]["rate"] == 0.0  # chunks on disk are not lost


def test_resumed_transfer_analysis_counts_no_loss(resumed_run: TwoRuns) -> None:
    loss = resumed_run.reports[-1]["loss"]
    assert loss["bursts"]["count"] == 0
    assert loss["ci95"][0] == 0.0
    assert loss["ci95"][1] < 0.01


@pytest.mark.parametrize("late", [False, True], ids=["hash-first", "hash-while-sending"])
def test_receiver_killed_and_restarted_completes_the_running_transfer(
    tmp_path: Path, procs: Procs, late: bool
) -> None:
    # Hashing while sending, the restarted receiver sees a META with the digest, its sidecar
    # was written before the digest came: the same source all the same, and it resumes.
    source = tmp_path / "big.bin"
    data = make_source(source, seed=3)
    port = free_port()
    receiver, _ = procs.recv(tmp_path, port, "--once", "--report", "r.json")
    sender = procs.send(tmp_path, source, port, late=late)
    wait_for_synced_blocks(tmp_path / "in" / "big.bin.partial", sender)
    receiver.send_signal(signal.SIGKILL)
    receiver.communicate(timeout=10)  # reaped: the port is free again

    restarted, _ = procs.recv(tmp_path, port, "--once", "--report", "r.json")
    code, out, err = finish(sender)
    if code != 0:
        restarted.terminate()  # show what the restarted receiver saw
        raise AssertionError(f"sender: {err.strip()}; receiver: {finish(restarted)[1:]}")
    assert "verified by the receiver" in out
    recv_code, _, recv_err = finish(restarted, timeout=20)
    assert recv_code == 0, recv_err
    assert (tmp_path / "in" / "big.bin").read_bytes() == data
    assert_only_final_file(tmp_path / "in", "big.bin")
    (doc,) = reports(tmp_path)  # the killed receiver wrote none
    assert doc["outcome"] == "complete"
    assert doc["chunks"]["resumed"] > 0  # picked up from the sidecar


def assert_loss_over_what_was_sent(doc: dict[str, Any], receiver_out: str) -> None:
    """An interrupted transfer's report: chunks never sent are not_sent, not lost."""
    chunks, loss = doc["chunks"], doc["loss"]
    not_sent, total, received = chunks["not_sent"], chunks["total"], chunks["received"]
    assert 0 < not_sent < total
    assert received + not_sent <= total
    assert received >= 0.25 * total  # cut near 30%, not at the start
    assert loss["rate"] < 0.05  # clean loopback: next to nothing lost (not the 70% unsent)
    assert loss["first_pass_missing"] == total - received - not_sent
    assert f"interrupted: {not_sent} chunks never sent" in receiver_out


def test_sender_killed_counts_loss_only_over_what_was_sent(tmp_path: Path, procs: Procs) -> None:
    """After a ``kill -9`` no ABORT tells how far the sender got: the receiver's idle timeout
    ends the transfer and counts loss up to the highest first-pass chunk it saw."""
    source = tmp_path / "big.bin"
    make_source(source, seed=4)
    receiver, port = procs.recv(tmp_path, 0, "--once", "--report", "r.json", "--idle-timeout", "2")
    sender = procs.send(tmp_path, source, port)
    wait_for_progress(tmp_path / "in" / "big.bin.partial", sender, 0.3)
    sender.send_signal(signal.SIGKILL)
    assert finish(sender, timeout=20)[0] == -signal.SIGKILL
    recv_code, recv_out, _ = finish(receiver, timeout=20)
    assert recv_code == 1
    (doc,) = reports(tmp_path)
    assert doc["outcome"] == "timeout"
    assert_loss_over_what_was_sent(doc, recv_out)


@pytest.fixture(scope="module", params=[False, True], ids=["hash-first", "hash-while-sending"])
def changed_run(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> TwoRuns:
    """Ctrl-C of the sender near 30%, then a changed source (same name and size) sent again."""
    return interrupt_and_send_again(
        tmp_path_factory.mktemp("changed"),
        sig=signal.SIGINT,
        at=0.3,
        change_to_seed=2,
        second_rate="0",
        late=request.param,
    )


def test_sender_interrupted_counts_loss_only_over_what_was_sent(changed_run: TwoRuns) -> None:
    aborted = changed_run.reports[0]
    assert aborted["outcome"] == "aborted"
    assert_loss_over_what_was_sent(aborted, changed_run.receiver_out)


def test_changed_source_starts_over_and_never_splices(changed_run: TwoRuns) -> None:
    assert changed_run.old_state > 0  # the old version left a resumable partial file
    assert (changed_run.out_dir / "big.bin").read_bytes() == changed_run.final
    assert_only_final_file(changed_run.out_dir, "big.bin")
    _, last = changed_run.reports
    assert last["outcome"] == "complete"
    assert last["chunks"]["resumed"] == 0
    assert last["datagrams"]["sender_data_sent"] == last["chunks"]["total"]
    assert "already there" not in changed_run.sender_out
