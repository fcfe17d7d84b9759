"""The sender's file: digests in one pass, and a resident set that stays small."""

from __future__ import annotations

import hashlib
import mmap
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import receiver, wait_for

import udpxfer.net.source as source_module
from udpxfer.net.source import (
    AROUND_BYTES,
    DROP_STEP_BYTES,
    MappedFile,
    SentPages,
    file_digests,
)
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.sender_data import DataRun
from udpxfer.protocol.wire import Mode, block_chunks_for, chunk_count_for

PAGE = mmap.PAGESIZE
MIB = 1 << 20
LINUX_PROC = Path("/proc/self/status").exists()


def resident_file_kib() -> int:
    """Our mapped file pages in memory now (Linux ``RssFile``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile")


@pytest.mark.parametrize("size", [0, 1, 1400, 5 * 1400 + 3, 3 * MIB + 17])
def test_digests_equal_hashlib_and_release_the_whole_file_in_order(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "HASH_STEP_BYTES", 256 * 1024)
    data = random.Random(size).randbytes(size)
    released: list[tuple[int, int]] = []
    digest, blocks = file_digests(data, 1400, done=lambda a, b: released.append((a, b)))
    assert digest == hashlib.sha256(data).digest()
    block_bytes = block_chunks_for(chunk_count_for(size, 1400), 1400) * 1400
    expected = [
        hashlib.sha256(data[start : start + block_bytes]).digest()
        for start in range(0, size, block_bytes or 1)
    ]
    assert list(blocks) == expected
    # Back to back from 0 to the end, never a byte released twice.
    ends = [0] + [end for _, end in released]
    assert [start for start, _ in released] == ends[:-1]
    assert ends[-1] == size
    assert all(b > a for a, b in released)


class RecordingFile:
    """A stand-in for MappedFile that records what is dropped."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.drops: list[tuple[int, int]] = []

    def drop(self, start: int, end: int) -> None:
        self.drops.append((start, end))


def test_the_first_pass_drops_behind_itself_in_steps_and_a_repair_drops_around_itself() -> None:
    chunk = 1000
    size = 3 * DROP_STEP_BYTES + 12_345
    chunks = chunk_count_for(size, chunk)
    file = RecordingFile(size)
    pages = SentPages(file, chunk)  # type: ignore[arg-type]
    for first in range(0, chunks, 64):
        pages.sent(first, min(64, chunks - first))
    starts = [start for start, _ in file.drops]
    ends = [end for _, end in file.drops]
    assert starts == [0, *ends[:-1]]  # contiguous, each byte once
    assert ends[-1] == size
    assert all(b - a >= DROP_STEP_BYTES for a, b in file.drops[:-1])
    assert len(file.drops) == 3  # two whole steps, then the rest at the end
    file.drops.clear()
    pages.sent(5000, 1)  # bytes 5,000,000 .. 5,001,000
    pages.sent(chunks - 1, 1)
    assert file.drops == [
        (2 * AROUND_BYTES, 3 * AROUND_BYTES),
        ((size - 1) // AROUND_BYTES * AROUND_BYTES, 7 * AROUND_BYTES),
    ]


@pytest.mark.skipif(not LINUX_PROC, reason="reads /proc/self/status")
def test_dropped_pages_leave_the_resident_set_and_read_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    data = random.Random(1).randbytes(32 * MIB + 100)
    path.write_bytes(data)
    source = MappedFile(path)
    try:
        before = resident_file_kib()
        assert hashlib.sha256(source.data).digest() == hashlib.sha256(data).digest()
        assert resident_file_kib() - before > 24 * 1024
        source.drop(PAGE // 2, len(data))  # the first page is only partly inside: it stays
        assert resident_file_kib() - before < 1024
        assert hashlib.sha256(source.data).digest() == hashlib.sha256(data).digest()
    finally:
        source.close()


SENDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from udpxfer.net.sending import send_file
    from udpxfer.units import Address

    session = send_file(Path(sys.argv[1]), Address("127.0.0.1", int(sys.argv[2])))
    print(session.outcome.outcome)
    print(Path("/proc/self/status").read_text())
    """
)


@pytest.mark.skipif(not LINUX_PROC, reason="reads /proc/self/status")
def test_a_large_send_keeps_the_senders_peak_resident_set_far_below_the_file(
    tmp_path: Path,
) -> None:
    size = 256 * MIB
    path = tmp_path / "large.bin"
    block = random.Random(2).randbytes(MIB)
    with path.open("wb") as out:
        for _ in range(size // MIB):
            out.write(block)
    with receiver(tmp_path) as (server, results):
        done = subprocess.run(
            [sys.executable, "-c", SENDER, str(path), str(server.address[1])],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        wait_for(lambda: len(results) == 1, timeout_s=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "complete"
    assert results[0].verified
    status = dict(line.split(":", 1) for line in done.stdout.splitlines()[1:] if ":" in line)
    peak_kib = int(status["VmHWM"].split()[0])
    # The whole file stayed resident before: a peak above its size. Now the interpreter,
    # a few MiB of the hashing pass and of the send window.
    assert peak_kib * 1024 < size // 3, status["VmHWM"]


def test_data_runs_say_which_chunk_they_start_at() -> None:
    data = bytes(range(256)) * 4000
    session = SenderSession(
        data,
        name="x",
        sha256=hashlib.sha256(data).digest(),
        session_id=1,
        now=0.0,
        config=SenderConfig(chunk_size=1000, mode=Mode.BLAST, congestion_control=False),
    )
    runs = [item for item in session.transmit(0.0) if isinstance(item, DataRun)]
    assert runs
    expected = 0
    for run in runs:
        assert run.first == expected
        assert b"".join(run.pieces[1::3])[:1000] == data[run.first * 1000 : run.first * 1000 + 1000]
        expected += run.count
