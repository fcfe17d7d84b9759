"""Per-datagram AEAD cost: AES-256-GCM against ChaCha20-Poly1305, through PacketProtection.

Each figure is calls per second of PacketProtection.seal / open_untrusted on one reused cipher
object, so it includes the nonce computation and the Python call overhead a datagram pays.
Usage:

    python benchmarks/aead.py [--seconds 0.5] [--repeat 5]

Prints the best of ``--repeat`` runs per case (the least disturbed on a shared machine) and
the matching throughput in MB/s of body.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from udpxfer.protocol.keys import KEY_BYTES, Direction, PacketProtection

HEADER = bytes(44)
SIZES = (1400, 8800)
CIPHERS: dict[str, type[AESGCM] | type[ChaCha20Poly1305]] = {
    "AES-256-GCM": AESGCM,
    "ChaCha20-Poly1305": ChaCha20Poly1305,
}


def protection(cipher: type[AESGCM] | type[ChaCha20Poly1305]) -> PacketProtection:
    """A PacketProtection whose two directions use ``cipher`` with random keys."""
    aeads = (cipher(os.urandom(KEY_BYTES)), cipher(os.urandom(KEY_BYTES)))
    return PacketProtection(aeads, (1, 2))  # type: ignore[arg-type]


def rate(call: Callable[[int], object], seconds: float) -> float:
    """Calls per CPU second of ``call(pn)`` over about ``seconds`` of this process's CPU time.

    CPU time, not wall time: on a shared machine, time spent preempted is not ours.
    """
    count, batch = 0, 256
    start = time.process_time()
    while True:
        for _ in range(batch):
            call(count)
            count += 1
        elapsed = time.process_time() - start
        if elapsed >= seconds:
            return count / elapsed


def cases(prot: PacketProtection, size: int) -> dict[str, Callable[[int], object]]:
    body = memoryview(os.urandom(size))
    header = memoryview(HEADER)
    to_r = Direction.TO_RECEIVER
    sealed = prot.seal(to_r, 0, 7, header, body, encrypt=True)
    tagged = memoryview(prot.seal(to_r, 0, 7, header, body, encrypt=False))
    return {
        "seal encrypt": lambda pn: prot.seal(to_r, 0, pn, header, body, encrypt=True),
        "open encrypt": lambda _: prot.open_untrusted(to_r, 0, 7, header, sealed, encrypt=True),
        "seal tag-only": lambda pn: prot.seal(to_r, 0, pn, header, body, encrypt=False),
        "open tag-only": lambda _: prot.open_untrusted(to_r, 0, 7, header, tagged, encrypt=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="duration of one run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case; the best is kept")
    args = parser.parse_args()
    prots = {name: protection(cipher) for name, cipher in CIPHERS.items()}
    best: dict[tuple[str, int, str], float] = {}
    # Interleave the ciphers run by run so that a burst of load elsewhere hits both alike.
    for _ in range(args.repeat):
        for size in SIZES:
            for name, prot in prots.items():
                for case, call in cases(prot, size).items():
                    key = (name, size, case)
                    best[key] = max(best.get(key, 0.0), rate(call, args.seconds))
    print(f"{'cipher':<18} {'case':<14} {'body':>5}  {'calls/s':>9}  {'MB/s':>7}")
    for (name, size, case), calls in sorted(best.items()):
        print(f"{name:<18} {case:<14} {size:>5}  {calls:>9,.0f}  {calls * size / 1e6:>7,.0f}")


if __name__ == "__main__":
    main()
