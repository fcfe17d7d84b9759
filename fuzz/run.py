"""A long seeded fuzz of the receiver endpoint, the sender session and the decoder.

The same mutations as the suite's tests/test_fuzz.py (tests/fuzzing.py), for longer: datagrams
captured from real in-memory transfers, mutated (bit flips, truncations, splices, check-valid
forgeries with fields at their bounds, hostile names and ranges) and fed to
``decode_untrusted`` (where only MalformedPacket may be raised), a ``ReceiverEndpoint`` and a
``SenderSession`` (which may raise nothing). Every ``--segment`` inputs the harness starts over
after checking that a real transfer through the fuzzed endpoint still arrives byte-exact.
Usage:

    python fuzz/run.py [--count 1000000] [--seed 0] [--segment 100000] [--show 5] [--keyed]

Prints progress with inputs/s, each distinct escape once (with the input as hex), and a
summary. Exit status: 0 when nothing escaped, 1 when something did, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# The mutation code is shared with the suite (tests/test_fuzz.py).
from fuzzing import (
    Escape,
    Harness,
    Mutator,
    capture_corpus,
)

PROGRESS_EVERY_S = 5.0


def positive(text: str) -> int:
    """An argparse type: a positive integer (underscores allowed, as 1_000_000)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fuzz udpxfer's decoder, receiver endpoint and sender session with "
        "mutated datagrams from real transfers; report anything that escapes.",
    )
    parser.add_argument("--count", type=positive, default=1_000_000, help="inputs in all")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the mutations (same seed, same inputs)"
    )
    parser.add_argument(
        "--segment",
        type=positive,
        default=100_000,
        help="inputs per harness: then a real transfer is checked and the state starts over",
    )
    parser.add_argument(
        "--show", type=int, default=5, help="distinct escapes printed in full (0: none)"
    )
    parser.add_argument(
        "--keyed",
        action="store_true",
        help="keyed mode: corpus, endpoint and sender use a pre-shared key",
    )
    return parser.parse_args(argv)


def signature(escape: Escape) -> tuple[str, str]:
    """Where an escape happened and its exception line: one entry per distinct bug."""
    lines = escape.error.strip().splitlines()
    return escape.where, lines[-1] if lines else ""


class Run:
    """The run's counters and what it prints."""

    def __init__(self, count: int, show: int) -> None:
        self.count = count
        self.show = show
        self.done = 0
        self.escapes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.decoded = 0
        self.transfer_failures: list[str] = []
        self.started = time.monotonic()
        self.started_cpu = time.process_time()
        self._next_progress = self.started + PROGRESS_EVERY_S

    def absorb(self, harness: Harness) -> None:
        """Take in what a finished segment found."""
        self.decoded += harness.decoded
        for escape in harness.escapes:
            key = signature(escape)
            if key not in self.escapes and len(self.escapes) < self.show:
                print(f"\nESCAPE {escape}", flush=True)
            self.escapes[key] += 1
        harness.escapes.clear()

    def progress(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now < self._next_progress:
            return
        self._next_progress = now + PROGRESS_EVERY_S
        wall = max(now - self.started, 1e-9)
        cpu = max(time.process_time() - self.started_cpu, 1e-9)
        print(
            f"{self.done:>10,} / {self.count:,} inputs  {self.done / wall:8,.0f} inputs/s "
            f"({self.done / cpu:,.0f} per CPU second)  escapes: {sum(self.escapes.values())}",
            flush=True,
        )

    def summary(self) -> None:
        print(f"\n{self.done:,} inputs, {self.decoded:,} of them decodable")
        print("mutations: " + ", ".join(f"{k} {n:,}" for k, n in sorted(self.kinds.items())))
        if self.transfer_failures:
            print(f"real transfers after fuzzing that failed: {len(self.transfer_failures)}")
            for reason in self.transfer_failures[:5]:
                print(f"  {reason}")
        if not self.escapes:
            print("nothing escaped")
            return
        print(f"{sum(self.escapes.values()):,} escapes, {len(self.escapes)} distinct:")
        for (where, line), n in self.escapes.most_common():
            print(f"  {n:>8,}  {where}: {line}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    corpus = capture_corpus(keyed=args.keyed)
    mode = "keyed" if args.keyed else "keyless"
    print(
        f"corpus: {len(corpus)} datagrams from real {mode} transfers; seed {args.seed}", flush=True
    )
    mutator = Mutator(corpus, args.seed)
    run = Run(args.count, args.show)
    harness = Harness(keyed=args.keyed)
    try:
        while run.done < args.count:
            for _ in range(min(args.segment, args.count - run.done)):
                kind, datagram = mutator.next()
                run.kinds[kind] += 1
                harness.feed(kind, datagram)
                run.done += 1
                if run.done % 1024 == 0:
                    run.progress()
            run.absorb(harness)
            problem = harness.real_transfer_problem()
            if problem:
                run.transfer_failures.append(f"after input {run.done:,}: {problem}")
            harness = Harness(keyed=args.keyed)
    except KeyboardInterrupt:
        run.absorb(harness)
        run.progress(final=True)
        run.summary()
        return 130
    run.progress(final=True)
    run.summary()
    return 1 if run.escapes or run.transfer_failures else 0


if __name__ == "__main__":
    sys.exit(main())
