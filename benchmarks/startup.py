"""How fast ``udpxfer send`` starts: time to its first datagram, and what its imports cost.

    python benchmarks/startup.py [--repeat 7]

Prints medians of: a bare interpreter (``python -c pass``, start to exit); ``udpxfer send``
from the process start to its first datagram arriving on a loopback socket (the sender is then
stopped); and the cumulative import time of ``udpxfer`` and its CLI as ``python -X importtime``
reports it for ``udpxfer send --help`` and for a real send. The target is under 0.15 s of
importing before the first datagram; on a shared machine the figures move with the load.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 30.0


def bare_interpreter_s() -> float:
    start = time.perf_counter()
    subprocess.run([PYTHON, "-c", "pass"], check=True)
    return time.perf_counter() - start


def first_datagram_s(path: Path, *, importtime: bool = False) -> tuple[float, float]:
    """(seconds from spawning ``udpxfer send`` to its first datagram, import seconds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        flags = ["-X", "importtime"] if importtime else []
        start = time.perf_counter()
        proc = subprocess.Popen(
            [PYTHON, *flags, "-m", "udpxfer", "send", str(path), "--to", f"127.0.0.1:{port}",
             "--mode", "blast", "-q"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        ready, _, _ = select.select([sink], [], [], TIMEOUT_S)
        elapsed = time.perf_counter() - start
        proc.kill()
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
        if not ready:
            raise SystemExit(f"no datagram within {TIMEOUT_S} s: {stderr.decode()[-500:]}")
    return elapsed, import_seconds(stderr.decode())


def import_seconds(stderr: str) -> float:
    """Cumulative import time of the top-level udpxfer modules in ``-X importtime`` output."""
    total_us = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        _, cumulative, name = line.split("|")
        if name.strip().startswith("udpxfer") and not name.startswith("  "):
            total_us += int(cumulative)
    return total_us / 1e6


def help_import_s() -> float:
    result = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "udpxfer", "send", "--help"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return import_seconds(result.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs of each (default 7)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="udpxfer-startup-") as tmp:
        path = Path(tmp) / "data.bin"
        path.write_bytes(os.urandom(1 << 20))
        bare = [bare_interpreter_s() for _ in range(args.repeat)]
        first = [first_datagram_s(path)[0] for _ in range(args.repeat)]
        send_imports = [first_datagram_s(path, importtime=True)[1] for _ in range(args.repeat)]
        help_imports = [help_import_s() for _ in range(args.repeat)]
    load = os.getloadavg()[0]
    print(f"{args.repeat} runs each, medians; load average {load:.2f}")
    print(f"bare interpreter, start to exit         {statistics.median(bare):.3f} s")
    print(f"udpxfer send, start to first datagram   {statistics.median(first):.3f} s")
    print(f"  udpxfer imports (-X importtime)       {statistics.median(send_imports):.3f} s")
    print(f"udpxfer send --help imports             {statistics.median(help_imports):.3f} s")


if __name__ == "__main__":
    main()
