"""A real transfer under a flood of junk and check-valid forgeries from another address.

The bar (issue 7): a flood of junk and check-valid forgeries from another host, while a real
transfer runs, neither refuses the real transfer nor slows it below half its clean speed.

Everything stays on loopback: ``udpxfer recv --once`` on 127.0.0.1, ``udpxfer send`` from
127.0.0.1, and a flooder process whose socket is bound to 127.0.0.2 (another source host as
far as the receiver's per-source limits go). Each run times a reliable transfer of a random
file from starting the sender until both ends have exited, clean and under the flood, in
alternation; the figure is the ratio of the two medians.

    python benchmarks/flood.py [--size 64M] [--repeat 3] [--flood-pps 25000,50000] [--seed 0]

The flood is a pool of datagrams made before the clock starts and sent round-robin, paced to
``--flood-pps`` (0: as fast as the flooder can) from the moment the receiver listens until it
exits. By share of the pool:

    junk          random bytes, 1 to 1,452 long, half of them starting with udpxfer's magic
    truncated     valid datagrams of every type cut short
    bit flips     valid datagrams with one to three bits flipped (the CRC no longer matches)
    forged DATA   CRC-valid, a random session id, 1,400-byte payload
    forged META   CRC-valid, a random session id, reliable and blast, sizes up to 2^40
    forged END    CRC-valid, a random session id
    forged NACK   CRC-valid, a random session id, ranges up to 2^64 - 1

Every forged session id is drawn at random (64 bits): none belongs to the real transfer, as
from an off-path attacker. On a 2-core machine the flooder's own CPU is taken from the two
ends; its achieved rate and CPU time are printed beside the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PYTHON = sys.executable
HERE = Path(__file__).resolve()
REPO = HERE.parent.parent  # the working directory of every child: ``-m udpxfer`` is this checkout
RECEIVER_HOST = "127.0.0.1"
FLOOD_HOST = "127.0.0.2"
POOL = 1 << 16
STARTUP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 600.0
BURST = 32  # datagrams sent between two looks at the clock
MIX = {  # share of the pool by kind
    "junk": 0.25,
    "truncated": 0.10,
    "bit flips": 0.10,
    "forged DATA": 0.25,
    "forged META": 0.15,
    "forged END": 0.10,
    "forged NACK": 0.05,
}


# --- the flooder (a child process) ---------------------------------------------------------


def forged_pool(count: int, seed: int) -> list[bytes]:
    """``count`` flood datagrams in the proportions of ``MIX``, shuffled."""
    from udpxfer.protocol.codec import encode
    from udpxfer.protocol.wire import Data, End, Meta, Mode, Nack

    rng = random.Random(seed)

    def sid() -> int:
        return rng.getrandbits(64)

    def big() -> int:
        return rng.choice([0, 1, 1 << 31, 1 << 62, rng.getrandbits(40)])

    def data() -> bytes:
        return encode(Data(sid(), rng.getrandbits(20), rng.getrandbits(20), rng.randbytes(1400)))

    def meta() -> bytes:
        size = rng.choice([1, 1 << 20, 1 << 30, 1 << 40])
        chunk = rng.choice([1, 1400, 8800])
        mode = rng.choice([Mode.RELIABLE, Mode.BLAST])
        name = rng.choice(["x.bin", "../../etc/passwd", "a" * 200])
        packet = Meta(sid(), name, size, chunk, -(-size // chunk), rng.randbytes(32), mode)
        return encode(packet)

    def end() -> bytes:
        return encode(End(sid(), rng.getrandbits(8), big(), big()))

    def nack() -> bytes:
        ranges = tuple((0, rng.choice([1 << 20, (1 << 64) - 1])) for _ in range(rng.randint(1, 8)))
        return encode(Nack(sid(), rng.getrandbits(8), 0, ranges))

    valid = (data, meta, end, nack)

    def junk() -> bytes:
        body = rng.randbytes(rng.randint(1, 1452))
        return b"UDPX\x02" + body[5:] if rng.random() < 0.5 and len(body) > 5 else body

    def truncated() -> bytes:
        datagram = rng.choice(valid)()
        return datagram[: rng.randrange(len(datagram))]

    def flipped() -> bytes:
        datagram = bytearray(rng.choice(valid)())
        for bit in rng.sample(range(len(datagram) * 8), rng.randint(1, 3)):
            datagram[bit // 8] ^= 1 << (bit % 8)
        return bytes(datagram)

    makers = {
        "junk": junk,
        "truncated": truncated,
        "bit flips": flipped,
        "forged DATA": data,
        "forged META": meta,
        "forged END": end,
        "forged NACK": nack,
    }
    pool = [makers[kind]() for kind, share in MIX.items() for _ in range(round(count * share))]
    rng.shuffle(pool)
    return pool


def flood(port: int, pps: float, seed: int) -> None:
    """Send the pool to ``port`` until SIGTERM, then print what was sent."""
    pool = forged_pool(POOL, seed)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((FLOOD_HOST, 0))
    sock.setblocking(False)
    target = (RECEIVER_HOST, port)
    sendto = sock.sendto
    sent = dropped = 0
    i = 0
    print("flooding", flush=True)
    start = time.perf_counter()
    while not stop:
        for _ in range(BURST):
            try:
                sendto(pool[i], target)
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                dropped += 1  # a full queue, or an ICMP answer: lost as on a wire
            i = i + 1 if i + 1 < len(pool) else 0
        # Replies (HELLO tokens, within 3x what we sent) are read and thrown away.
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            while sock.recv(65536):
                pass
        if pps:
            due = start + (sent + dropped) / pps
            delay = due - time.perf_counter()
            if delay > 0:
                select.select([], [], [], delay)  # pacing: the next burst's time
    elapsed = time.perf_counter() - start
    print(f"sent {sent} dropped {dropped} in {elapsed:.3f} cpu {time.process_time():.3f}")


# --- the runs --------------------------------------------------------------------------------


@dataclass
class Run:
    wall_s: float
    ok: bool
    notes: list[str]
    flood_pps: float = 0.0  # achieved
    flood_cpu_s: float = 0.0
    rejected: int = 0  # the receiver's datagrams.rejected


def start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_line(proc: subprocess.Popen[bytes], pattern: str) -> re.Match[str]:
    """The first stdout line of ``proc`` matching ``pattern`` (a bounded wait)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    buffered = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buffered += chunk.decode(errors="replace")
        if match := re.search(pattern, buffered, re.MULTILINE):
            return match
    proc.kill()
    raise SystemExit(f"{proc.args!r} did not say {pattern!r}: {buffered[-500:]}")


def wait_both(procs: list[subprocess.Popen[bytes]]) -> float:
    """Wait (bounded) until every process has exited; the time the last one did."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise SystemExit(f"timed out after {RUN_TIMEOUT_S} s") from None
    return time.perf_counter()


def transfer(src: Path, work: Path, *, pps: float | None, seed: int) -> Run:
    """One reliable transfer of ``src``; with ``pps`` not None, under a flood."""
    out = work / "out"
    report = work / "report.json"
    for path in (*out.glob("*"), report):
        path.unlink(missing_ok=True)
    out.mkdir(exist_ok=True)
    receiver = start(
        [PYTHON, "-m", "udpxfer", "recv", "--bind", f"{RECEIVER_HOST}:0", "--once",
         "--out", str(out), "--report", str(report)]
    )  # fmt: skip
    port = int(read_line(receiver, r"listening on \S+:(\d+)")[1])
    flooder = None
    if pps is not None:
        flooder = start([PYTHON, str(HERE), "_flood", str(port), str(pps), str(seed)])
        read_line(flooder, r"^flooding")
    began = time.perf_counter()
    sender = start(
        [PYTHON, "-m", "udpxfer", "send", str(src), "--to", f"{RECEIVER_HOST}:{port}", "-q"]
    )
    ended = wait_both([sender, receiver])
    run = Run(ended - began, True, [])
    if flooder is not None:
        flooder.send_signal(signal.SIGTERM)
        text, _ = flooder.communicate(timeout=30)
        if match := re.search(rb"sent (\d+) dropped (\d+) in ([\d.]+) cpu ([\d.]+)", text):
            run.flood_pps = int(match[1]) / float(match[3])
            run.flood_cpu_s = float(match[4])
    for proc, name in ((sender, "sender"), (receiver, "receiver")):
        if proc.returncode != 0:
            assert proc.stderr is not None
            run.ok = False
            run.notes.append(f"{name} exit {proc.returncode}: {proc.stderr.read().decode()[-300:]}")
    if report.exists():
        doc = json.loads(report.read_text())
        run.rejected = doc["datagrams"]["rejected"]
        if not doc["file"]["verified"]:
            run.ok = False
            run.notes.append(f"not verified: {doc.get('reason')}")
    else:
        run.ok = False
        run.notes.append("no report")
    return run


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_flood":
        flood(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    parser.add_argument("--size", default="64M", help="file size, e.g. 64M (default 64M)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; medians shown")
    parser.add_argument(
        "--flood-pps",
        default="25000",
        help="flood datagrams per second, comma-separated for several (0: unpaced)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the file and the flood")
    args = parser.parse_args()
    from udpxfer.units import parse_size

    size = parse_size(args.size)
    rates = [float(text) for text in args.flood_pps.split(",")]
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((FLOOD_HOST, 0))
        except OSError as exc:
            raise SystemExit(f"cannot bind {FLOOD_HOST} (is 127/8 loopback here?): {exc}") from None
    load = os.getloadavg()
    kinds: list[float | None] = [None, *rates]
    runs: dict[float | None, list[Run]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="udpxfer-flood-") as tmp:
        work = Path(tmp)
        src = work / "random.bin"
        src.write_bytes(random.Random(args.seed).randbytes(size))
        # Interleaved, so that a burst of load elsewhere hits every kind alike.
        for repeat in range(args.repeat):
            for pps in kinds:
                run = transfer(src, work, pps=pps, seed=args.seed + repeat)
                runs[pps].append(run)
                what = "clean" if pps is None else f"flood {pps:,.0f}/s"
                extra = (
                    ""
                    if pps is None
                    else f"; flood {run.flood_pps:,.0f} datagrams/s sent, flooder CPU "
                    f"{run.flood_cpu_s:.1f} s"
                )
                print(
                    f"[{repeat + 1}/{args.repeat}] {what:>14} {size / run.wall_s / 1e6:7.1f} MB/s "
                    f"({run.wall_s:.2f} s), {run.rejected:,} rejected{extra}"
                    f"{'' if run.ok else ' FAILED: ' + '; '.join(run.notes)}",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"{size / 2**20:.0f} MiB random file, reliable, receiver and sender on {RECEIVER_HOST}, "
        f"flood from {FLOOD_HOST}; {args.repeat} run(s) of each, medians, interleaved; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    clean_s = statistics.median(r.wall_s for r in runs[None])
    print()
    print("| flood (datagrams/s, asked / sent) | wall MB/s | wall s | x clean speed "
          "| rejected by the receiver | all verified |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|")
    for pps in kinds:
        wall_s = statistics.median(r.wall_s for r in runs[pps])
        label = (
            "none (clean)"
            if pps is None
            else f"{pps:,.0f} / {statistics.median(r.flood_pps for r in runs[pps]):,.0f}"
        )
        rejected = statistics.median(r.rejected for r in runs[pps])
        ok = "yes" if all(r.ok for r in runs[pps]) else "NO"
        print(
            f"| {label} | {size / wall_s / 1e6:.1f} | {wall_s:.2f} | {clean_s / wall_s:.2f} "
            f"| {rejected:,.0f} | {ok} |"
        )
    print()
    print(
        "x clean speed: the median clean wall time over the median flooded one (the bar: the "
        "real transfer is never refused and keeps at least 0.5). Wall: from starting the "
        "sender until both ends exited."
    )
    failed = [r for kind in kinds for r in runs[kind] if not r.ok]
    if failed:
        print(f"FAILED runs: {len(failed)}: {failed[0].notes}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
