"""Cost against file size: time and peak memory of both ends for large reliable transfers.

Each row sends a random file (written to a scratch directory, removed afterwards) from a
``udpxfer send`` process to a ``udpxfer recv --once`` process over loopback, through
``udpxfer impair --loss 1%`` (and, with ``--direct``, also without the relay). Every process
is sampled every 50 ms from ``/proc/PID/status``: the peaks of VmRSS (everything resident,
the mapped file included) and of RssAnon (the process's own memory: heap, arrays, buffers),
and VmHWM (the kernel's own peak of VmRSS, read at the last sample). The wall clock runs from
starting the sender until both ends have exited; the received file must hash to the source.

    python benchmarks/scale.py [--sizes 1G,4G] [--huge] [--direct] [--dir /tmp]

``--huge`` adds a 16 GiB file (needs twice that on disk; checked before writing). Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.05
START_TIMEOUT_S = 30.0
WRITE_STEP = 64 << 20
GIB = 1 << 30
MIB = 1 << 20


@dataclass
class Peaks:
    """The largest figures seen in one process's ``/proc/PID/status`` (bytes)."""

    rss: int = 0
    anon: int = 0
    hwm: int = 0

    def sample(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{pid}/status").read_text()
            fields = dict(re.findall(r"^(VmRSS|RssAnon|VmHWM):\s+(\d+) kB", text, re.M))
            self.rss = max(self.rss, int(fields.get("VmRSS", 0)) * 1024)
            self.anon = max(self.anon, int(fields.get("RssAnon", 0)) * 1024)
            self.hwm = max(self.hwm, int(fields.get("VmHWM", 0)) * 1024)

    @property
    def rss_peak(self) -> int:
        """VmRSS's peak: the kernel's high-water mark, or a sample if it saw more."""
        return max(self.rss, self.hwm)


@dataclass
class Child:
    """A process with its output in a file, sampled until it exits."""

    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes] = field(init=False)
    pidfd: int = field(init=False)
    peaks: Peaks = field(default_factory=Peaks)
    ended_at: float | None = None
    returncode: int | None = None

    def __post_init__(self) -> None:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(self.args, cwd=REPO, stdout=out, stderr=out)
        self.pidfd = os.pidfd_open(self.popen.pid)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first line of its output matching ``pattern`` (polled, bounded in time)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.log.read_text(errors="replace"), re.M):
                return match
            if self.popen.poll() is not None:
                break
            select.select([self.pidfd], [], [], SAMPLE_S)  # wakes early if it exits
        self.popen.kill()
        raise SystemExit(f"{self.name} did not say {pattern!r}: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace").strip()[-800:]

    def reap(self) -> None:
        self.returncode = self.popen.wait()
        self.ended_at = time.perf_counter()
        os.close(self.pidfd)


def watch(children: list[Child], awaited: list[Child], timeout_s: float) -> None:
    """Sample ``children`` every ``SAMPLE_S`` until all of ``awaited`` have exited.

    Raises:
        SystemExit: they have not after ``timeout_s`` (the caller kills them).
    """
    deadline = time.monotonic() + timeout_s
    living = {c.pidfd: c for c in awaited}
    while living:
        for child in children:
            if child.returncode is None:
                child.peaks.sample(child.popen.pid)
        if time.monotonic() > deadline:
            raise SystemExit(f"no end after {timeout_s:.0f} s: {[c.name for c in living.values()]}")
        ready, _, _ = select.select(list(living), [], [], SAMPLE_S)
        for fd in ready:
            living.pop(fd).reap()


@dataclass
class Row:
    size: int
    path: str
    wall_s: float
    sender: Peaks
    receiver: Peaks
    relay: Peaks | None
    resent: int | None
    ok: bool
    notes: list[str]


def write_source(path: Path, size: int) -> str:
    """A file of ``size`` random bytes; returns its SHA-256 (hex)."""
    rng = np.random.default_rng(size)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for start in range(0, size, WRITE_STEP):
            block = rng.bytes(min(WRITE_STEP, size - start))
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def transfer(src: Path, sha256: str, work: Path, *, loss: str | None) -> Row:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    report = work / "report.json"
    report.unlink(missing_ok=True)  # a receiver never overwrites a report: it picks a new name
    size = src.stat().st_size
    timeout_s = 120 + size / (10 * MIB)  # 10 MB/s would be far below anything seen
    receiver = Child(
        "receiver",
        [PYTHON, "-m", "udpxfer", "recv", "--bind", "127.0.0.1:0", "--once",
         "--out", str(out), "--report", str(report)],
        work / "recv.log",
    )  # fmt: skip
    port = int(receiver.wait_for(r"^listening on \S+:(\d+)")[1])
    relay = None
    if loss is not None:
        relay = Child(
            "relay",
            [PYTHON, "-m", "udpxfer", "impair", "--listen", "127.0.0.1:0",
             "--to", f"127.0.0.1:{port}", "--loss", loss, "--seed", "1"],
            work / "relay.log",
        )  # fmt: skip
        port = int(relay.wait_for(r"relaying \S+:(\d+) ->")[1])
    start = time.perf_counter()
    sender = Child(
        "sender",
        [PYTHON, "-m", "udpxfer", "send", str(src), "--to", f"127.0.0.1:{port}", "-q",
         "--timeout", "60"],
        work / "send.log",
    )  # fmt: skip
    ends = [sender, receiver]
    everyone = [*ends, *([relay] if relay else [])]
    try:
        watch(everyone, ends, timeout_s)
        if relay is not None:  # its end is not timed
            relay.popen.send_signal(signal.SIGTERM)
            watch([relay], [relay], START_TIMEOUT_S)
    finally:
        for child in everyone:
            if child.returncode is None:
                child.popen.kill()
                child.reap()
    assert sender.ended_at is not None
    assert receiver.ended_at is not None
    wall = max(sender.ended_at, receiver.ended_at) - start
    notes: list[str] = []
    ok = True
    for child in ends:
        if child.returncode != 0:
            ok = False
            notes.append(f"{child.name} exit {child.returncode}: {child.output()}")
    got = out / src.name
    if not got.exists() or sha256_of(got) != sha256:
        ok = False
        notes.append("received file differs")
    resent = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        resent = int(json.loads(report.read_text())["chunks"]["retransmitted"])
    shutil.rmtree(out, ignore_errors=True)
    path = f"impair --loss {loss}" if loss is not None else "direct"
    relay_peaks = relay.peaks if relay else None
    return Row(size, path, wall, sender.peaks, receiver.peaks, relay_peaks, resent, ok, notes)


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text}")
    return int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[match[2]]


def human(n: int) -> str:
    return f"{n / GIB:.0f} GiB" if n >= GIB and n % GIB == 0 else f"{n / MIB:.0f} MiB"


def mib(n: int) -> str:
    return f"{n / MIB:,.0f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| file | path | wall s | MB/s | resent | sender peak RSS MiB | sender peak anon MiB "
        "| receiver peak RSS MiB | receiver peak anon MiB | relay peak RSS MiB | check |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        relay = mib(r.relay.rss_peak) if r.relay else "-"
        check = "byte-exact" if r.ok else "FAILED: " + "; ".join(r.notes)
        lines.append(
            f"| {human(r.size)} | {r.path} | {r.wall_s:.1f} | {r.size / r.wall_s / 1e6:.0f} "
            f"| {r.resent if r.resent is not None else '-'} | {mib(r.sender.rss_peak)} "
            f"| {mib(r.sender.anon)} | {mib(r.receiver.rss_peak)} | {mib(r.receiver.anon)} "
            f"| {relay} | {check} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1G,4G", help="comma-separated file sizes (1G,4G)")
    parser.add_argument("--huge", action="store_true", help="add a 16 GiB file")
    parser.add_argument("--loss", default="1%", help="the relay's random loss (1%%)")
    parser.add_argument("--direct", action="store_true", help="also send without the relay")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the scratch files go (removed afterwards)")  # fmt: skip
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    if args.huge:
        sizes.append(16 * GIB)
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="udpxfer-scale-", dir=args.dir) as scratch:
        work = Path(scratch)
        for size in sizes:
            free = shutil.disk_usage(work).free
            if free < 2 * size + GIB:
                print(f"skipping {human(size)}: {free / GIB:.1f} GiB free, needs "
                      f"{(2 * size + GIB) / GIB:.0f}", file=sys.stderr)  # fmt: skip
                continue
            src = work / f"scale-{human(size).replace(' ', '')}.bin"
            sha256 = write_source(src, size)
            for loss in (args.loss, *((None,) if args.direct else ())):
                row = transfer(src, sha256, work, loss=loss)
                rows.append(row)
                print(f"{human(size)} {row.path}: {row.wall_s:.1f} s, "
                      f"{'ok' if row.ok else 'FAILED'}", file=sys.stderr)  # fmt: skip
            src.unlink()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; loopback, reliable mode, "
        f"default chunk size; Linux {platform.release()}, {os.cpu_count()} CPUs, load average "
        f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; Python "
        f"{platform.python_version()}. Peaks sampled every {SAMPLE_S * 1000:.0f} ms from "
        "/proc/PID/status (RSS: VmRSS and VmHWM, the mapped file included; anon: RssAnon). "
        "MiB = 2^20 bytes, MB/s = 10^6 bytes/s over the wall clock from starting the "
        "sender until both ends exited.\n"
    )
    print(table(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
