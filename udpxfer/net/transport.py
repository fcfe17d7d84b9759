"""The only UDP socket code: buffers, GSO/GRO, batch send and receive, kernel timestamps.

The sessions hand over lists of datagrams, the relay runs of them; both go out here, runs of
equal datagrams in one system call (UDP GSO) straight from the caller's buffers, and coalesced
runs come in here (UDP GRO), with a plain fallback where the kernel offers neither. What the
kernel offers is probed in ``offload``.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Sequence
from typing import Any

from udpxfer.errors import TransportError, UsageError
from udpxfer.net.offload import (
    GSO_UNSUPPORTED,
    RECV_CONTROL_BYTES,
    SEGMENT_SIZE,
    SOL_UDP,
    UDP_SEGMENT,
    Buffer,
    enable_gro,
    enable_timestamps,
    gso_runs,
    parse_control,
    probe_gso,
    size_buffers,
    split_segments,
)
from udpxfer.net.sockets import SockAddr, bind_socket, connect_udp
from udpxfer.protocol.wire import datagrams_per_run
from udpxfer.units import Address

RECV_BUFFER_BYTES = 32 << 20  # asked for; the kernel may cap it (net.core.rmem_max)
SEND_BUFFER_BYTES = 8 << 20
MAX_DATAGRAM = 65535
_TRANSIENT = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}

# (bytes, GRO segment size or 0, sender, kernel arrival time in ns or 0)
Received = tuple[int, int, SockAddr, int]


class UdpTransport:
    """A UDP socket with large buffers, used without blocking on receive.

    On Linux it sends runs of equal datagrams with one system call (UDP GSO, scatter-gather
    from the caller's buffers, no joining) and receives coalesced runs (UDP GRO) when the
    kernel offers them, with a plain fallback.

    Args:
        sock: a UDP socket, bound or connected.
        peer: where a connected socket sends.
        recv_bytes, send_bytes: the socket buffer sizes to ask for.
        timestamps: ask for kernel receive timestamps (``recv_batch`` reports queueing).
        send_wait_s: None for an endpoint: sends block while the send buffer is full, a
            refused or oversized datagram raises or counts as the sender needs. A number for a
            relay: the socket never blocks, a full send buffer holds a send at most this long,
            and a datagram that cannot go out is counted in ``unsent`` and lost as on a wire.
    """

    def __init__(
        self,
        sock: socket.socket,
        peer: SockAddr | None = None,
        *,
        recv_bytes: int = RECV_BUFFER_BYTES,
        send_bytes: int = SEND_BUFFER_BYTES,
        timestamps: bool = True,
        send_wait_s: float | None = None,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.refused = 0  # ICMP port-unreachable reports seen (nobody listening there)
        self.unsent = 0  # datagrams that did not go out (full queues, refusals, too large)
        self.send_wait_s = send_wait_s
        if send_wait_s is not None:
            sock.setblocking(False)
        self.recv_buffer = bytearray(MAX_DATAGRAM)
        self.recv_view = memoryview(self.recv_buffer)
        self.gso = probe_gso(sock)
        self.gro = enable_gro(sock)
        self.timestamps = timestamps and enable_timestamps(sock)
        self.buffers = size_buffers(sock, recv_bytes, send_bytes)

    @classmethod
    def bind(cls, address: Address, **options: Any) -> UdpTransport:
        """A receiving socket bound to ``address`` (empty host: all interfaces)."""
        return cls(bind_socket(address, socket.SOCK_DGRAM), **options)

    @classmethod
    def connect(cls, address: Address, **options: Any) -> UdpTransport:
        """A sending socket connected to ``address`` (only its replies are received)."""
        return cls(*connect_udp(address), **options)

    @classmethod
    def towards(
        cls, family: socket.AddressFamily, sockaddr: SockAddr, **options: Any
    ) -> UdpTransport:
        """A socket on a port of its own, connected to an already resolved ``sockaddr``.

        Raises:
            TransportError: the system refuses the socket or the connection.
        """
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.connect(sockaddr)
            return cls(sock, sockaddr, **options)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot open a socket towards {sockaddr}: {exc}") from exc

    @property
    def local_address(self) -> SockAddr:
        """The bound (host, port, ...) of the socket."""
        address: SockAddr = self.sock.getsockname()
        return address

    def fileno(self) -> int:
        """The socket's descriptor (for selectors)."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    # -- receiving ------------------------------------------------------------------------

    def recv(self) -> tuple[memoryview, SockAddr] | None:
        """One waiting datagram (or GRO run, unsplit) as a view into the buffer, or None.

        The view is valid until the next call.
        """
        got = self.recv_into(self.recv_view)
        return None if got is None else (self.recv_view[: got[0]], got[2])

    def recv_batch(self) -> tuple[list[memoryview], SockAddr, float] | None:
        """The next waiting datagrams from one sender (several with GRO), or None.

        Returns:
            The datagrams (views valid until the next call), the sender, and the seconds
            they waited in the socket's receive queue (0 when the kernel does not say).
        """
        got = self.recv_into(self.recv_view)
        if got is None:
            return None
        n, segment, addr, kernel_ns = got
        queued_s = max(0.0, (time.time_ns() - kernel_ns) / 1e9) if kernel_ns else 0.0
        return split_segments(self.recv_view[:n], segment), addr, queued_s

    def recv_into(self, view: memoryview) -> Received | None:
        """Read the next waiting datagram (or GRO run) into ``view``; None when none waits.

        ``view`` should hold ``MAX_DATAGRAM`` bytes: a longer run is cut short by the kernel.
        A pending ICMP refusal is counted in ``refused`` and the read tried once more.

        Raises:
            TransportError: any other failure of the system call.
        """
        for _ in range(2):
            try:
                if not self.gro and not self.timestamps:
                    n, addr = self.sock.recvfrom_into(view, 0, socket.MSG_DONTWAIT)
                    return n, 0, addr, 0
                n, ancdata, _flags, addr = self.sock.recvmsg_into(
                    [view], RECV_CONTROL_BYTES, socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    self.refused += 1  # reported once, then cleared: read on
                    continue
                raise TransportError(f"receive failed: {exc.strerror}") from exc
            segment, kernel_ns = parse_control(ancdata)
            return n, segment, addr, kernel_ns
        return None

    def wait(self, timeout_s: float | None) -> bool:
        """Block until a datagram is waiting or ``timeout_s`` passes; True if readable."""
        if timeout_s is not None and timeout_s <= 0:
            return False
        readable, _, _ = select.select([self.sock], [], [], timeout_s)
        return bool(readable)

    # -- sending --------------------------------------------------------------------------

    def send(self, datagram: Buffer, addr: SockAddr | None = None) -> None:
        """Send one datagram (to the connected peer when ``addr`` is None).

        An endpoint's send blocks while the socket's send buffer is full, which paces an
        unpaced sender to what the host can push.

        Raises:
            UsageError: an endpoint's datagram is too large for the path.
            TransportError: an endpoint's send failed for another reason.
        """
        relay = self.send_wait_s is not None
        for _ in range(3):
            try:
                if isinstance(datagram, list):  # pieces of one datagram: a gathered send
                    if addr is None:
                        self.sock.sendmsg(datagram)
                    else:
                        self.sock.sendmsg(datagram, (), 0, addr)
                elif addr is None:
                    self.sock.send(datagram)
                else:
                    self.sock.sendto(datagram, addr)
                return
            except BlockingIOError:
                # A relay's full send buffer: hold the loop (back-pressure), not lose silently.
                if not relay or not self._wait_writable():
                    break
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    # Linux reports an ICMP unreachable for an earlier datagram on the next
                    # send, which then did not go out. A relay tries again (the error is now
                    # cleared); an endpoint counts it and treats the datagram as lost.
                    self.refused += 1
                    if relay:
                        continue
                    break
                if exc.errno == errno.ENOBUFS or relay:
                    break  # the interface queue is full, or a relay's datagram cannot go
                if exc.errno == errno.EMSGSIZE:
                    size = sum(map(len, datagram)) if isinstance(datagram, list) else len(datagram)
                    raise UsageError(
                        f"datagram of {size} bytes is too large for the path: "
                        "use a smaller --chunk-size"
                    ) from exc
                raise TransportError(f"send failed: {exc.strerror}") from exc
        self.unsent += 1

    def send_many(self, datagrams: Sequence[Buffer], addr: SockAddr | None = None) -> None:
        """Send datagrams in order, runs of equal ones in one call where possible."""
        if not self.gso or len(datagrams) < 2:
            for datagram in datagrams:
                self.send(datagram, addr)
            return
        for start, end, _size in gso_runs(datagrams):
            self.send_run(datagrams[start:end], addr)

    def send_gathered(
        self, pieces: Sequence[Buffer], count: int, segment: int, addr: SockAddr | None = None
    ) -> None:
        """Send ``count`` datagrams given as pieces back to back (all ``segment`` bytes but
        the last), straight from the pieces: GSO runs of up to ``GSO_MAX_SEGMENTS`` each, or
        one gathered send per datagram without offload. The pieces are the same number for
        each datagram, or one buffer that holds them all."""
        if len(pieces) == 1 and count > 1:
            self._send_contiguous(memoryview(pieces[0]), count, segment, addr)
            return
        per = len(pieces) // count if count else 0
        if count > 1 and self.gso and segment:
            step = datagrams_per_run(segment)
            for start in range(0, count, step):
                end = min(count, start + step)
                run = pieces[start * per : end * per]
                if end - start > 1 and self._send_segmented(run, segment, addr):
                    continue
                for one in range(start, end):
                    self.send(list(pieces[one * per : (one + 1) * per]), addr)
            return
        for one in range(count):
            self.send(list(pieces[one * per : (one + 1) * per]), addr)

    def _send_contiguous(
        self, whole: memoryview, count: int, segment: int, addr: SockAddr | None
    ) -> None:
        """``send_gathered`` of one buffer holding ``count`` datagrams back to back."""
        with whole:
            step = datagrams_per_run(segment) if self.gso else 1
            for start in range(0, count, step):
                end = min(count, start + step)
                run = whole[start * segment : end * segment if end < count else len(whole)]
                if end - start > 1 and self._send_segmented([run], segment, addr):
                    continue
                for one in range(start, end):
                    self.send(run[(one - start) * segment : (one - start + 1) * segment], addr)

    def send_run(self, run: Sequence[Buffer], addr: SockAddr | None = None) -> None:
        """Send a run that one GSO call can carry (see ``gso_runs``) without copying it.

        All datagrams are ``len(run[0])`` bytes but the last, which may be shorter; the run
        fits ``GSO_MAX_SEGMENTS`` and ``GSO_MAX_BYTES``. Falls back to one call per datagram
        where the kernel cannot segment.
        """
        size = len(run[0]) if run else 0
        if len(run) < 2 or not self.gso or not size or not self._send_segmented(run, size, addr):
            for datagram in run:
                self.send(datagram, addr)

    def _send_segmented(self, run: Sequence[Buffer], size: int, addr: SockAddr | None) -> bool:
        """One scatter-gather GSO send; False when the datagrams should go one by one."""
        control = [(SOL_UDP, UDP_SEGMENT, SEGMENT_SIZE.pack(size))]
        relay = self.send_wait_s is not None
        for _ in range(2):
            try:
                if addr is None:
                    self.sock.sendmsg(run, control)
                else:
                    self.sock.sendmsg(run, control, 0, addr)
                return True
            except BlockingIOError:
                return False  # a relay's full send buffer: one by one, each waiting for room
            except OSError as exc:
                # UDP is all or nothing: the kernel sent none of the run.
                if exc.errno in GSO_UNSUPPORTED:
                    self.gso = False  # no offload on this path: plain sends from now on
                    return False
                if exc.errno in _TRANSIENT:
                    self.refused += 1
                    if relay:
                        continue  # the error is cleared: try the run again
                    self.unsent += len(run)  # an endpoint loses it, as with a plain send
                    return True
                if exc.errno == errno.ENOBUFS and not relay:
                    self.unsent += len(run)  # dropped like on a wire
                    return True
                if relay:
                    return False  # one by one: each datagram's fate is counted
                raise TransportError(f"send failed: {exc.strerror}") from exc
        return False

    def _wait_writable(self) -> bool:
        """Wait up to ``send_wait_s`` for room in the send buffer; True if there is some."""
        _, writable, _ = select.select([], [self.sock], [], self.send_wait_s)
        return bool(writable)
