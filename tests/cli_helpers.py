"""The command line in tests: in this process for cases that end before any socket opens,
else as a real ``udpxfer`` process."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from udpxfer.cli import app

UDPXFER = [sys.executable, "-m", "udpxfer"]
WAIT_S = 30


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_in_process(*args: str, cwd: Path) -> Ran:
    """The command line in this process (no interpreter start-up per case): every case here
    fails or finishes before any socket is opened."""
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(previous)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``udpxfer ARGS`` as a process, to its end."""
    return subprocess.run(
        [*UDPXFER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@contextmanager
def recv_process(cwd: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``udpxfer recv`` on an ephemeral loopback port; yields the process and its port.

    Its "listening on" line is on stderr when stdout carries JSON (``--report -``,
    ``/dev/stdout``, ``--json-stream``), on stdout otherwise.
    """
    proc = subprocess.Popen(
        [*UDPXFER, "recv", "--bind", "127.0.0.1:0", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        machine = "-" in args or "--json-stream" in args or "/dev/stdout" in args
        line = _listening_line((proc.stderr if machine else proc.stdout).fileno())
        assert line.startswith("listening on 127.0.0.1:"), line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _listening_line(fd: int) -> str:
    """The receiver's "listening on" line, after any notes before it (no --key-file...).

    Read from the descriptor itself, not through a buffered file, so that ``select`` sees
    every line that has not been read yet.
    """
    text = ""
    while True:
        for line in text.splitlines(keepends=True):
            if line.startswith("listening on") and line.endswith("\n"):
                return line.rstrip("\n")
        ready, _, _ = select.select([fd], [], [], WAIT_S)
        assert ready, "receiver did not start"
        data = os.read(fd, 4096)
        assert data, f"receiver ended before listening: {text}"
        text += data.decode()
