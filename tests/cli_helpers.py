"""The command line run inside the test process, for cases that end before any socket opens."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from udpxfer.cli import app


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
