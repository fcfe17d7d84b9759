"""Long fat path: an unpaced ``udpxfer send`` through a delaying, lossy, rate-limited relay.

The relay (``udpxfer.lab.relay.Relay``, on loopback, in this process) impairs both directions
alike: a one-way delay, random loss and a rate bottleneck with its queue. Sender and receiver
are the real CLI in their own processes, and the sender gets no ``--rate``: its congestion
controller has to find the bottleneck. Usage:

    python benchmarks/longfat.py [--delay 50ms] [--loss 1%] [--rate 100M] [--size 32M]
        [--queue 1000] [--runs 1] [--parallel 1]

For each run it prints the goodput (file bytes over the receiver's transfer time, and over
the sender's wall clock from process start to exit) as a fraction of the bottleneck, the
wall clock, the resent chunks and what the relay dropped at the bottleneck's queue.
``--rate 0 --delay 0 --loss 0`` measures the relay's own ceiling on this machine: a
bottleneck near it measures the relay, not the sender. ``--parallel 2`` runs two transfers
at once through the one bottleneck and prints the ratio of their goodputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from udpxfer.lab.impair.models import Direction, Impairment
from udpxfer.lab.relay import Relay
from udpxfer.units import Address, parse_duration, parse_rate, parse_size

LOOPBACK = "127.0.0.1"
UDPXFER = [sys.executable, "-m", "udpxfer"]
TIMEOUT_S = 600.0


@dataclass
class Run:
    """One transfer's figures."""

    verified: bool
    goodput_bps: float
    wall_s: float
    resent: int
    file_bytes: int


def _probability(text: str) -> float:
    text = text.strip()
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def _start_receiver(out: Path, reports: Path, once: bool) -> tuple[subprocess.Popen[str], int]:
    command = [*UDPXFER, "recv", "--bind", f"{LOOPBACK}:0", "--out", str(out),
               "--report", f"{reports}/"]  # fmt: skip
    receiver = subprocess.Popen(
        [*command, "--once"] if once else command,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert receiver.stdout is not None
    line = receiver.stdout.readline()
    if not line.startswith("listening on"):
        receiver.kill()
        _, err = receiver.communicate(timeout=10)
        raise SystemExit(f"the receiver did not start: {line.strip()} {err.strip()}")
    return receiver, int(line.rsplit(":", 1)[1])


def _start_sender(source: Path, to: str) -> subprocess.Popen[str]:
    command = [*UDPXFER, "send", str(source), "--to", to, "-q"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _random_file(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        left = size
        while left:
            block = os.urandom(min(1 << 20, left))
            handle.write(block)
            left -= len(block)


def run_transfers(
    workdir: Path, impairment: Impairment, size: int, parallel: int, seed: int
) -> tuple[list[Run], dict[str, int]]:
    """``parallel`` transfers of ``size`` random bytes at once through one relay.

    One receiver serves them all and one relay carries them, so they share its bottleneck
    (the relay gives each sender its own upstream port, as a NAT does).
    """
    sources = []
    for i in range(parallel):
        sources.append(workdir / f"source-{i}.bin")
        _random_file(sources[-1], size)
    out, reports = workdir / "out", workdir / "reports"
    receiver, port = _start_receiver(out, reports, once=parallel == 1)
    relay = Relay(
        Address(LOOPBACK, 0), Address(LOOPBACK, port), forward=impairment, reverse=impairment,
        seed=seed,
    )  # fmt: skip
    try:
        relay.start()
        to = f"{LOOPBACK}:{relay.listen_address[1]}"
        senders = [(_start_sender(source, to), time.monotonic()) for source in sources]
        walls = []
        for proc, started in senders:
            proc.communicate(timeout=TIMEOUT_S)
            walls.append(time.monotonic() - started)
        deadline = time.monotonic() + 60
        while len(list(reports.glob("*.json"))) < parallel and time.monotonic() < deadline:
            if receiver.poll() is not None:
                break
            time.sleep(0.05)  # polling for the reports' files, bounded by the deadline
        drops = {"queue": 0, "loss": 0}
        for direction in (Direction.FORWARD, Direction.REVERSE):
            drops["queue"] += relay.stats[direction].dropped_queue
            drops["loss"] += relay.stats[direction].dropped_loss
    finally:
        relay.stop()
        relay.join(10)
        relay.close()
        if receiver.poll() is None:
            receiver.terminate()
        receiver.communicate(timeout=30)
    docs = {}
    for path in reports.glob("*.json"):
        doc = json.loads(path.read_text())
        docs[doc["file"]["name"]] = doc
    runs = []
    for source, wall in zip(sources, walls, strict=True):
        doc = docs.get(source.name)
        received = out / source.name
        exact = received.exists() and _sha(received) == _sha(source)
        runs.append(
            Run(
                verified=doc is not None and bool(doc["file"]["verified"]) and exact,
                goodput_bps=float(doc["timing"]["goodput_bps"]) if doc else 0.0,
                wall_s=wall,
                resent=int(doc["chunks"]["retransmitted"]) if doc else -1,
                file_bytes=size,
            )
        )
    return runs, drops


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", default="50ms", help="one-way delay, both directions")
    parser.add_argument("--loss", default="1%", help="random loss, both directions")
    parser.add_argument("--rate", default="100M", help="bottleneck in bit/s, both directions")
    parser.add_argument("--queue", type=int, default=1000, help="bottleneck queue, datagrams")
    parser.add_argument("--size", default="32M", help="file size")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=1, help="transfers at once")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rate = parse_rate(args.rate)
    impairment = Impairment(
        loss=_probability(args.loss),
        delay_s=parse_duration(args.delay),
        rate_bps=rate,
        queue_limit=args.queue if rate else 0,
    )
    size = parse_size(args.size)
    print(
        f"path: {impairment.describe()} (both ways), file {size / 2**20:.1f} MiB, "
        f"{args.parallel} transfer(s) at once"
    )
    fractions = []
    for n in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="udpxfer-longfat-") as tmp:
            runs, drops = run_transfers(Path(tmp), impairment, size, args.parallel, args.seed + n)
        for i, run in enumerate(runs):
            wall_bps = run.file_bytes * 8 / run.wall_s
            fraction = run.goodput_bps / rate if rate else float("nan")
            fractions.append(fraction)
            print(
                f"run {n + 1}.{i + 1}: goodput {run.goodput_bps / 1e6:7.2f} Mbit/s"
                + (f" = {fraction:.3f} of the bottleneck" if rate else "")
                + f", wall clock {run.wall_s:6.2f} s ({wall_bps / 1e6:.2f} Mbit/s"
                + (f" = {wall_bps / rate:.3f}" if rate else "")
                + f"), resent {run.resent}, byte-exact {'yes' if run.verified else 'NO'}"
            )
        if len(runs) > 1:
            rates = [r.goodput_bps for r in runs]
            print(f"  share: max/min goodput {max(rates) / min(rates):.2f}")
        print(f"  relay drops: queue {drops['queue']}, random loss {drops['loss']}")
    if rate and len(fractions) > 1:
        print(f"median fraction of the bottleneck: {statistics.median(fractions):.3f}")


if __name__ == "__main__":
    main()
