"""The impairment relay: UDP sockets around two ``ImpairmentPolicy`` objects (the thin adapter).

Clients send to the listening socket; each client address gets its own upstream socket,
connected to the target, as a NAT would give it its own port. Whatever the target sends back to
that upstream socket goes back to that client. The forward policy impairs client -> target, the
reverse policy target -> client; all the deciding happens there, this module only moves bytes
and keeps time.

The loop is built for rate: nonblocking sockets (``transport.UdpTransport``, which owns all the
socket code) behind one selector, each readable socket drained into one preallocated buffer until
EAGAIN (with a budget, so that the other direction and due releases get their turn). Receives are
coalesced where the kernel offers it (UDP GRO: many datagrams per system call, their boundaries
kept), and when a direction needs no timing the datagrams are sent on from that buffer in runs of
one size (UDP GSO, scatter-gather), with no copy.
"""

from __future__ import annotations

import contextlib
import functools
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Generic, TypeVar

from udpxfer.lab.impair.models import Direction, Impairment
from udpxfer.lab.impair.policy import ImpairmentPolicy, direction_rng
from udpxfer.lab.impair.records import Datagram, DirectionStats, Record
from udpxfer.net.sockets import SockAddr, kernel_drops, resolve
from udpxfer.net.transport import MAX_DATAGRAM, UdpTransport
from udpxfer.protocol.wire import datagrams_per_run
from udpxfer.units import Address

# Datagrams read in one drain stay in this buffer, each at its own offset, until the batch is
# sent: room for 16 full coalesced receives, or several hundred Ethernet-sized datagrams.
RECV_BUFFER_BYTES = 1 << 20
DRAIN_BUDGET = 256  # receive calls on one socket before looking at the others
SEND_WAIT_S = 1.0  # how long a full send buffer may hold the loop before the datagram is lost
MAX_CLIENTS = 256  # upstream sockets kept; the oldest mapping is closed beyond this
# The kernel buffers are the transport's (32 MiB asked for): bursts then wait in the kernel
# rather than being lost before the relay sees them (such losses would be missing from the
# ground truth; ``kernel_drops`` counts them).

Dest = TypeVar("Dest")
RecordSink = Callable[[list[Record]], None]


class StopReason(StrEnum):
    """Why the relay loop ended."""

    STOPPED = "stopped"  # stop() was called (a signal, Ctrl-C, a test)
    COUNT_LIMIT = "count limit"
    DURATION = "duration"


@dataclass(slots=True)
class RelayStats:
    """What the socket side saw, beyond the policies' per-direction counters."""

    clients: int = 0  # client addresses seen
    # Counted when run() ends, from the sockets' counters:
    send_failed: int = 0  # datagrams the system refused to send (counted as delivered above)
    unreachable: int = 0  # ICMP port unreachable reports from the target
    # Datagrams the kernel dropped because a socket's receive queue was full, before the relay
    # could see them (so not in the log); Linux only, None elsewhere. Counted when run() ends.
    kernel_drops_forward: int | None = None
    kernel_drops_reverse: int | None = None


class _Outbox(Generic[Dest]):
    """Collects datagrams to send, in order, into runs of one destination and one size.

    Each full run, and the last one at ``flush()``, goes to ``send_run`` (one GSO system call).
    """

    __slots__ = ("_dest", "_limit", "_run", "_send_run", "_size")

    def __init__(self, send_run: Callable[[list[Datagram], Dest], None]) -> None:
        self._send_run = send_run
        self._run: list[Datagram] = []
        self._dest: Dest | None = None
        self._size = -1
        self._limit = 0  # datagrams of this size one GSO send carries

    def add(self, data: Datagram, dest: Dest) -> None:
        size = len(data)
        if size != self._size or dest != self._dest or len(self._run) >= self._limit:
            self.flush()
            self._dest, self._size = dest, size
            self._limit = datagrams_per_run(size)
        self._run.append(data)

    def flush(self) -> None:
        if self._run:
            run, self._run = self._run, []
            self._send_run(run, self._dest)  # type: ignore[arg-type]


def _send_due(policy: ImpairmentPolicy[Dest], outbox: _Outbox[Dest], now: float) -> None:
    for data, dest in policy.due(now):
        outbox.add(data, dest)
    outbox.flush()


class Relay:
    """A bidirectional impairing UDP relay between clients and one target.

    Use ``run()`` to relay in the calling thread until stopped, or ``start()`` to relay in a
    background thread (tests), then ``stop()`` and ``join()``. The sockets are bound in the
    constructor, so ``listen_address`` is known (useful with port 0) and a busy address fails
    early.

    Args:
        listen: where clients send.
        target: where their datagrams go.
        forward: the impairment of client -> target datagrams.
        reverse: the impairment of target -> client datagrams.
        seed: fixes every random decision (``impair.policy.direction_rng``).
        on_records: receives the ground-truth records in batches, from the relay thread;
            None skips building them.
        count_limit: stop after this many datagrams have arrived (both directions together).
        duration_s: stop after this long.
        clock: the monotonic clock, in seconds.

    Raises:
        UsageError: an address that does not resolve or cannot be bound.
    """

    def __init__(
        self,
        listen: Address,
        target: Address,
        *,
        forward: Impairment | None = None,
        reverse: Impairment | None = None,
        seed: int = 0,
        on_records: RecordSink | None = None,
        count_limit: int | None = None,
        duration_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        record = on_records is not None
        self.forward: ImpairmentPolicy[UdpTransport] = ImpairmentPolicy(
            forward or Impairment(),
            direction_rng(seed, Direction.FORWARD),
            direction=Direction.FORWARD,
            record=record,
        )
        self.reverse: ImpairmentPolicy[SockAddr] = ImpairmentPolicy(
            reverse or Impairment(),
            direction_rng(seed, Direction.REVERSE),
            direction=Direction.REVERSE,
            record=record,
        )
        self.seed = seed
        self.epoch = clock()  # log times (``Record.as_row``) count from here
        self.relay_stats = RelayStats()
        self.stop_reason: StopReason | None = None
        self._on_records = on_records
        self._count_limit = count_limit
        self._duration_s = duration_s
        self._clock = clock
        self._target_family, self._target = resolve(target, socket.SOCK_DGRAM)
        self._listen = UdpTransport.bind(listen, timestamps=False, send_wait_s=SEND_WAIT_S)
        self._upstreams: dict[SockAddr, UdpTransport] = {}
        self._closed_unsent = self._closed_refused = 0  # counters of closed upstream sockets
        self._view = memoryview(bytearray(RECV_BUFFER_BYTES))
        self._to_target: _Outbox[UdpTransport] = _Outbox(self._send_upstream)
        self._to_clients: _Outbox[SockAddr] = _Outbox(self._send_to_client)
        self._selector = selectors.DefaultSelector()
        self._selector.register(
            self._listen.sock,
            selectors.EVENT_READ,
            functools.partial(
                self._pump, self.forward, self._listen, self._upstream_for, self._to_target
            ),
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._arrived = 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def listen_address(self) -> tuple[str, int]:
        """The (host, port) the relay listens on, with the port the system chose for 0."""
        host, port = self._listen.local_address[:2]
        return host, port

    @property
    def stats(self) -> dict[Direction, DirectionStats]:
        """The counters of each direction."""
        return {Direction.FORWARD: self.forward.stats, Direction.REVERSE: self.reverse.stats}

    def start(self) -> None:
        """Relay in a background thread until ``stop()`` or a limit."""
        self._thread = threading.Thread(target=self._run_in_thread, name="udpxfer-relay")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to stop; safe from another thread and from a signal handler."""
        self._stopping = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            # A full wake-up buffer means the loop is already woken; a closed one that it
            # has finished. Either way there is nothing more to do.
            return

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the background thread; True once it ended. Re-raises its error."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return True

    def close(self) -> None:
        """Close every socket (after the loop has ended)."""
        self._selector.close()
        for transport in (self._listen, *self._upstreams.values()):
            transport.close()
        self._wake_r.close()
        self._wake_w.close()
        self._upstreams.clear()

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        try:
            self.join(5.0)
        finally:
            self.close()

    def run(self) -> StopReason:
        """Relay until ``stop()``, the count limit or the duration; returns why it stopped.

        At a count limit or the end of the duration the relay stops reading and still releases
        what its policies hold, on schedule; after ``stop()`` whatever is held is dropped and
        recorded as dropped for ``shutdown``.
        """
        clock = self._clock
        start = clock()
        end = start + self._duration_s if self._duration_s is not None else None
        reason = StopReason.STOPPED
        more = False  # a socket still had datagrams when its budget ran out
        while not self._stopping:
            now = clock()
            if end is not None and now >= end:
                reason = StopReason.DURATION
                break
            timeout = 0.0 if more else self._timeout(now, end)
            more = False
            for key, _ in self._selector.select(timeout):
                if key.data is None:  # the wake-up socket
                    self._drain_wakeups()
                else:
                    more |= key.data()
            self._release(clock())
            if self._count_limit is not None and self._arrived >= self._count_limit:
                reason = StopReason.COUNT_LIMIT
                break
        if reason is not StopReason.STOPPED:
            self._drain_pending(clock)
        self.forward.discard_pending()
        self.reverse.discard_pending()
        self._flush_records()
        self._count_socket_stats()
        self.stop_reason = reason
        return reason

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # handed to join() in the caller's thread
            self._error = exc

    def _timeout(self, now: float, end: float | None) -> float | None:
        deadlines = [
            t
            for t in (self.forward.next_deadline(), self.reverse.next_deadline(), end)
            if t is not None
        ]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):  # EAGAIN: no more wake-up bytes
            while self._wake_r.recv(4096):
                pass

    def _drain_pending(self, clock: Callable[[], float]) -> None:
        """Release what the policies still hold, on schedule, unless stop() comes first."""
        # Wait on the wake-up socket alone: the others may stay readable (senders that go on
        # sending), which would turn the wait into a busy loop.
        with selectors.DefaultSelector() as waiter:
            waiter.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping and (self.forward.pending or self.reverse.pending):
                if waiter.select(self._timeout(clock(), None)):
                    self._drain_wakeups()
                self._release(clock())

    def _count_socket_stats(self) -> None:
        upstreams = list(self._upstreams.values())
        stats = self.relay_stats
        stats.send_failed = self._closed_unsent + sum(t.unsent for t in (self._listen, *upstreams))
        stats.unreachable = self._closed_refused + sum(t.refused for t in upstreams)
        stats.kernel_drops_forward = kernel_drops([self._listen.sock])
        if upstreams:
            stats.kernel_drops_reverse = kernel_drops([t.sock for t in upstreams])

    def _pump(
        self,
        policy: ImpairmentPolicy[Dest],
        source: UdpTransport,
        dest_for: Callable[[SockAddr], Dest],
        outbox: _Outbox[Dest],
    ) -> bool:
        """Read datagrams until EAGAIN or the budget; True if the budget ran out.

        What needs no timing is sent from the receive buffer, batched, without a copy: each
        receive (one datagram, or a coalesced run of them) is read at its own offset, and the
        batch is sent before the buffer is reused. Every datagram of a run is handed to the
        policy on its own, so the ground truth stays per datagram.
        """
        view, clock = self._view, self._clock
        copy, passthrough = policy.holds_data, policy.passthrough
        limit = self._count_limit
        last_offset = len(view) - MAX_DATAGRAM
        offset = passed = passed_bytes = 0
        try:
            for _ in range(DRAIN_BUDGET):
                if limit is not None and self._arrived >= limit:
                    return False
                if offset > last_offset:
                    outbox.flush()
                    offset = 0
                got = source.recv_into(view[offset : offset + MAX_DATAGRAM])
                if got is None:
                    return False
                n, segment, addr, _ = got
                dest = dest_for(addr)
                end = offset + n
                step = segment if 0 < segment < n else max(n, 1)
                starts = range(offset, max(end, offset + 1), step)
                if limit is not None and self._arrived + len(starts) > limit:
                    # Datagrams past the limit count as never read (as if left in the queue).
                    starts = starts[: limit - self._arrived]
                self._arrived += len(starts)
                if passthrough:  # the fast path: no decision to make
                    for start in starts:
                        outbox.add(view[start : min(start + step, end)], dest)
                    offset = end
                    passed += len(starts)
                    passed_bytes += min(n, len(starts) * step)
                    continue
                now = clock()
                for start in starts:
                    data = view[start : min(start + step, end)]
                    policy.on_datagram(bytes(data) if copy else data, now, dest)
                if not copy:
                    offset = end
                    for out, to in policy.due(now):
                        outbox.add(out, to)
            return True
        finally:
            outbox.flush()
            if passed:
                policy.count_passthrough(passed, passed_bytes)

    def _upstream_for(self, client: SockAddr) -> UdpTransport:
        upstream = self._upstreams.get(client)
        return upstream if upstream is not None else self._open_upstream(client)

    def _open_upstream(self, client: SockAddr) -> UdpTransport:
        """A new socket towards the target for ``client``: its own port, as behind a NAT."""
        if len(self._upstreams) >= MAX_CLIENTS:
            oldest = self._upstreams.pop(next(iter(self._upstreams)))
            self._selector.unregister(oldest.sock)
            self._closed_unsent += oldest.unsent
            self._closed_refused += oldest.refused
            oldest.close()
        # Connected: the kernel then filters replies to the target's address only.
        upstream = UdpTransport.towards(
            self._target_family, self._target, timestamps=False, send_wait_s=SEND_WAIT_S
        )
        self._upstreams[client] = upstream
        self._selector.register(
            upstream.sock,
            selectors.EVENT_READ,
            functools.partial(
                self._pump, self.reverse, upstream, lambda _addr: client, self._to_clients
            ),
        )
        self.relay_stats.clients += 1
        return upstream

    def _release(self, now: float) -> None:
        _send_due(self.forward, self._to_target, now)
        _send_due(self.reverse, self._to_clients, now)
        self._flush_records()

    def _flush_records(self) -> None:
        if self._on_records is None:
            return
        records = self.forward.take_records()
        records += self.reverse.take_records()
        if records:
            self._on_records(records)

    def _send_upstream(self, run: list[Datagram], upstream: UdpTransport) -> None:
        upstream.send_run(run)

    def _send_to_client(self, run: list[Datagram], client: SockAddr) -> None:
        self._listen.send_run(run, client)
