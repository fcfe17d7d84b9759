"""Rough edges found by trying udpxfer as a new user would: one test each."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import Ran
from cli_helpers import run_in_process as run
from companion_helpers import WAIT_S, background, running
from test_analysis import gilbert_elliott_losses, synthetic_trace
from test_render import make_report

from udpxfer.companions.udp_echo import run_udp_echo_server
from udpxfer.errors import UsageError
from udpxfer.lab.impair.models import GilbertElliott
from udpxfer.reports.report import summary_lines


def one_line_error(result: Ran) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def small_run() -> tuple[dict[str, Any], Any]:
    trace = synthetic_trace(gilbert_elliott_losses(400, p=0.05, r=0.4, seed=3), seed=3)
    return make_report(trace), trace


@pytest.mark.damaged_reports
def test_report_missing_keys_exits_2_naming_the_key(
    tmp_path: Path, small_run: tuple[dict[str, Any], Any]
) -> None:
    doc = dict(small_run[0])
    del doc["file"]
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(doc))
    line = one_line_error(run("report", str(damaged), "--out", str(tmp_path), cwd=tmp_path))
    assert line == f"udpxfer: error: {damaged} is a damaged report: no 'file' key"
    doc = dict(small_run[0], chunks={**small_run[0]["chunks"], "total": "many"})
    damaged.write_text(json.dumps(doc))
    line = one_line_error(run("report", str(damaged), "--out", str(tmp_path), cwd=tmp_path))
    assert line.endswith("'chunks.total' has the wrong type (str)")


def test_fake_traces_never_get_numpys_unsafe_advice(tmp_path: Path) -> None:
    objects = tmp_path / "objects.npz"
    np.savez(objects, format=np.array([{"a": 1}], dtype=object))
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"a": 1}))
    for path, reason in (
        (objects, "it holds Python objects, which udpxfer never loads"),
        (pickled, "not an .npz archive"),
    ):
        line = one_line_error(run("report", str(path), cwd=tmp_path))
        assert line == f"udpxfer: error: bad trace file {path}: {reason}"
        assert "allow_pickle" not in line


def test_udp_echo_server_answers_an_empty_datagram() -> None:
    with running(run_udp_echo_server) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(WAIT_S)
            sock.sendto(b"", ("127.0.0.1", server.control.port))
            data, peer = sock.recvfrom(100)
        served = server.stop()
    assert data == b""
    assert peer[1] == server.control.port
    assert served.requests == 1


@pytest.mark.parametrize(
    "args",
    [
        ("send", "x", "--to", "127.0.0.1:0"),
        ("tcp", "send", "x", "--to", "127.0.0.1:0"),
        ("udp", "echo-client", "--to", "127.0.0.1:0"),
        ("impair", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:0"),
    ],
)
def test_port_zero_as_a_peer_is_refused_at_once(tmp_path: Path, args: tuple[str, ...]) -> None:
    started = time.monotonic()
    line = one_line_error(run(*args, cwd=tmp_path))
    assert "port 0 cannot be sent to" in line
    assert time.monotonic() - started < 10  # not after a timeout


def test_a_gilbert_bad_state_that_never_ends_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="r is 0"):
        GilbertElliott(0.05, 0.0)
    assert GilbertElliott(0.0, 0.0).loss_rate == 0.0  # never entered: fine
    line = one_line_error(
        run("impair", "--listen", "127.0.0.1:0", "--to", "9", "--gilbert", "5%,0", cwd=tmp_path)
    )
    assert "the first burst would never end" in line


def test_a_second_sigterm_does_not_kill_a_stopping_tcp_server() -> None:
    with background("tcp", "echo-server", "--bind", "127.0.0.1:0") as server:
        server.port()
        os.kill(server.proc.pid, signal.SIGTERM)
        os.kill(server.proc.pid, signal.SIGTERM)
        assert server.finish() == 0, server.stderr
    assert "TCP echo server stopped" in server.lines[-1]


def test_summary_words(small_run: tuple[dict[str, Any], Any]) -> None:
    doc = json.loads(json.dumps(small_run[0]))
    doc["outcome"], doc["reason"] = "incomplete", ""
    doc["loss"]["bursts"].update(count=1, mean_length=1.0, max_length=1)
    lines = summary_lines(doc)
    assert "verdict   INCOMPLETE" in lines
    assert any(line.startswith("bursts    1 (mean 1.00, max 1 chunk)") for line in lines)
    doc["outcome"], doc["reason"] = "timeout", "no datagram for 10 s"
    assert "verdict   INCOMPLETE (timeout: no datagram for 10 s)" in summary_lines(doc)
    timing = next(line for line in lines if line.startswith("timing"))
    assert "(first to last chunk), goodput " in timing
    assert all(len(line) <= 80 for line in lines if not line.startswith("file"))


def test_pages_are_named_after_their_input(
    tmp_path: Path, small_run: tuple[dict[str, Any], Any]
) -> None:
    doc, trace = small_run
    (tmp_path / "run-a.json").write_text(json.dumps(doc))
    trace.save(tmp_path / "run-b.npz")
    out = tmp_path / "pages"
    for name in ("run-a.json", "run-b.npz"):
        done = run("report", name, "--out", str(out), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("*.html")) == ["run-a.html", "run-b.html"]


def test_recv_out_at_a_regular_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "incoming").write_text("")
    line = one_line_error(run("recv", "--bind", "127.0.0.1:0", "--out", "incoming", cwd=tmp_path))
    assert line == "udpxfer: error: incoming is a file, not a directory"
