"""``udpxfer compare`` in a real lab: namespaces, the TUN router, teardown, Ctrl-C.

Needs root, iproute2 and /dev/net/tun (skipped otherwise). Everything runs inside network
namespaces that the lab creates (udpxfer-<pid>-...) and removes; the 10.201.x addresses exist
only there.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from udpxfer.lab.impair.models import Impairment
from udpxfer.lab.live import LiveLab, netem_available
from udpxfer.lab.netns import Backend, describe_lab, in_netns, list_namespaces, list_root_links

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or not os.path.exists("/dev/net/tun"),
        reason="needs root, iproute2 and /dev/net/tun to build the lab",
    ),
]
UDPXFER = [sys.executable, "-m", "udpxfer"]
SO_RCVBUFFORCE = 33  # Linux: root may exceed rmem_max
SO_TIMESTAMPNS = 35  # Linux: a struct timespec of arrival (CLOCK_REALTIME) with each datagram
UNBUFFERED = {**os.environ, "PYTHONUNBUFFERED": "1"}  # read progress lines as they come


def _lab_state() -> tuple[set[str], set[str]]:
    """The udpxfer namespaces and links that exist (every name the lab creates starts so;
    other people's namespaces on a shared machine come and go and are not ours to check)."""
    return (
        {name for name in list_namespaces() if name.startswith("udpxfer")},
        {name for name in list_root_links() if name.startswith("udpxfer")},
    )


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("backend", [Backend.TUN, Backend.NETEM])
def test_router_applies_loss_and_delay_and_leftovers_go(backend: Backend) -> None:
    if backend is Backend.NETEM and not netem_available():
        pytest.skip("this kernel has no sch_netem")
    before = _lab_state()
    stale = f"udpxfer-{_dead_pid()}-a"  # as a crashed run would leave it
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    loss, delay_s, count = 0.1, 0.03, 2000
    spec = describe_lab(backend, Impairment(loss=loss, delay_s=delay_s), Impairment(), seed=5)
    with LiveLab(spec) as lab:
        assert stale in lab.removed_leftovers
        assert stale not in list_namespaces()
        rx = in_netns(spec.b.netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        tx = in_netns(spec.a.netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        with rx, tx:
            rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # the kernel's arrival time
            rx.bind((spec.b.address, 7000))
            delays = []
            for seq in range(count):
                tx.sendto(struct.pack("!Id", seq, time.time()), (spec.b.address, 7000))
                if seq % 50 == 49:  # let the router take them: no queue overflows on the way
                    _wait_router_took(lab, seq + 1)
                    delays += _drain(rx, 0.0)
            delays += _drain(rx, 1.0)  # the last ones are still 30 ms away
        counters = lab.router_counters()["forward"]
    after = _lab_state()
    # Binomial: 2000 draws at p = 0.1 have a standard deviation of 13.4 losses; 5 sigma.
    lost = count - len(delays)
    assert abs(lost - count * loss) < 5 * (count * loss * (1 - loss)) ** 0.5
    assert sum(counters["dropped"].values()) == lost
    # Scheduled 30 ms; a loaded machine adds some, never removes any.
    assert min(delays) >= delay_s - 0.001
    assert statistics.median(delays) < delay_s + 0.008
    assert after == before


def _wait_router_took(lab: LiveLab, n: int) -> None:
    """Until the router (TUN policy or netem qdisc) has handled ``n`` datagrams."""
    deadline = time.monotonic() + 10
    while lab.router_counters()["forward"]["datagrams_in"] < n:
        assert time.monotonic() < deadline, "the router stopped reading"
        time.sleep(0.001)  # polling a counter, bounded by the deadline


def _drain(sock: socket.socket, wait_s: float) -> list[float]:
    """One-way delays of everything arriving until ``wait_s`` of silence."""
    out = []
    while select.select([sock], [], [], wait_s)[0]:
        data, ancillary, _, _ = sock.recvmsg(64, 64)
        (_, _, stamp) = ancillary[0]
        sec, nsec = struct.unpack("qq", stamp[:16])
        out.append(sec + nsec / 1e9 - struct.unpack("!Id", data)[1])
    return out


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "two-mb.bin"
    path.write_bytes(os.urandom(2 * 1024 * 1024))
    return path


def test_compare_runs_all_three_and_leaves_nothing(tmp_path: Path, source: Path) -> None:
    before = _lab_state()
    out = tmp_path / "out"
    done = subprocess.run(
        [*UDPXFER, "compare", str(source), "--loss", "1%", "--delay", "5ms", "--direction",
         "both", "--runs", "1", "--out", str(out), "--seed", "3", "--timeout", "60"],
        capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip
    after = _lab_state()
    assert done.returncode == 0, done.stdout + done.stderr
    assert after == before
    doc = json.loads((out / "compare.json").read_text())
    assert doc["schema"] == "udpxfer.compare/1"
    assert {"impairment", "lab", "runs", "model", "sweep"} <= doc.keys()
    assert doc["lab"]["backend"] in ("tun", "netem")  # auto: netem where the kernel has it
    assert doc["lab"]["mtu"] == 1500
    by_mode = {run["mode"]: run for run in doc["runs"]}
    assert set(by_mode) == {"stream", "reliable", "blast"}
    assert by_mode["stream"]["verified"]
    assert by_mode["reliable"]["verified"]
    for run in by_mode.values():
        assert run["goodput_bps"] > 0
        assert run["wire_bytes"] > 0.9 * source.stat().st_size
        # the router dropped about 1% of the packets of every run
        assert 0.0 < run["loss_applied"] < 0.04
    assert by_mode["stream"]["tcp_info"]["total_retrans"] == by_mode["stream"]["retransmitted"]
    assert by_mode["stream"]["retransmitted"] > 0  # the kernel saw the loss and repaired it
    model = doc["model"]
    assert 0.009 < model["rtt_s"] < 0.03  # 5 ms each way plus the machine
    assert model["mathis_bps"] > 0
    assert doc["latency"]["udp_echo"]["received"] > 0
    page = (out / "compare.html").read_text()
    assert page.count('<img src="data:image/png;base64,') >= 3
    assert "Mathis model" in done.stdout


def test_ctrl_c_during_a_run_tears_the_lab_down(tmp_path: Path, source: Path) -> None:
    before = _lab_state()
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*UDPXFER, "compare", str(source), "--loss", "2%", "--delay", "40ms", "--runs", "3",
         "--transports", "tcp", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=UNBUFFERED,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and not line.startswith("point 1/1"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
        # The lab is up and the first transfer starting: its processes run in the namespaces.
        assert f"udpxfer-{proc.pid}-a" in list_namespaces()
        _wait_for_runs(out, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert _lab_state() == before
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert leftover.stdout == "", "processes of the run are still alive"
    assert json.loads((out / "compare.json").read_text())["complete"] is False


def _wait_for_runs(out: Path, proc: subprocess.Popen[str]) -> None:
    """Until a transfer's processes exist (its working directory appears)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list((out / "runs").glob("*/sender.log")) if (out / "runs").exists() else []
        if logs:
            return
        time.sleep(0.05)  # polling for a file, bounded by the deadline
    raise AssertionError("no transfer started within 60 s")


def test_lab_up_status_down(tmp_path: Path) -> None:
    before = _lab_state()
    up = subprocess.Popen(
        [*UDPXFER, "lab", "up", "--delay", "10ms"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=UNBUFFERED,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        lines = []
        while not (lines and lines[-1].startswith("lab up")):
            lines.append(up.stdout.readline())
            assert lines[-1], up.stderr.read() if up.stderr else ""
        text = "".join(lines)
        assert re.search(rf"netns udpxfer-{up.pid}-a .* address 10\.201\.1\.1", text)
        status = subprocess.run([*UDPXFER, "lab", "status"], capture_output=True, text=True,
                                timeout=30, check=True)  # fmt: skip
        assert f"lab of pid {up.pid}: up" in status.stdout
        assert "a->b: delay 10 ms" in status.stdout
        down = subprocess.run(
            [*UDPXFER, "lab", "down", "--pid", str(up.pid)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert down.returncode == 0, down.stderr
        rest, _ = up.communicate(timeout=20)
        assert "lab removed" in rest
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate(timeout=10)
    assert _lab_state() == before
