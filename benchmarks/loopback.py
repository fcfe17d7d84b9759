"""Loopback file transfer speed: one run, one table, wall clock as a user sees it.

Every row moves the same random file between two real processes on 127.0.0.1. The headline
figure is the wall clock from starting the sender process until both processes have exited
(what ``time`` shows a user; the receiver is started and ready first), as MB/s (10^6 bytes)
and as a ratio to plain Python TCP (``socket.sendfile`` into ``recv_into`` + write) measured
in the same run. Beside it: CPU seconds per GB and peak RSS of each side (``os.wait4``), and
where the tool says so, its internal goodput (first to last datagram at the receiver), which
leaves out start-up and finishing and is labelled as such.

    python benchmarks/loopback.py [--size 1G] [--repeat 3] [--only 'reliable-*,tcp-*']

Rows (ids for --only, comma-separated shell patterns; the plain TCP baseline always runs):

    tcp-sendfile              plain Python TCP, no hashing
    udpxfer-tcp               udpxfer tcp send/recv (SHA-256 on both ends)
    reliable-N, blast-N       udpxfer send/recv, N-byte chunks (1400, 8800)
    ...-no-offload            the same with UDPXFER_NO_OFFLOAD=1 (no GSO/GRO)
    impair-reliable-N         udpxfer reliable through ``udpxfer impair`` with no impairment
    raw-udp-N, raw-gso-N      Python loops: plain send/recv, or GSO send + GRO receive, of
                              N + header-byte datagrams (udpxfer's size); no file written
    iperf3-N                  iperf3 -u -b 0 -l N (no file), where installed
    uftp-N                    UFTP -b N -R -1 -Y none, unicast, where installed

The file sits in the page cache (it was just written): the cold-cache figures are lower. On a
shared machine, quote the ratios; the absolute figures move with the load.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import mmap
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
CHUNK_SIZES = (1400, 8800)
STARTUP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 900.0
# Linux UDP segmentation offload (linux/udp.h), for the raw loops.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
PYTHON = sys.executable
HERE = Path(__file__).resolve()
REPO = HERE.parent.parent  # the working directory of every child: ``-m udpxfer`` is this checkout


# --- measuring processes ----------------------------------------------------------------------


@dataclass
class Side:
    """What one process cost: CPU seconds (user + system) and peak resident memory."""

    cpu_s: float
    rss_mb: float


@dataclass
class Run:
    """One transfer: the wall clock, both sides' costs, and what the tool reported."""

    wall_s: float
    send: Side
    recv: Side
    internal_bps: float | None = None  # bytes/s, first to last datagram, where the tool says
    delivered: int | None = None  # bytes that arrived, for the tools that lose some (else all)
    notes: list[str] = field(default_factory=list)
    ok: bool = True


class Proc:
    """A child process whose exit is awaited with ``os.wait4`` (for its rusage)."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
        )
        self.pidfd = os.pidfd_open(self.popen.pid)
        self.ended_at: float | None = None
        self.side: Side | None = None
        self.returncode: int | None = None

    def read_line_matching(self, pattern: str, timeout_s: float = STARTUP_TIMEOUT_S) -> re.Match:
        """The first stdout line that matches ``pattern`` (a bounded wait)."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout_s
        buffered = b""
        fd = self.popen.stdout.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffered += chunk
            for line in buffered.decode(errors="replace").splitlines():
                if match := re.search(pattern, line):
                    return match
        self.kill()
        raise SystemExit(f"{self.args[:4]} did not say {pattern!r}: {buffered.decode()[-500:]}")

    def reap(self) -> None:
        """Collect the exit status and rusage of an exited process."""
        _, status, usage = os.wait4(self.popen.pid, 0)
        self.ended_at = time.perf_counter()
        self.returncode = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.returncode
        # ru_maxrss is in KiB on Linux.
        self.side = Side(usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)
        os.close(self.pidfd)

    def stderr_tail(self) -> str:
        assert self.popen.stderr is not None
        return self.popen.stderr.read().decode(errors="replace").strip()[-500:]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        if self.returncode is None:
            self.reap()


def wait_all(procs: list[Proc], timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Wait until every process has exited, noting when each did; kill all on timeout."""
    deadline = time.monotonic() + timeout_s
    waiting = {p.pidfd: p for p in procs if p.returncode is None}
    while waiting:
        left = deadline - time.monotonic()
        ready, _, _ = select.select(list(waiting), [], [], max(0.0, left))
        if not ready:
            for proc in waiting.values():
                proc.kill()
            raise SystemExit(f"timed out after {timeout_s} s: {[p.args[:4] for p in procs]}")
        for fd in ready:
            waiting.pop(fd).reap()


def finish(start: float, sender: Proc, receiver: Proc) -> Run:
    wait_all([sender, receiver])
    assert sender.ended_at is not None
    assert receiver.ended_at is not None
    assert sender.side is not None
    assert receiver.side is not None
    run = Run(max(sender.ended_at, receiver.ended_at) - start, sender.side, receiver.side)
    for proc, name in ((sender, "sender"), (receiver, "receiver")):
        if proc.returncode != 0:
            run.ok = False
            run.notes.append(f"{name} exit {proc.returncode}: {proc.stderr_tail()}")
    return run


@contextlib.contextmanager
def scratch(work: Path, name: str) -> Iterator[Path]:
    """A fresh output directory, removed after the run."""
    path = work / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, table: str, proc: Proc, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Wait (bounded) until some socket is bound to ``port`` (Linux ``/proc/net/<table>[6]``)."""
    needle = f":{port:04X} "
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name in (table, table + "6"):
            with contextlib.suppress(OSError):  # no IPv6 here
                if needle in Path(f"/proc/net/{name}").read_text():
                    return
        if proc.popen.poll() is not None:
            break
        select.select([], [], [], 0.01)  # a bounded poll of a file that cannot be waited on
    proc.kill()
    raise SystemExit(f"{proc.args[0]} did not bind port {port}: {proc.stderr_tail()}")


# --- the rows -----------------------------------------------------------------------------------


def plain_tcp(src: Path, work: Path) -> Run:
    with scratch(work, "tcp") as out:
        receiver = Proc([PYTHON, str(HERE), "_peer", "tcp-recv", str(out / src.name)])
        port = int(receiver.read_line_matching(r"^port (\d+)")[1])
        start = time.perf_counter()
        sender = Proc([PYTHON, str(HERE), "_peer", "tcp-send", str(port), str(src)])
        run = finish(start, sender, receiver)
        got = (out / src.name).stat().st_size if (out / src.name).exists() else -1
        if got != src.stat().st_size:
            run.ok = False
            run.notes.append(f"received {got} bytes")
        run.notes.append("no hashing")
    return run


def udpxfer_tcp(src: Path, work: Path) -> Run:
    with scratch(work, "udpxfer-tcp") as out:
        report = out / "report.json"
        receiver = Proc(
            [PYTHON, "-m", "udpxfer", "tcp", "recv", "--bind", f"{LOOPBACK}:0", "--once",
             "--out", str(out), "--report", str(report), "-q"]
        )  # fmt: skip
        port = int(receiver.read_line_matching(r"listening on \S+:(\d+)")[1])
        start = time.perf_counter()
        sender = Proc(
            [PYTHON, "-m", "udpxfer", "tcp", "send", str(src), "--to", f"{LOOPBACK}:{port}", "-q"]
        )
        run = finish(start, sender, receiver)
        check_report(run, report)
    return run


def udpxfer_udp(
    src: Path,
    work: Path,
    mode: str,
    chunk: int,
    *,
    offload: bool = True,
    relay: bool = False,
    keyed: str = "",
) -> Run:
    env: dict[str, str] | None = None if offload else {"UDPXFER_NO_OFFLOAD": "1"}
    with scratch(work, "udpxfer") as out:
        if keyed:
            key = out / "bench.key"
            subprocess.run([PYTHON, "-m", "udpxfer", "keygen", str(key)], check=True,
                           capture_output=True)  # fmt: skip
            env = {**(env or {}), "UDPXFER_KEY_FILE": str(key)}
        extra = ["--no-encrypt"] if keyed == "tag" else []
        report = out / "report.json"
        receiver = Proc(
            [PYTHON, "-m", "udpxfer", "recv", "--bind", f"{LOOPBACK}:0", "--once",
             "--out", str(out), "--report", str(report), *extra],  # no -q: says where it listens
            env=env,
        )  # fmt: skip
        port = int(receiver.read_line_matching(r"listening on \S+:(\d+)")[1])
        impair = None
        if relay:
            impair = Proc(
                [PYTHON, "-m", "udpxfer", "impair", "--listen", f"{LOOPBACK}:0",
                 "--to", f"{LOOPBACK}:{port}"],
                env=env,
            )  # fmt: skip
            port = int(impair.read_line_matching(r"relaying \S+:(\d+) ->")[1])
        start = time.perf_counter()
        sender = Proc(
            [PYTHON, "-m", "udpxfer", "send", str(src), "--to", f"{LOOPBACK}:{port}",
             "--mode", mode, "--chunk-size", str(chunk), "-q", *extra],
            env=env,
        )  # fmt: skip
        try:
            run = finish(start, sender, receiver)
        finally:
            if impair is not None:
                impair.popen.send_signal(signal.SIGTERM)
                wait_all([impair], 30)
        if impair is not None and impair.side is not None:
            run.notes.append(f"relay {impair.side.cpu_s:.1f} CPU s, {impair.side.rss_mb:.0f} MB")
        check_report(run, report)
    return run


def check_report(run: Run, report: Path) -> None:
    """Byte-exact and resend figures from a udpxfer report."""
    if not report.exists():
        run.ok = False
        run.notes.append("no report")
        return
    doc = json.loads(report.read_text())
    timing = doc.get("timing", {})
    if timing.get("goodput_bps"):
        run.internal_bps = timing["goodput_bps"] / 8
    chunks = doc.get("chunks", {})
    if doc["file"]["verified"]:
        run.notes.append("verified")
    elif doc.get("mode") == "blast":
        run.notes.append(f"{chunks.get('missing')} of {chunks.get('total')} chunks missing")
        run.ok = run.ok and chunks.get("missing") == 0
    else:
        run.ok = False
        run.notes.append("NOT verified")
    if chunks.get("retransmitted"):
        run.notes.append(f"{chunks['retransmitted']} resent")


def raw_udp(src: Path, work: Path, datagram: int, *, offload: bool) -> Run:
    flag = "1" if offload else "0"
    size = src.stat().st_size
    receiver = Proc([PYTHON, str(HERE), "_peer", "udp-recv", str(size), flag])
    port = int(receiver.read_line_matching(r"^port (\d+)")[1])
    start = time.perf_counter()
    sender = Proc(
        [PYTHON, str(HERE), "_peer", "udp-send", str(port), str(src), str(datagram), flag]
    )
    run = finish(start, sender, receiver)
    assert receiver.popen.stdout is not None
    tail = receiver.popen.stdout.read().decode()
    if match := re.search(r"received (\d+) in ([\d.]+)", tail):
        received, elapsed = int(match[1]), float(match[2])
        run.internal_bps = received / elapsed if elapsed > 0 else None
        run.delivered = received
        if received < size:
            run.notes.append(f"lost {100 * (1 - received / size):.1f}%, idle wait 0.5 s")
    run.notes.append("no file written")
    return run


def iperf3(src: Path, work: Path, block: int) -> Run:
    size = src.stat().st_size
    port = free_port(socket.SOCK_STREAM)
    server = Proc(["iperf3", "-s", "-1", "-p", str(port)])
    wait_for_port(port, "tcp", server)
    start = time.perf_counter()
    client = Proc(
        ["iperf3", "-c", LOOPBACK, "-p", str(port), "-u", "-b", "0", "-l", str(block),
         "-n", str(size), "-J"]
    )  # fmt: skip
    run = finish(start, client, server)
    assert client.popen.stdout is not None
    with contextlib.suppress(ValueError, KeyError):
        result = json.loads(client.popen.stdout.read().decode())
        summary = result["end"]["sum"]
        run.notes.append(f"lost {summary['lost_percent']:.1f}%")
        run.delivered = round(size * (1 - summary["lost_percent"] / 100))
        received = result["end"].get("sum_received", {}).get("bits_per_second")
        if received:
            run.internal_bps = received / 8
    run.notes.append("no file")
    return run


def uftp(src: Path, work: Path, block: int) -> Run:
    size = src.stat().st_size
    with scratch(work, "uftp") as out:
        dest, temp = out / "dest", out / "temp"
        dest.mkdir()
        temp.mkdir()
        port = free_port(socket.SOCK_DGRAM)
        server = Proc(["uftpd", "-d", "-p", str(port), "-D", str(dest), "-T", str(temp), "-x", "0"])
        wait_for_port(port, "udp", server)
        start = time.perf_counter()
        client = Proc(
            ["uftp", "-M", LOOPBACK, "-p", str(port), "-b", str(block), "-R", "-1",
             "-Y", "none", "-x", "0", str(src)]
        )  # fmt: skip
        # The client exits once the receiver has confirmed the whole file; uftpd is a daemon
        # that never exits by itself, so the clock stops with the client and uftpd is stopped
        # afterwards (its costs count, its shutdown does not).
        wait_all([client])
        assert client.ended_at is not None
        assert client.side is not None
        wall = client.ended_at - start
        server.popen.send_signal(signal.SIGTERM)
        wait_all([server], 30)
        assert server.side is not None
        run = Run(wall, client.side, server.side)
        got = (dest / src.name).stat().st_size if (dest / src.name).exists() else -1
        run.ok = client.returncode == 0 and got == size
        run.notes.append("size checked" if got == size else f"received {got} bytes")
        run.notes.append("wall ends with the client")
    return run


@dataclass
class Row:
    id: str
    label: str
    run: Callable[[Path, Path], Run]


def rows(header_bytes: int) -> list[Row]:
    table = [
        Row("tcp-sendfile", "plain Python TCP sendfile", plain_tcp),
        Row("udpxfer-tcp", "udpxfer tcp send/recv", udpxfer_tcp),
    ]
    for chunk in CHUNK_SIZES:
        for mode in ("reliable", "blast"):
            table.append(
                Row(
                    f"{mode}-{chunk}",
                    f"udpxfer {mode}, {chunk} B",
                    lambda s, w, m=mode, c=chunk: udpxfer_udp(s, w, m, c),
                )
            )
            table.append(
                Row(
                    f"{mode}-{chunk}-no-offload",
                    f"udpxfer {mode}, {chunk} B, no GSO/GRO",
                    lambda s, w, m=mode, c=chunk: udpxfer_udp(s, w, m, c, offload=False),
                )
            )
        for keyed, what in (("encrypt", "keyed, encrypted"), ("tag", "keyed, --no-encrypt")):
            table.append(
                Row(
                    f"reliable-{chunk}-keyed-{keyed}",
                    f"udpxfer reliable, {chunk} B, {what}",
                    lambda s, w, c=chunk, k=keyed: udpxfer_udp(s, w, "reliable", c, keyed=k),
                )
            )
        table.append(
            Row(
                f"impair-reliable-{chunk}",
                f"udpxfer reliable, {chunk} B, via impair",
                lambda s, w, c=chunk: udpxfer_udp(s, w, "reliable", c, relay=True),
            )
        )
    for chunk in CHUNK_SIZES:
        datagram = chunk + header_bytes
        table.append(
            Row(
                f"raw-udp-{chunk}",
                f"raw Python UDP, {datagram} B",
                lambda s, w, d=datagram: raw_udp(s, w, d, offload=False),
            )
        )
        table.append(
            Row(
                f"raw-gso-{chunk}",
                f"raw Python GSO/GRO, {datagram} B",
                lambda s, w, d=datagram: raw_udp(s, w, d, offload=True),
            )
        )
    if shutil.which("iperf3"):
        for chunk in CHUNK_SIZES:
            table.append(
                Row(
                    f"iperf3-{chunk}",
                    f"iperf3 -u -b 0 -l {chunk}",
                    lambda s, w, c=chunk: iperf3(s, w, c),
                )
            )
    if shutil.which("uftp") and shutil.which("uftpd"):
        for chunk in CHUNK_SIZES:
            table.append(
                Row(f"uftp-{chunk}", f"UFTP -b {chunk} -R -1", lambda s, w, c=chunk: uftp(s, w, c))
            )
    return table


# --- the peers of the plain rows (run as separate processes) ----------------------------------


def peer(role: str, args: list[str]) -> None:
    """The plain Python programs: ``loopback.py _peer ROLE ARGS``."""
    if role == "tcp-recv":
        with socket.create_server((LOOPBACK, 0)) as server:
            print(f"port {server.getsockname()[1]}", flush=True)
            conn, _ = server.accept()
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            with conn, open(args[0], "wb") as handle:
                while n := conn.recv_into(buf):
                    handle.write(view[:n])
    elif role == "tcp-send":
        with socket.create_connection((LOOPBACK, int(args[0]))) as sock, open(args[1], "rb") as f:
            sock.sendfile(f)
    elif role == "write-random":
        with open(args[0], "wb") as handle:
            left = int(args[1])
            while left:
                block = os.urandom(min(1 << 22, left))
                handle.write(block)
                left -= len(block)
    elif role == "udp-recv":
        udp_receive(int(args[0]), gro=args[1] == "1")
    elif role == "udp-send":
        udp_send(int(args[0]), Path(args[1]), int(args[2]), gso=args[3] == "1")
    else:
        raise SystemExit(f"unknown role {role}")


def udp_receive(expected: int, *, gro: bool) -> None:
    """Count bytes until all arrived or 0.5 s pass without any; print the count and the time."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 32 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    if gro:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    sock.bind((LOOPBACK, 0))
    print(f"port {sock.getsockname()[1]}", flush=True)
    buf = bytearray(65536)
    cmsg = socket.CMSG_SPACE(4)
    received = 0
    first = last = 0.0
    sock.settimeout(STARTUP_TIMEOUT_S)
    try:
        while received < expected:
            n = sock.recvmsg_into([buf], cmsg)[0] if gro else sock.recv_into(buf)
            last = time.perf_counter()
            if not received:
                first = last
                sock.settimeout(0.5)
            received += n
    except TimeoutError:
        pass  # the sender is done and some datagrams were lost
    print(f"received {received} in {last - first:.6f}", flush=True)


def udp_send(port: int, path: Path, datagram: int, *, gso: bool) -> None:
    """Send the file's bytes as ``datagram``-byte datagrams, with GSO runs when asked."""
    with open(path, "rb") as handle, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.connect((LOOPBACK, port))
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mapped)
        size = len(view)
        if gso:
            step = datagram * min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // datagram)
            control = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", datagram))]
            for offset in range(0, size, step):
                sock.sendmsg([view[offset : offset + step]], control)
        else:
            send = sock.send
            for offset in range(0, size, datagram):
                send(view[offset : offset + datagram])
        view.release()
        mapped.close()


# --- the table ----------------------------------------------------------------------------------


def rate(run: Run, size: int) -> float:
    """Bytes per second of wall clock, counting only the bytes that arrived."""
    return (size if run.delivered is None else run.delivered) / run.wall_s


def median_run(runs: list[Run], size: int) -> tuple[Run, float]:
    """The run with the median rate (so its notes fit its figures), and that median."""
    ordered = sorted(runs, key=lambda r: rate(r, size))
    return ordered[(len(ordered) - 1) // 2], statistics.median(rate(r, size) for r in runs)


def own_peak_rss_mb() -> float:
    """This process's peak resident memory (Linux ``VmHWM``), the floor of the children's."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_text(values: list[float], floor_mb: float) -> str:
    peak = statistics.median(values)
    return f"<={floor_mb:.0f}" if peak <= floor_mb * 1.05 else f"{peak:.0f}"


def table(
    results: dict[str, list[Run]], labels: dict[str, str], size: int, floor_mb: float
) -> list[str]:
    gb = size / 1e9
    _, base_rate = median_run(results["tcp-sendfile"], size)
    lines = [
        "| method | wall MB/s | x TCP sendfile | send CPU s/GB | recv CPU s/GB "
        "| send / recv peak RSS MB | internal goodput MB/s | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row_id, runs in results.items():
        run, median_rate = median_run(runs, size)
        internal = (
            statistics.median(r.internal_bps for r in runs if r.internal_bps)
            if any(r.internal_bps for r in runs)
            else None
        )
        notes = "; ".join(run.notes)
        if not all(r.ok for r in runs):
            notes = "FAILED: " + notes
        lines.append(
            f"| {labels[row_id]} | {median_rate / 1e6:.0f} | {median_rate / base_rate:.2f} "
            f"| {statistics.median(r.send.cpu_s for r in runs) / gb:.2f} "
            f"| {statistics.median(r.recv.cpu_s for r in runs) / gb:.2f} "
            f"| {rss_text([r.send.rss_mb for r in runs], floor_mb)} / "
            f"{rss_text([r.recv.rss_mb for r in runs], floor_mb)} "
            f"| {'-' if internal is None else f'{internal / 1e6:.0f}'} | {notes} |"
        )
    return lines


def parse_size_arg(text: str) -> int:
    from udpxfer.units import parse_size

    return parse_size(text)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_peer":
        peer(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    parser.add_argument("--size", default="1G", help="file size, e.g. 256M, 1G (default 1G)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; medians shown")
    parser.add_argument(
        "--only", default="*", help="comma-separated patterns of row ids (e.g. 'reliable-*')"
    )
    args = parser.parse_args()
    size = parse_size_arg(args.size)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    from udpxfer.protocol.wire import HEADER_BYTES

    all_rows = rows(HEADER_BYTES)
    patterns = [p.strip() for p in args.only.split(",") if p.strip()]
    chosen = [
        row
        for row in all_rows
        if row.id == "tcp-sendfile" or any(fnmatch.fnmatch(row.id, p) for p in patterns)
    ]
    if (
        len(chosen) == 1
        and patterns != ["*"]
        and not any(fnmatch.fnmatch("tcp-sendfile", p) for p in patterns)
    ):
        parser.error(
            f"--only {args.only!r} matches no row; ids: {', '.join(r.id for r in all_rows)}"
        )
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()
    results: dict[str, list[Run]] = {row.id: [] for row in chosen}
    with tempfile.TemporaryDirectory(prefix="udpxfer-bench-") as tmp:
        work = Path(tmp)
        src = work / "random.bin"
        # Written by a child, so that this process stays small: Linux counts the parent's
        # resident pages at spawn in each child's peak RSS (the floor printed below).
        subprocess.run(
            [PYTHON, str(HERE), "_peer", "write-random", str(src), str(size)], check=True
        )
        floor_mb = own_peak_rss_mb()
        for repeat in range(args.repeat):
            for row in chosen:
                run = row.run(src, work)
                results[row.id].append(run)
                status = "" if run.ok else " FAILED"
                print(
                    f"[{repeat + 1}/{args.repeat}] {row.id}: {rate(run, size) / 1e6:.0f} MB/s "
                    f"wall ({run.wall_s:.2f} s){status}; {'; '.join(run.notes)}",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"{started}; {size / 2**20:.0f} MiB random file (page cache warm); "
        f"{args.repeat} run(s) per row, medians; MB = 10^6 bytes; "
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
        f"Python {platform.python_version()}. Peak RSS: at least this script's own "
        f"{floor_mb:.0f} MB (Linux counts a parent's pages in a child's peak)."
    )
    print()
    print("\n".join(table(results, {row.id: row.label for row in chosen}, size, floor_mb)))
    print()
    print(
        "wall MB/s: the bytes that arrived (all, but for the raw and iperf3 rows, which say what "
        "they lost) over the wall clock from starting the sender until both sides exited."
    )
    print(
        "keyed rows: both ends with a --key-file (AES-256-GCM on every datagram); the chunk size "
        "is the same as the keyless row's so that the two compare."
    )


if __name__ == "__main__":
    main()
