"""The TUN router's loop pieces, on ordinary descriptors (no root, no namespaces)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

from udpxfer.lab.impair.models import Direction, Impairment
from udpxfer.lab.impair.policy import ImpairmentPolicy, direction_rng
from udpxfer.lab.tunrouter import TunRouter, _Way


def test_each_packet_is_stamped_when_it_is_read_not_when_the_poll_woke() -> None:
    # Packets can arrive while the router is already reading (its thread may wait for the GIL
    # between two reads): stamping them all with the wake-up time released some early.
    src, feed = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with src, feed:
        src.setblocking(False)
        for n in range(3):
            feed.send(bytes([n]) * 20)
        policy: ImpairmentPolicy[None] = ImpairmentPolicy(
            Impairment(delay_s=0.5), direction_rng(1, Direction.FORWARD)
        )
        ticks: Iterator[float] = iter([1.0, 2.0, 3.0, 4.0, 5.0])
        TunRouter._read(_Way(src.fileno(), -1, policy), lambda: next(ticks))
        assert [bytes(p)[:1] for p, _ in policy.due(1.5)] == [b"\x00"]
        assert policy.due(2.4) == []
        assert [bytes(p)[:1] for p, _ in policy.due(2.5)] == [b"\x01"]
        assert [bytes(p)[:1] for p, _ in policy.due(3.5)] == [b"\x02"]
