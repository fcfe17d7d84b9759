"""TCP vs UDP reliable vs UDP blast through one lab: running the plan (``plan.py``).

``Comparison`` runs a plan in a ``LiveLab``: for each point it sets
the impairment, measures the round trip with the echo companions, then runs every transport
``runs`` times as ``python -m udpxfer ...`` subprocesses inside the namespaces, collecting the
receivers' JSON reports and the lab's own counters.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udpxfer.companions.rtt import PingStats
from udpxfer.companions.udp_echo import run_udp_echo_client
from udpxfer.errors import LabError
from udpxfer.lab.compare.plan import TRANSPORTS, Point, Transport
from udpxfer.lab.live import LiveLab, wait_for_line
from udpxfer.lab.netns import in_netns, run
from udpxfer.units import Address, format_rate

UDP_PORT = 9000
TCP_PORT = 9001
TCP_ECHO_PORT = 8000
UDP_ECHO_PORT = 8002
START_TIMEOUT_S = 15.0
ECHO_PROBES = 30
ECHO_WARMUP = 5  # first round trips not counted: servers and caches wake up
ECHO_PAYLOAD_BYTES = 64


# ------------------------------------------------------------------------ running it


@dataclass(slots=True)
class CompareConfig:
    """What ``udpxfer compare`` was asked to do."""

    file: Path
    out: Path
    transports: list[Transport]
    runs: int
    points: list[Point]
    udp_rate: str | None = None  # passed to `udpxfer send --rate` only when the user asked
    timeout_s: float = 120.0  # one transfer
    echo_probes: int = ECHO_PROBES


@dataclass(slots=True)
class Progress:
    """Callbacks for the terminal: a line of news, and one step of the run counter."""

    say: Callable[[str], None] = print
    step: Callable[[], object] = lambda: None


def _delta(after: dict[str, Any], before: dict[str, Any], key: str) -> int:
    return int(after.get(key, 0)) - int(before.get(key, 0))


def _router_loss(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """The forward packet loss the router applied between two counter snapshots."""
    fwd_a, fwd_b = after.get("forward", {}), before.get("forward", {})
    arrived = _delta(fwd_a, fwd_b, "datagrams_in")
    dropped = sum(fwd_a.get("dropped", {}).values()) - sum(fwd_b.get("dropped", {}).values())
    return dropped / arrived if arrived > 0 else None


@dataclass(slots=True)
class Comparison:
    """Runs ``config`` in ``lab``; ``result()`` is the ``compare.json`` document's body."""

    lab: LiveLab
    config: CompareConfig
    progress: Progress = field(default_factory=Progress)
    runs: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    _echo_started: bool = False

    @property
    def total_steps(self) -> int:
        """Transfers to run in all."""
        return len(self.config.points) * len(self.config.transports) * self.config.runs

    def run(self) -> None:
        """Every point, every transport, every run."""
        self._start_echo_servers()
        for point in self.config.points:
            self.lab.set_impairment(point.forward, point.reverse)
            self.progress.say(
                f"point {point.index + 1}/{len(self.config.points)}: {point.label} "
                f"(forward: {point.forward.describe()}; reverse: {point.reverse.describe()})"
            )
            self.latency.append({"point": point.index, **self._measure_latency()})
            for run_index in range(self.config.runs):
                for transport in self.config.transports:
                    record = self._transfer(point, transport, run_index)
                    self.runs.append(record)
                    self.progress.say(_run_line(record))
                    self.progress.step()

    # -------------------------------------------------------------- latency

    def _start_echo_servers(self) -> None:
        logs = self.config.out / "logs"
        b = self.lab.spec.b.address
        for args, name in (
            (["tcp", "echo-server", "--bind", f"{b}:{TCP_ECHO_PORT}"], "tcp-echo-server"),
            (["udp", "echo-server", "--bind", f"{b}:{UDP_ECHO_PORT}"], "udp-echo-server"),
        ):
            log = logs / f"{name}.log"
            proc = self.lab.spawn("b", args, log)
            wait_for_line(proc, log, "listening on", START_TIMEOUT_S)

    def _measure_latency(self) -> dict[str, Any]:
        """Round trips of small messages through the lab: TCP echo and UDP echo."""
        b = self.lab.spec.b.address
        count = self.config.echo_probes
        udp = PingStats()

        def udp_probe(stats: PingStats, n: int) -> None:
            run_udp_echo_client(
                Address(b, UDP_ECHO_PORT),
                [],
                stats=stats,
                size=ECHO_PAYLOAD_BYTES,
                count=n,
                interval_s=0.01,
                timeout_s=1.0,
                on_echo=lambda reply: None,
                on_loss=lambda seq, reason: None,
            )

        in_netns(self.lab.spec.a.netns, lambda: udp_probe(PingStats(), ECHO_WARMUP))
        in_netns(self.lab.spec.a.netns, lambda: udp_probe(udp, count))
        tcp = in_netns(self.lab.spec.a.netns, lambda: _tcp_echo_rtts(b, count))
        return {"tcp_echo": _ping_dict(tcp), "udp_echo": _ping_dict(udp)}

    # -------------------------------------------------------------- transfers

    def _transfer(self, point: Point, transport: Transport, run_index: int) -> dict[str, Any]:
        lab, cfg = self.lab, self.config
        lab.check_router()
        name = f"p{point.index}-{transport.name}-{run_index + 1}"
        work = cfg.out / "runs" / name
        rx_dir, report = work / "received", work / "receiver.json"
        b = lab.spec.b.address
        if transport.transport == "tcp":
            recv_args = ["tcp", "recv", "--bind", f"{b}:{TCP_PORT}"]
            send_args = ["tcp", "send", str(cfg.file), "--to", f"{b}:{TCP_PORT}", "-q",
                         "--timeout", "30", "--report", str(work / "sender.json"),
                         "--congestion", lab.spec.tcp_congestion]  # fmt: skip
        else:
            recv_args = ["recv", "--bind", f"{b}:{UDP_PORT}"]
            send_args = ["send", str(cfg.file), "--to", f"{b}:{UDP_PORT}", "-q",
                         "--mode", transport.mode]  # fmt: skip
            if cfg.udp_rate is not None:
                send_args += ["--rate", cfg.udp_rate]
        recv_args += ["--once", "--out", str(rx_dir), "--report", str(report), "-q"]
        receiver_log = work / "receiver.log"
        receiver = lab.spawn("b", recv_args, receiver_log)
        self._wait_listening(receiver, transport)
        devices_before, router_before = lab.device_counters(), lab.router_counters()
        started = time.monotonic()
        sender = lab.spawn("a", send_args, work / "sender.log")
        sender_exit, receiver_exit = self._wait_both(sender, receiver)
        elapsed = time.monotonic() - started
        devices_after, router_after = lab.device_counters(), lab.router_counters()
        wire = sum(
            _delta(devices_after[role], devices_before[role], "tx_bytes") for role in ("a", "b")
        )
        record = _run_record(point, transport, run_index, report, work / "sender.json")
        size = cfg.file.stat().st_size
        record.update(
            {
                "wall_s": elapsed,
                "sender_exit": sender_exit,
                "receiver_exit": receiver_exit,
                "wire_bytes": wire,
                "wire_per_byte": wire / size if size and record["complete"] else None,
                "loss_applied": _router_loss(router_before, router_after),
                "dir": str(work),
            }
        )
        for leftover in rx_dir.glob("*"):
            leftover.unlink()  # the copies would fill the disk over many runs; the report stays
        return record

    def _wait_listening(self, receiver: subprocess.Popen[bytes], transport: Transport) -> None:
        """Until the receiver's port is bound in host b (``ss`` inside its namespace)."""
        port = TCP_PORT if transport.transport == "tcp" else UDP_PORT
        flag = "-tln" if transport.transport == "tcp" else "-uln"
        deadline = time.monotonic() + START_TIMEOUT_S
        ns = self.lab.spec.b.netns
        while time.monotonic() < deadline:
            if receiver.poll() is not None:
                raise LabError(f"the {transport.label} receiver exited at start")
            if f":{port} " in run(["ip", "netns", "exec", ns, "ss", "-H", flag]):
                return
            time.sleep(0.02)  # polling the socket table, bounded by the deadline
        raise LabError(f"the {transport.label} receiver did not listen within {START_TIMEOUT_S}s")

    def _wait_both(
        self, sender: subprocess.Popen[bytes], receiver: subprocess.Popen[bytes]
    ) -> tuple[int | None, int | None]:
        timeout = self.config.timeout_s
        out: list[int | None] = []
        for proc in (sender, receiver):
            try:
                out.append(proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:  # stopped below: the run is incomplete
                out.append(None)
            timeout = 30.0  # the receiver finishes soon after the sender
            self.lab.stop(proc)
        return out[0], out[1]


def _tcp_echo_rtts(host: str, count: int) -> PingStats:
    """``count`` round trips of a 64-byte line through the TCP echo server at ``host``
    (after ``ECHO_WARMUP`` uncounted ones)."""
    stats = PingStats()
    warmup = ECHO_WARMUP
    line = b"x" * (ECHO_PAYLOAD_BYTES - 1) + b"\n"
    with socket.create_connection((host, TCP_ECHO_PORT), timeout=10.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count + ECHO_WARMUP):
            counted = warmup == 0
            warmup = max(0, warmup - 1)
            stats.transmitted += counted
            started = time.perf_counter()
            sock.sendall(line)
            got = b""
            while len(got) < len(line):
                data = sock.recv(len(line) - len(got))
                if not data:
                    return stats
                got += data
            if counted:
                stats.rtts_ms.append((time.perf_counter() - started) * 1e3)
            time.sleep(0.01)  # pacing the probes (as ping -i), not synchronisation
    return stats


def _ping_dict(stats: PingStats) -> dict[str, Any]:
    rtt = stats.rtt_summary_ms()
    keys = ("min_ms", "avg_ms", "max_ms", "mdev_ms")
    out: dict[str, Any] = {
        "transmitted": stats.transmitted,
        "received": stats.received,
        "loss": stats.lost / stats.transmitted if stats.transmitted else None,
        **dict(zip(keys, rtt or (None,) * 4, strict=True)),
        "median_ms": statistics.median(stats.rtts_ms) if stats.rtts_ms else None,
    }
    return out


def _load(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc


def _run_record(
    point: Point, transport: Transport, run_index: int, report: Path, send_report: Path
) -> dict[str, Any]:
    """The run's row from the receiver's report (and for TCP the sender's TCP_INFO)."""
    doc = _load(report)
    record: dict[str, Any] = {
        "point": point.index,
        "transport": transport.transport,
        "mode": transport.mode,
        "run": run_index + 1,
        "goodput_bps": None,
        "duration_s": None,
        "complete": False,
        "verified": False,
        "retransmitted": None,
        "loss_seen": None,
        "report": str(report) if doc is not None else None,
    }
    if doc is None:
        return record
    record["complete"] = bool(doc["file"]["complete"])
    record["verified"] = bool(doc["file"]["verified"])
    record["duration_s"] = doc["timing"].get("duration_s")
    record["goodput_bps"] = doc["timing"].get("goodput_bps")
    if transport.transport == "udp":
        record["retransmitted"] = doc["chunks"].get("retransmitted")
        record["loss_seen"] = doc["loss"].get("rate")
        return record
    sent = _load(send_report)
    info = (sent or {}).get("tcp_info") or {}
    record["tcp_info"] = info or None
    record["retransmitted"] = info.get("total_retrans")
    segs = info.get("data_segs_out")
    if segs:
        record["loss_seen"] = info.get("total_retrans", 0) / segs
    return record


def _run_line(record: dict[str, Any]) -> str:
    label = next(
        t.label
        for t in TRANSPORTS.values()
        if (t.transport, t.mode) == (record["transport"], record["mode"])
    )
    state = (
        "verified"
        if record["verified"]
        else "complete"
        if record["complete"]
        else ("incomplete" if record["mode"] == "blast" else "FAILED")
    )
    rate = "-" if record["goodput_bps"] is None else format_rate(record["goodput_bps"])
    loss = record["loss_seen"]
    return (
        f"  {label:<13} run {record['run']}: {state}, {rate}"
        + ("" if record["duration_s"] is None else f" in {record['duration_s']:.2f} s")
        + ("" if loss is None else f", loss seen {loss * 100:.2f}%")
    )
