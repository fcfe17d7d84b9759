"""A script author's session: JSON on stdout, a sender report, an NDJSON stream, safe paths."""

from __future__ import annotations

import json
import os
import random
import select
import socket
import stat
import subprocess
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import UDPXFER, WAIT_S, recv_process, run, run_in_process
from schemas import validate


def receiver(cwd: Path, *args: str) -> AbstractContextManager[tuple[subprocess.Popen[str], int]]:
    """``recv --once`` on an ephemeral loopback port."""
    return recv_process(cwd, "--once", *args)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.bin"
    path.write_bytes(random.Random(1).randbytes(200_000))
    return path


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT_S)
    return proc.returncode, out, err


def test_report_dash_puts_one_json_document_on_stdout_and_nothing_else(
    tmp_path: Path, sample: Path
) -> None:
    with receiver(tmp_path, "--report", "-") as (proc, port):
        sent = run("send", str(sample), "--to", f"127.0.0.1:{port}", "--report", "-", cwd=tmp_path)
        code, out, err = finish(proc)
    assert (code, sent.returncode) == (0, 0), (err, sent.stderr)
    received = json.loads(out)  # the whole of stdout is one document
    sender = json.loads(sent.stdout)
    validate(received)
    validate(sender)
    assert received["file"]["verified"]
    assert sender["file"]["verified"]
    assert sender["session_id"] == received["session_id"]
    assert sender["verdict"] == "verified"
    assert sender["chunks"]["sent"] == received["chunks"]["total"]
    assert "verdict   complete, SHA-256 verified" in err  # the human summary went to stderr
    assert "verified by the receiver" in sent.stderr
    assert not list((tmp_path / "reports").glob("*.json"))  # and no report file instead


def test_json_stream_lines_parse_are_monotonic_and_end_with_the_report(
    tmp_path: Path, sample: Path
) -> None:
    with receiver(tmp_path, "--json-stream", "--interval", "0.1") as (proc, port):
        sent = run(
            "send", str(sample), "--to", f"127.0.0.1:{port}", "--rate", "8M",
            "--json-stream", "--interval", "0.1", cwd=tmp_path,
        )  # fmt: skip
        code, out, err = finish(proc)
    assert (code, sent.returncode) == (0, 0), (err, sent.stderr)
    for side, text, schema in (
        ("send", sent.stdout, "udpxfer.send-report/1"),
        ("recv", out, "udpxfer.report/1"),
    ):
        docs = [json.loads(line) for line in text.splitlines()]
        records, final = docs[:-1], docs[-1]
        assert final["schema"] == schema
        validate(final)
        assert len(records) >= 2, text  # 200 kB at 8 Mbit/s: 0.2 s, two 0.1 s intervals
        for record in records:
            validate(record)
            assert record["side"] == side
            assert record["start_s"] <= record["end_s"]
        ends = [r["end_s"] for r in records]
        totals = [r["total"]["bytes"] for r in records]
        assert ends == sorted(ends)
        assert totals == sorted(totals)
        assert sum(r["interval"]["bytes"] for r in records) == totals[-1]
        assert [r["start_s"] for r in records[1:]] == ends[:-1]  # intervals tile the time
    recv_records = [json.loads(line) for line in out.splitlines()[:-1]]
    assert recv_records[-1]["total"]["chunks"] == final["chunks"]["total"]
    # The receiver's report file is still written: a receiver always keeps its reports.
    assert len(list((tmp_path / "reports").glob("*.json"))) == 1


def test_send_report_file_is_never_overwritten(tmp_path: Path, sample: Path) -> None:
    earlier = tmp_path / "send.json"
    earlier.write_text("earlier run\n")
    with receiver(tmp_path) as (proc, port):
        sent = run("send", str(sample), "--to", f"127.0.0.1:{port}", "--mode", "blast",
                   "--report", str(earlier), cwd=tmp_path)  # fmt: skip
        finish(proc)
    assert sent.returncode == 0, sent.stderr
    assert earlier.read_text() == "earlier run\n"
    doc = json.loads((tmp_path / "send-1.json").read_text())
    validate(doc)
    assert (doc["mode"], doc["chunks"]["sent"], doc["chunks"]["resent"]) == ("blast", 143, 0)
    assert doc["timing"]["first_pass_rate_bps"] > 0
    assert f"report    {tmp_path / 'send-1.json'}" in sent.stdout


def test_report_at_a_symlink_leaves_link_and_target_alone(tmp_path: Path, sample: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("keep me\n")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    with receiver(tmp_path, "--report", str(link)) as (proc, port):
        run("send", str(sample), "--to", f"127.0.0.1:{port}", cwd=tmp_path)
        code, out, _ = finish(proc)
    assert code == 0
    assert link.is_symlink()
    assert os.readlink(link) == str(target)
    assert target.read_text() == "keep me\n"
    assert json.loads((tmp_path / "latest-1.json").read_text())["file"]["verified"]
    assert f"report    {tmp_path / 'latest-1.json'}" in out


def test_report_at_dev_stdout_writes_to_stdout_and_keeps_the_link(
    tmp_path: Path, sample: Path
) -> None:
    was_link = os.path.islink("/dev/stdout")
    with receiver(tmp_path, "--report", "/dev/stdout") as (proc, port):
        run("send", str(sample), "--to", f"127.0.0.1:{port}", cwd=tmp_path)
        code, out, _ = finish(proc)
    assert code == 0
    assert json.loads(out)["file"]["verified"]
    assert os.path.islink("/dev/stdout") == was_link


def test_unwritable_report_or_trace_fails_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    for option in ("--report", "--trace"):
        done = run_in_process(
            "recv", "--bind", "127.0.0.1:0", option, f"{blocker}/x/run.npz", cwd=tmp_path
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"udpxfer: error: {blocker} is a file, not a directory"
        ]
    # The real stdout of a process of its own: what /dev/stdout leads to is the point.
    stdout_trace = run("recv", "--bind", "127.0.0.1:0", "--trace", "/dev/stdout", cwd=tmp_path,
                       timeout=20)  # fmt: skip
    assert stdout_trace.returncode == 2
    assert "is stdout, which is not possible here" in stdout_trace.stderr
    done = run_in_process("recv", "--bind", "127.0.0.1:0", "--trace", "-", cwd=tmp_path)
    assert done.returncode == 2
    assert "give a file path" in done.stderr
    sent = run_in_process("send", "x", "--report", f"{blocker}/r.json", cwd=tmp_path)
    assert sent.returncode == 2
    assert "is a file, not a directory" in sent.stderr


@pytest.mark.parametrize("stream", [False, True], ids=["report", "json-stream"])
def test_tcp_recv_and_send_report_dash(tmp_path: Path, sample: Path, stream: bool) -> None:
    extra = ["--json-stream", "--interval", "0.1"] if stream else []
    proc = subprocess.Popen(
        [*UDPXFER, "tcp", "recv", "--bind", "127.0.0.1:0", "--once", "--report", "-", "-q",
         *extra],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        port = None
        while port is None:
            ready, _, _ = select.select([proc.stderr], [], [], WAIT_S)
            assert ready, "tcp receiver did not start"
            line = proc.stderr.readline()
            if "listening on 127.0.0.1:" in line:
                port = int(line.split("listening on 127.0.0.1:")[1].split()[0].rstrip(")"))
        sent = run("tcp", "send", str(sample), "--to", f"127.0.0.1:{port}", "--report", "-",
                   *extra, cwd=tmp_path)  # fmt: skip
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert (code, sent.returncode) == (0, 0), err
    *records, last = (json.loads(line) for line in out.splitlines())
    *sent_records, sender = (json.loads(line) for line in sent.stdout.splitlines())
    assert bool(records) == bool(sent_records) == stream  # else stdout is the report alone
    for record in (*records, *sent_records):
        validate(record)
        assert record["transport"] == "tcp"
        assert record["interval"]["datagrams"] is None
    for side in (records, sent_records):
        if side:
            assert side[-1]["total"]["bytes"] == sample.stat().st_size
            assert sum(r["interval"]["bytes"] for r in side) == sample.stat().st_size
    doc: dict[str, Any] = last
    validate(doc)
    assert doc["transport"] == "tcp"
    assert doc["file"]["verified"]
    validate(sender)
    assert (sender["transport"], sender["verdict"]) == ("tcp", "verified")
    assert sender["file"]["sha256_expected"] == doc["file"]["sha256_expected"]
    assert "receiver verified" in sent.stderr


def test_tcp_send_writes_its_report_when_the_receiver_drops_it(
    tmp_path: Path, sample: Path
) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(WAIT_S)

    def accept_and_drop() -> None:
        conn, _ = server.accept()
        conn.recv(100)
        conn.close()

    thread = threading.Thread(target=accept_and_drop)
    thread.start()
    try:
        port = server.getsockname()[1]
        report = tmp_path / "tcp-send.json"
        sent = run("tcp", "send", str(sample), "--to", f"127.0.0.1:{port}", "--report",
                   str(report), cwd=tmp_path)  # fmt: skip
    finally:
        thread.join(WAIT_S)
        server.close()
    assert sent.returncode == 1, sent.stderr
    doc = json.loads(report.read_text())
    validate(doc)
    assert (doc["outcome"], doc["verdict"], doc["file"]["verified"]) == ("failed", None, False)
    assert doc["reason"] in sent.stderr


def test_report_into_a_fifo_reaches_its_reader(tmp_path: Path, sample: Path) -> None:
    fifo = tmp_path / "reports.fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()  # blocks in open() until the receiver opens the FIFO to write
    try:
        with receiver(tmp_path, "--report", str(fifo)) as (proc, port):
            run("send", str(sample), "--to", f"127.0.0.1:{port}", cwd=tmp_path)
            code, out, _ = finish(proc)
    finally:
        if reader.is_alive():
            with open(fifo, "wb"):  # let a reader still waiting go
                pass
        reader.join(WAIT_S)
    assert code == 0
    doc = json.loads(got[0])
    validate(doc)
    assert doc["file"]["verified"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO, not replaced by a file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("reports-")]
    assert f"report    {fifo}" in out


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("option", ["--report", "--trace"])
def test_a_directory_that_refuses_files_fails_at_start_even_as_root(
    tmp_path: Path, option: str
) -> None:
    """Permission bits say yes to root everywhere; /proc takes no new file all the same."""
    done = run_in_process("recv", "--bind", "127.0.0.1:0", option, "/proc/run.npz", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("udpxfer: error: directory /proc is not writable")
