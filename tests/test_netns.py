"""Across a real link: two network namespaces joined by a veth pair this test creates.

Needs root and iproute2 (skipped otherwise). The namespaces, their veth pair and the 10.x
addresses exist only inside this test (netns) and are removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
        reason="needs root, ip and tc to build network namespaces",
    ),
]

SENDER_NS = f"udpx-snd-{os.getpid()}"
RECEIVER_NS = f"udpx-rcv-{os.getpid()}"
RECEIVER_ADDR = "10.211.0.2"  # on the netns veth pair only
SENDER_ADDR = "10.211.0.1"  # on the netns veth pair only
UDPXFER = [sys.executable, "-m", "udpxfer"]


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


@pytest.fixture
def link() -> Iterator[None]:
    """Two namespaces, one veth pair between them, a 200 Mbit/s tbf on the sender's side."""
    veth_s, veth_r = f"ux{os.getpid() % 100000}s", f"ux{os.getpid() % 100000}r"
    try:
        sh("ip", "netns", "add", SENDER_NS)
        sh("ip", "netns", "add", RECEIVER_NS)
        sh("ip", "link", "add", veth_s, "type", "veth", "peer", "name", veth_r)
        sh("ip", "link", "set", veth_s, "netns", SENDER_NS)
        sh("ip", "link", "set", veth_r, "netns", RECEIVER_NS)
        sh("ip", "-n", SENDER_NS, "addr", "add", f"{SENDER_ADDR}/24", "dev", veth_s)
        sh("ip", "-n", RECEIVER_NS, "addr", "add", f"{RECEIVER_ADDR}/24", "dev", veth_r)
        for ns, dev in ((SENDER_NS, veth_s), (RECEIVER_NS, veth_r)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", SENDER_NS, "tc", "qdisc", "add", "dev", veth_s, "root",
           "tbf", "rate", "200mbit", "burst", "64kb", "latency", "10ms")  # fmt: skip
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot build the namespaces here: {exc.stderr.decode().strip()}")
    try:
        yield
    finally:
        for ns in (SENDER_NS, RECEIVER_NS):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@pytest.mark.parametrize("mode", ["blast", "reliable"])
def test_a_bottleneck_slows_the_sender_without_loss(link: None, tmp_path: Path, mode: str) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(10_000_000))
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", RECEIVER_NS, *UDPXFER, "recv", "--bind", "9000", "--once",
         "--out", str(tmp_path / "out"), "--report", str(tmp_path / "r.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().startswith("listening on")
        sent = subprocess.run(
            ["ip", "netns", "exec", SENDER_NS, *UDPXFER, "send", str(source),
             "--to", f"{RECEIVER_ADDR}:9000", "--mode", mode, "-q"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(timeout=10)
    assert sent.returncode == 0, sent.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["file"]["verified"] is True
    assert (tmp_path / "out" / "data.bin").read_bytes() == source.read_bytes()
    # The congestion window keeps the tbf queue from overflowing: nothing is lost ...
    assert doc["loss"]["rate"] == 0.0
    assert doc["chunks"]["retransmitted"] == 0
    # ... and the bottleneck is used, not starved (payload goodput under a 200 Mbit/s link).
    assert 50e6 < doc["timing"]["goodput_bps"] < 205e6
