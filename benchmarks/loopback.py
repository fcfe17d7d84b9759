"""Loopback throughput: udpxfer (reliable, blast) against a raw-socket ceiling and TCP.

Every figure comes from the same run on the same machine, so the ratios mean something on a
shared, noisy host. Usage:

    python benchmarks/loopback.py [--size 256M] [--chunk-size 1400] [--repeat 1]

The raw-socket ceiling is a plain Python loop sending datagrams of udpxfer's size (chunk +
44-byte header) to a receiving process that counts them; TCP is socket.sendfile into a
process that writes the file to disk, like udpxfer's receiver does.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from udpxfer.units import parse_size
from udpxfer.wire import HEADER_BYTES

LOOPBACK = "127.0.0.1"


def _raw_receiver(port_queue: mp.Queue, result_queue: mp.Queue, expected: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 32 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sock.bind((LOOPBACK, 0))
    port_queue.put(sock.getsockname()[1])
    buf = bytearray(65536)
    sock.settimeout(5.0)
    received = 0
    n_bytes = 0
    first = last = 0.0
    try:
        while received < expected:
            n = sock.recv_into(buf)
            last = time.perf_counter()
            if received == 0:
                first = last
            received += 1
            n_bytes += n
            if received < expected:
                sock.settimeout(0.5)
    except TimeoutError:
        pass  # the sender finished and some datagrams were lost
    result_queue.put((received, n_bytes, last - first))


def raw_ceiling(datagram_bytes: int, count: int) -> dict[str, float]:
    """Goodput of a plain send loop into a plain receive loop in another process."""
    ports: mp.Queue = mp.Queue()
    results: mp.Queue = mp.Queue()
    proc = mp.Process(target=_raw_receiver, args=(ports, results, count))
    proc.start()
    port = ports.get(timeout=10)
    payload = os.urandom(datagram_bytes)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOOPBACK, port))
        send = sock.send
        for _ in range(count):
            send(payload)
    received, n_bytes, elapsed = results.get(timeout=60)
    proc.join(timeout=10)
    return {
        "goodput_bps": n_bytes * 8 / elapsed if elapsed > 0 else 0.0,
        "lost": count - received,
    }


def _tcp_receiver(port_queue: mp.Queue, result_queue: mp.Queue, out: str) -> None:
    with socket.create_server((LOOPBACK, 0)) as server:
        port_queue.put(server.getsockname()[1])
        conn, _ = server.accept()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        start = time.perf_counter()
        total = 0
        with conn, open(out, "wb") as handle:
            while n := conn.recv_into(buf):
                handle.write(view[:n])
                total += n
        result_queue.put((total, time.perf_counter() - start))


def tcp_transfer(path: Path, out_dir: Path) -> dict[str, float]:
    """Goodput of socket.sendfile into a process that writes the file."""
    ports: mp.Queue = mp.Queue()
    results: mp.Queue = mp.Queue()
    proc = mp.Process(target=_tcp_receiver, args=(ports, results, str(out_dir / "tcp.bin")))
    proc.start()
    port = ports.get(timeout=10)
    with socket.create_connection((LOOPBACK, port)) as sock, path.open("rb") as handle:
        sock.sendfile(handle)
    total, elapsed = results.get(timeout=120)
    proc.join(timeout=10)
    return {"goodput_bps": total * 8 / elapsed, "lost": 0}


def udpxfer_transfer(path: Path, work: Path, mode: str, chunk_size: int) -> dict[str, float]:
    """One udpxfer send/recv pair of processes; figures from the receiver's report."""
    report = work / f"report-{mode}.json"
    recv = subprocess.Popen(
        [sys.executable, "-m", "udpxfer", "recv", "--bind", f"{LOOPBACK}:0", "--once",
         "--out", str(work / f"out-{mode}"), "--report", str(report)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert recv.stdout is not None
    line = recv.stdout.readline()
    port = int(line.rsplit(":", 1)[1])
    start = time.perf_counter()
    send = subprocess.run(
        [sys.executable, "-m", "udpxfer", "send", str(path), "--to", f"{LOOPBACK}:{port}",
         "--mode", mode, "--chunk-size", str(chunk_size), "-q"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    wall = time.perf_counter() - start
    recv.communicate(timeout=60)
    if send.returncode != 0:
        raise SystemExit(f"udpxfer send failed: {send.stderr.strip()}")
    doc = json.loads(report.read_text())
    (work / f"out-{mode}" / path.name).unlink(missing_ok=True)
    return {
        "goodput_bps": doc["timing"]["goodput_bps"],
        "lost": doc["chunks"]["missing"],
        "resent": doc["chunks"]["retransmitted"],
        "first_pass_loss": doc["loss"]["rate"],
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="file size (default 256M)")
    parser.add_argument("--chunk-size", default="1400", help="udpxfer chunk size (default 1400)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method (median shown)")
    args = parser.parse_args()
    size = parse_size(args.size)
    chunk = parse_size(args.chunk_size)
    datagram = chunk + HEADER_BYTES
    with tempfile.TemporaryDirectory(prefix="udpxfer-bench-") as tmp:
        work = Path(tmp)
        path = work / "random.bin"
        with path.open("wb") as handle:
            for _ in range(0, size, 1 << 24):
                handle.write(os.urandom(min(1 << 24, size - handle.tell())))
        methods = {
            "raw UDP ceiling": lambda: raw_ceiling(datagram, -(-size // chunk)),
            "udpxfer reliable": lambda: udpxfer_transfer(path, work, "reliable", chunk),
            "udpxfer blast": lambda: udpxfer_transfer(path, work, "blast", chunk),
            "TCP sendfile": lambda: tcp_transfer(path, work),
        }
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
        for _ in range(args.repeat):
            for name, run in methods.items():
                rows[name].append(run())
    ceiling = statistics.median(r["goodput_bps"] for r in rows["raw UDP ceiling"])
    print(f"file {size} bytes, datagrams of {datagram} bytes, {args.repeat} run(s), median")
    print(f"{'method':<18} {'goodput':>14} {'x raw':>7} {'lost':>7} {'resent':>7}")
    for name, runs in rows.items():
        goodput = statistics.median(r["goodput_bps"] for r in runs)
        lost = statistics.median(r.get("lost", 0) for r in runs)
        resent = statistics.median(r.get("resent", 0) for r in runs)
        print(
            f"{name:<18} {goodput / 1e6:>9.1f} Mb/s {goodput / ceiling:>7.2f} "
            f"{lost:>7.0f} {resent:>7.0f}"
        )


if __name__ == "__main__":
    main()
