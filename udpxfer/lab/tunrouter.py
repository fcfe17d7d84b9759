"""A user-space impairment router between two TUN devices, one in each host namespace.

Every IP packet host ``a`` sends leaves through its TUN device; the router reads it, hands it
to the forward ``ImpairmentPolicy`` (the same seeded policy ``udpxfer impair`` applies to UDP
datagrams) and writes what the policy releases into host ``b``'s TUN device, where the kernel
receives it as if from a wire. The reverse direction has its own policy. Delay therefore makes
the round-trip time real for TCP, and loss hits TCP segments and ACKs alike.

The loop is single-threaded and works on batches: it reads every packet waiting on a device
(up to ``BATCH``) before asking the policies what is due. Its own packet rate is the limit of
the lab (docs/LAB.md has the figures).
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from udpxfer.errors import LabError, map_os_errors
from udpxfer.lab.impair.models import Direction, Impairment
from udpxfer.lab.impair.policy import ImpairmentPolicy, direction_rng
from udpxfer.lab.impair.records import DirectionStats
from udpxfer.lab.netns import in_netns

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
READ_BYTES = 65536
BATCH = 64  # packets read from one device before the policies are asked again


def open_tun(netns: str, name: str) -> int:
    """Create TUN device ``name`` inside ``netns``; its file descriptor (non-blocking).

    The device lives as long as the descriptor: closing it removes the device.

    Raises:
        LabError: no ``/dev/net/tun``, or the kernel refused.
    """

    def create() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
        return fd

    with map_os_errors(LabError, f"cannot create TUN device {name} in {netns}"):
        return in_netns(netns, create)


@dataclass(slots=True)
class _Way:
    """One direction: where packets come from, the policy, where they go."""

    src: int
    dst: int
    policy: ImpairmentPolicy[None]
    write_errors: int = 0


class TunRouter:
    """Route IP packets between two TUN descriptors through a policy per direction.

    Args:
        fd_a: host a's TUN device (packets read here go forward, to ``fd_b``).
        fd_b: host b's TUN device.
        forward, reverse: the impairment of each direction.
        seed: the seed of every random decision.
    """

    def __init__(
        self, fd_a: int, fd_b: int, forward: Impairment, reverse: Impairment, *, seed: int
    ) -> None:
        self._fds = (fd_a, fd_b)
        self._lock = threading.Lock()
        self._ways: dict[Direction, _Way] = {}
        self.seed = seed
        self._set(forward, reverse)
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _set(self, forward: Impairment, reverse: Impairment) -> None:
        fd_a, fd_b = self._fds
        self._ways = {
            Direction.FORWARD: _Way(fd_a, fd_b, _policy(forward, self.seed, Direction.FORWARD)),
            Direction.REVERSE: _Way(fd_b, fd_a, _policy(reverse, self.seed, Direction.REVERSE)),
        }

    def set_impairment(self, forward: Impairment, reverse: Impairment) -> None:
        """Replace both policies (fresh counters and random streams from the same seed)."""
        with self._lock:
            self._set(forward, reverse)

    def stats(self) -> dict[str, DirectionStats]:
        """The counters of each direction since the last ``set_impairment``."""
        with self._lock:
            return {d.value: way.policy.stats for d, way in self._ways.items()}

    def start(self) -> None:
        """Route in a background thread until ``close``."""
        self._thread = threading.Thread(target=self._guarded_run, name="tun-router", daemon=True)
        self._thread.start()

    def _guarded_run(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # kept for the owner: a dead router fails the next run
            self.error = exc

    def run(self) -> None:
        """The routing loop (returns once ``close`` is called)."""
        poller = select.epoll()
        for fd in (*self._fds, self._stop_r):
            poller.register(fd, select.EPOLLIN)
        by_src = {way.src: d for d, way in self._ways.items()}
        try:
            while True:
                with self._lock:
                    ways = list(self._ways.values())
                    deadlines = [w.policy.next_deadline() for w in ways]
                timeout = -1.0
                pending = [d for d in deadlines if d is not None]
                if pending:
                    timeout = max(0.0, min(pending) - time.monotonic())
                events = poller.poll(timeout)
                with self._lock:
                    for fd, _ in events:
                        if fd == self._stop_r:
                            return
                        self._read(self._ways[by_src[fd]], time.monotonic)
                    for way in self._ways.values():
                        self._release(way, time.monotonic())
        finally:
            poller.close()

    @staticmethod
    def _read(way: _Way, clock: Callable[[], float]) -> None:
        # Each packet is stamped after its own read: a packet that arrived while the loop was
        # already reading (its thread can wait for the GIL between two reads) must not be
        # stamped with the wake-up time, which would release it early.
        policy = way.policy
        for _ in range(BATCH):
            try:
                packet = os.read(way.src, READ_BYTES)
            except BlockingIOError:
                return
            policy.on_datagram(packet, clock(), None)

    @staticmethod
    def _release(way: _Way, now: float) -> None:
        for packet, _ in way.policy.due(now):
            try:
                os.write(way.dst, packet)
            except OSError:
                # The device is going down (teardown) or the stack refused the packet (for
                # instance a corrupted header): counted, as a wire would lose it.
                way.write_errors += 1

    def close(self) -> None:
        """Stop the loop and close both devices (which removes them)."""
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5.0)
            self._thread = None
        for fd in (*self._fds, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                continue  # already closed
        self._fds = (-1, -1)

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready data."""
        return {name: stats.as_dict() for name, stats in self.stats().items()}


def _policy(config: Impairment, seed: int, direction: Direction) -> ImpairmentPolicy[None]:
    return ImpairmentPolicy(config, direction_rng(seed, direction), direction=direction)
