"""Helpers for the companion tests: servers in threads, the CLI in subprocesses, bounded waits.

Everything binds 127.0.0.1 port 0 and learns the real port from the server itself; every
wait has a deadline, none is a bare sleep.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import wait_for as wait_for  # re-exported: one bounded wait for all tests

from udpxfer.companions.runtime import ServerControl
from udpxfer.units import Address

REPO = Path(__file__).resolve().parents[1]
LOCAL = Address("127.0.0.1", 0)
WAIT_S = 15.0


@dataclass
class RunningServer:
    """A companion server running in a thread; ``result`` is set once it returned."""

    control: ServerControl
    logs: list[str]
    thread: threading.Thread
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.control.port)

    def stop(self) -> Any:
        """Stop the server, wait for its thread and return what the server function returned."""
        self.control.stop()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "server did not stop"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome.get("result")

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.logs)


@contextmanager
def running(
    server: Callable[..., Any], bind: Address = LOCAL, **kwargs: Any
) -> Iterator[RunningServer]:
    """Run ``server(bind, log=..., ready=..., handle_signals=False, **kwargs)`` in a thread."""
    ready: queue.Queue[Any] = queue.Queue()
    logs: list[str] = []
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = server(
                bind, log=logs.append, ready=ready.put, handle_signals=False, **kwargs
            )
        except BaseException as exc:
            outcome["error"] = exc
            ready.put(exc)

    thread = threading.Thread(target=target, name=f"server-{server.__name__}", daemon=True)
    thread.start()
    first = ready.get(timeout=WAIT_S)
    if isinstance(first, BaseException):
        thread.join(WAIT_S)
        raise first
    handle = RunningServer(first, logs, thread, outcome)
    try:
        yield handle
    finally:
        if thread.is_alive():
            first.stop()
            thread.join(WAIT_S)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(
    *args: str, input: bytes | None = None, timeout_s: float = 30.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m udpxfer ARGS`` to completion; stdout and stderr decoded as UTF-8."""
    done = subprocess.run(
        [sys.executable, "-m", "udpxfer", *args],
        input=input,
        capture_output=True,
        timeout=timeout_s,
        env=cli_env(),
        cwd=cwd or REPO,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


class CliProcess:
    """``python -m udpxfer ARGS`` (or ``command``) in the background; a thread reads stdout."""

    def __init__(self, *args: str, cwd: Path | None = None, command: list[str] | None = None):
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "udpxfer", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
            cwd=cwd or REPO,
        )
        self.lines: list[str] = []
        self._errors: list[bytes] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._error_reader = threading.Thread(target=self._read_errors, daemon=True)
        self._error_reader.start()

    @property
    def stderr(self) -> str:
        return b"".join(self._errors).decode("utf-8", "replace")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._new:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._new.notify_all()

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        while data := self.proc.stderr.read1(65536):
            self._errors.append(data)

    def expect(self, pattern: str, timeout_s: float = WAIT_S) -> re.Match[str]:
        """Wait for a stdout line matching ``pattern`` (regex search)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._new:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._new.wait(min(left, 0.1))
        raise AssertionError(f"no line matching {pattern!r} in {self.lines!r}")

    def port(self) -> int:
        """The port the server says it listens on."""
        return int(self.expect(r"listening on .*:(\d+) \(")[1])

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout_s: float = WAIT_S) -> int:
        """Wait for the exit status and the end of its output (killing it if it overstays)."""
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            self.close()
        return self.proc.returncode

    def close(self) -> None:
        """Kill the process (by its pid) if it still runs; wait for its output to be read."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(WAIT_S)
        self._error_reader.join(WAIT_S)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@contextmanager
def background(*args: str, **kwargs: Any) -> Iterator[CliProcess]:
    """A :class:`CliProcess` that is killed (by its own pid) if the test leaves it running."""
    process = CliProcess(*args, **kwargs)
    try:
        yield process
    finally:
        process.close()
