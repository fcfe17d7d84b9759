"""A sender starts fast: what ``udpxfer send`` imports, checked in fresh processes.

The assertion is about the modules loaded (``python -X importtime`` lists every one), not a
timing: numpy, matplotlib and the report/analysis/rendering modules belong to the receiving and
reporting side only. ``benchmarks/startup.py`` measures the time itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import receiver, wait_for

pytestmark = pytest.mark.timeout(60)

# Top-level packages and udpxfer modules a sender must not load.
HEAVY = {"numpy", "matplotlib", "PIL"}
RECEIVING_SIDE = {
    "udpxfer.analysis.values",
    "udpxfer.analysis.loss",
    "udpxfer.analysis.bursts",
    "udpxfer.analysis.timing",
    "udpxfer.analysis.series",
    "udpxfer.analysis.sections",
    "udpxfer.reports.plots",
    "udpxfer.reports.render",
    "udpxfer.reports.report",
    "udpxfer.analysis.trace",
}


def imported_modules(stderr: str) -> set[str]:
    """The module names in ``-X importtime`` output ("import time: self | cumulative | name")."""
    names = {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }
    names.discard("imported package")  # the header line's last column
    return names


def run_udpxfer(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "udpxfer", *args],
        cwd=cwd, capture_output=True, text=True, timeout=45, check=False,
    )  # fmt: skip
    return result, imported_modules(result.stderr)


def assert_sender_only(modules: set[str]) -> None:
    assert (
        "udpxfer.protocol.sender" in modules
    )  # the listing is real: the send path itself is there
    assert "udpxfer.net.transport" in modules
    assert {name.split(".")[0] for name in modules} & HEAVY == set()
    assert modules & RECEIVING_SIDE == set()


def test_send_help_loads_only_the_send_path(tmp_path: Path) -> None:
    result, modules = run_udpxfer("send", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--chunk-size" in result.stdout
    assert_sender_only(modules)


@pytest.mark.parametrize(
    "extra", [(), ("--report", "-", "--json-stream")], ids=["plain", "report and stream"]
)
def test_a_real_send_loads_only_the_send_path(tmp_path: Path, extra: tuple[str, ...]) -> None:
    data = bytes(range(256)) * 1000
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    with receiver(tmp_path) as (server, results):
        port = server.address[1]
        result, modules = run_udpxfer(
            "send", str(path), "--to", f"127.0.0.1:{port}", "-q", *extra, cwd=tmp_path
        )
        wait_for(lambda: results, what="the transfer's result")
    assert result.returncode == 0, result.stderr[-2000:]
    if extra:  # the sender's report and the stream need none of the receiver's side
        assert result.stdout.splitlines()[-1].startswith('{"schema": "udpxfer.send-report/1"')
    assert results[0].verified
    assert (tmp_path / "out" / "data.bin").read_bytes() == data
    assert_sender_only(modules)
