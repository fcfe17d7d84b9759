"""The impairment relay: UDP sockets around two ``ImpairmentPolicy`` objects (the thin adapter).

Clients send to the listening socket; each client address gets its own upstream socket,
connected to the target, as a NAT would give it its own port. Whatever the target sends back to
that upstream socket goes back to that client. The forward policy impairs client -> target, the
reverse policy target -> client; all the deciding happens there, this module only moves bytes
and keeps time.

The loop is built for rate: nonblocking sockets behind one selector, each readable socket drained
into one preallocated buffer until EAGAIN (with a budget, so that the other direction and due
releases get their turn), and when a direction needs no timing a datagram is sent on from that
buffer before the next is read, with no copy.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from udpxfer.errors import TransportError, UsageError
from udpxfer.impair import (
    LOG_COLUMNS,
    Datagram,
    Direction,
    DirectionStats,
    Impairment,
    ImpairmentPolicy,
    Record,
    direction_rng,
)
from udpxfer.sockets import SockAddr, bind_socket, resolve
from udpxfer.units import Address

RECV_BUFFER_BYTES = 65536  # above the largest UDP payload (65,507 bytes over IPv4)
# Ask for large kernel buffers so bursts wait in the kernel rather than being lost before the
# relay sees them (such losses would be missing from the ground truth). Linux caps the request
# at net.core.rmem_max; macOS refuses sizes above kern.ipc.maxsockbuf, hence the fallbacks.
SOCKET_BUFFER_BYTES = (8 << 20, 4 << 20, 1 << 20, 256 << 10)
DRAIN_BUDGET = 256  # datagrams read from one socket before looking at the others
SEND_WAIT_S = 1.0  # how long a full send buffer may hold the loop before the datagram is lost
MAX_CLIENTS = 256  # upstream sockets kept; the oldest mapping is closed beyond this

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
    send_failed: int = 0  # datagrams the system refused to send (counted as delivered above)
    unreachable: int = 0  # ICMP port unreachable reports from the target


def _enlarge_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        for size in SOCKET_BUFFER_BYTES:
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
            except OSError:
                continue  # refused as too large here: try the next smaller size
            break


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
        seed: fixes every random decision (``impair.direction_rng``).
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
        self.forward: ImpairmentPolicy[socket.socket] = ImpairmentPolicy(
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
        self._listen = bind_socket(listen, socket.SOCK_DGRAM)
        self._listen.setblocking(False)
        _enlarge_buffers(self._listen)
        self._upstreams: dict[SockAddr, socket.socket] = {}
        self._buf = bytearray(RECV_BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self._selector = selectors.DefaultSelector()
        self._selector.register(
            self._listen,
            selectors.EVENT_READ,
            functools.partial(self._pump, self.forward, self._receive_forward, self._send_forward),
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
        host, port = self._listen.getsockname()[:2]
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
        for sock in (self._listen, self._wake_r, self._wake_w, *self._upstreams.values()):
            sock.close()
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
        while not self._stopping and (self.forward.pending or self.reverse.pending):
            timeout = self._timeout(clock(), None)
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    self._drain_wakeups()
            self._release(clock())

    def _pump(
        self,
        policy: ImpairmentPolicy[Dest],
        receive: Callable[[], tuple[int, Dest] | None],
        send: Callable[[list[tuple[Datagram, Dest]]], None],
    ) -> bool:
        """Read datagrams until EAGAIN or the budget; True if the budget ran out."""
        view, clock = self._view, self._clock
        copy = policy.holds_data
        limit = self._count_limit
        for _ in range(DRAIN_BUDGET):
            if limit is not None and self._arrived >= limit:
                return False
            try:
                got = receive()
            except BlockingIOError:
                return False
            if got is None:
                continue
            size, dest = got
            self._arrived += 1
            now = clock()
            if copy:
                policy.on_datagram(bytes(view[:size]), now, dest)
            else:
                # Sent on before the buffer is reused: no copy.
                policy.on_datagram(view[:size], now, dest)
                send(policy.due(now))
        return True

    def _receive_forward(self) -> tuple[int, socket.socket]:
        size, addr = self._listen.recvfrom_into(self._buf)
        upstream = self._upstreams.get(addr)
        if upstream is None:
            upstream = self._open_upstream(addr)
        return size, upstream

    def _receive_reverse(
        self, sock: socket.socket, client: SockAddr
    ) -> tuple[int, SockAddr] | None:
        try:
            return sock.recv_into(self._buf), client
        except ConnectionRefusedError:
            # ICMP port unreachable for an earlier datagram: the target is not listening.
            self.relay_stats.unreachable += 1
            return None

    def _open_upstream(self, client: SockAddr) -> socket.socket:
        """A new socket towards the target for ``client``: its own port, as behind a NAT."""
        if len(self._upstreams) >= MAX_CLIENTS:
            oldest = next(iter(self._upstreams))
            self._selector.unregister(self._upstreams[oldest])
            self._upstreams.pop(oldest).close()
        sock = socket.socket(self._target_family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _enlarge_buffers(sock)
            # Connected: the kernel then filters replies to the target's address only.
            sock.connect(self._target)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot open a socket towards the target: {exc}") from exc
        self._upstreams[client] = sock
        receive = functools.partial(self._receive_reverse, sock, client)
        self._selector.register(
            sock,
            selectors.EVENT_READ,
            functools.partial(self._pump, self.reverse, receive, self._send_reverse),
        )
        self.relay_stats.clients += 1
        return sock

    def _release(self, now: float) -> None:
        self._send_forward(self.forward.due(now))
        self._send_reverse(self.reverse.due(now))
        self._flush_records()

    def _flush_records(self) -> None:
        if self._on_records is None:
            return
        records = self.forward.take_records()
        records += self.reverse.take_records()
        if records:
            self._on_records(records)

    def _send_forward(self, datagrams: list[tuple[Datagram, socket.socket]]) -> None:
        for data, sock in datagrams:
            self._send(sock, data, None)

    def _send_reverse(self, datagrams: list[tuple[Datagram, SockAddr]]) -> None:
        listen = self._listen
        for data, client in datagrams:
            self._send(listen, data, client)

    def _send(self, sock: socket.socket, data: Datagram, addr: SockAddr | None) -> None:
        """Send one datagram, waiting a little for buffer space; count what is refused."""
        for _ in range(3):
            try:
                if addr is None:
                    sock.send(data)
                else:
                    sock.sendto(data, addr)
                return
            except BlockingIOError:
                # Full send buffer: hold the loop (back-pressure) rather than lose silently.
                with selectors.DefaultSelector() as waiter:
                    waiter.register(sock, selectors.EVENT_WRITE)
                    waiter.select(SEND_WAIT_S)
            except ConnectionRefusedError:
                # Linux reports an ICMP unreachable for an earlier datagram on the next send,
                # which then did not go out; the error is now cleared, so try again.
                self.relay_stats.unreachable += 1
            except OSError:
                break  # EMSGSIZE, a closed mapping's socket, ...: this datagram is lost
        self.relay_stats.send_failed += 1


class RecordLog:
    """Writes ground-truth records to a file: JSON Lines, or CSV when the name ends in .csv.

    Raises:
        UsageError: the file cannot be created.
    """

    def __init__(self, path: Path, epoch: float = 0.0) -> None:
        self.path = path
        self.epoch = epoch  # the clock reading log times count from (``Relay.epoch``)
        self._csv = path.suffix.lower() == ".csv"
        try:
            self._file: IO[str] = path.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise UsageError(f"cannot write the log {str(path)!r}: {exc.strerror}") from None
        self._writer: Any = None
        if self._csv:
            self._writer = csv.DictWriter(self._file, fieldnames=LOG_COLUMNS)
            self._writer.writeheader()

    def write(self, records: list[Record]) -> None:
        """Append ``records`` (the relay's ``on_records`` callback)."""
        rows = (record.as_row(self.epoch) for record in records)
        if self._writer is not None:
            self._writer.writerows(rows)
        else:
            self._file.write("".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows))

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
