"""The only UDP socket code: buffers, GSO/GRO, batch send and receive, kernel timestamps.

The sessions hand over lists of datagrams, the relay runs of them; both go out here, runs of
equal datagrams in one system call (UDP GSO) straight from the caller's buffers, and coalesced
runs come in here (UDP GRO), with a plain fallback where the kernel offers neither.

Setting the environment variable ``UDPXFER_NO_OFFLOAD=1`` turns GSO and GRO off (one datagram
per system call), for comparisons and for paths where offload misbehaves.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from udpxfer.errors import TransportError, UsageError
from udpxfer.net.sockets import SockAddr, bind_socket, connect_udp
from udpxfer.protocol.wire import GSO_MAX_BYTES as GSO_MAX_BYTES  # re-exported: the relay's limits
from udpxfer.protocol.wire import GSO_MAX_SEGMENTS as GSO_MAX_SEGMENTS
from udpxfer.protocol.wire import datagrams_per_run
from udpxfer.units import Address

RECV_BUFFER_BYTES = 32 << 20  # asked for; the kernel may cap it (net.core.rmem_max)
SEND_BUFFER_BYTES = 8 << 20
MIN_BUFFER_BYTES = 256 << 10  # where halving a refused size stops (macOS: kern.ipc.maxsockbuf)
MAX_DATAGRAM = 65535
OFFLOAD_ENV = "UDPXFER_NO_OFFLOAD"
# Linux: SO_RCVBUFFORCE/SO_SNDBUFFORCE pass the rmem_max/wmem_max caps with CAP_NET_ADMIN.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_TRANSIENT = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}
# Linux UDP segmentation offload (linux/udp.h, udp(7)): one sendmsg carries many equal
# datagrams, one recvmsg returns many coalesced ones with their segment size in a control
# message. On loopback GSO cuts the cost of sending a 1400-byte datagram about fivefold.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
_GSO_UNSUPPORTED = {errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE}
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
# Kernel receive timestamps (socket(7) SO_TIMESTAMPNS: a struct timespec, CLOCK_REALTIME)
# tell how long a datagram waited in our own receive queue before we read it.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("=qq")
_CMSG_SPACE = (
    _GRO_CMSG_SPACE + socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
)
_SEGMENT_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_LINUX = sys.platform.startswith("linux")

# What sendmsg takes: bytes, bytearrays, memoryviews (of a receive buffer, of a mapped file).
Buffer = Any
# (bytes, GRO segment size or 0, sender, kernel arrival time in ns or 0)
Received = tuple[int, int, SockAddr, int]


def offload_allowed() -> bool:
    """False when the user turned GSO/GRO off with ``UDPXFER_NO_OFFLOAD`` (any value but 0)."""
    return os.environ.get(OFFLOAD_ENV, "") in ("", "0")


@dataclass(frozen=True, slots=True)
class BufferSizes:
    """Socket buffer sizes as asked for and as the kernel granted them (usable bytes)."""

    recv_asked: int
    recv_granted: int
    send_asked: int
    send_granted: int

    @property
    def capped(self) -> bool:
        """True when the kernel gave less receive buffer than asked for."""
        return self.recv_granted < self.recv_asked


def _set_buffer(sock: socket.socket, force_opt: int, opt: int, size: int) -> int:
    """Ask for a ``size``-byte buffer; return the usable size the kernel granted.

    Tries the forcing option first (Linux, CAP_NET_ADMIN), then the plain one, halving a size
    the system refuses outright (macOS refuses sizes above kern.ipc.maxsockbuf).
    """
    options = (force_opt, opt) if _LINUX else (opt,)
    asked = size
    done = False
    while not done and asked >= min(size, MIN_BUFFER_BYTES):
        for option in options:
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, asked)
            except OSError:
                continue  # no CAP_NET_ADMIN for the forcing option, or too large
            done = True
            break
        asked //= 2
    granted = sock.getsockopt(socket.SOL_SOCKET, opt)
    # Linux reports twice the size asked for (the rest is for bookkeeping), see socket(7).
    return granted // 2 if _LINUX else granted


def size_buffers(sock: socket.socket, recv_bytes: int, send_bytes: int) -> BufferSizes:
    """Ask for receive and send buffers of these sizes; say what the kernel granted."""
    return BufferSizes(
        recv_bytes,
        _set_buffer(sock, _SO_RCVBUFFORCE, socket.SO_RCVBUF, recv_bytes),
        send_bytes,
        _set_buffer(sock, _SO_SNDBUFFORCE, socket.SO_SNDBUF, send_bytes),
    )


def probe_gso(sock: socket.socket) -> bool:
    """True when the kernel segments UDP for us (Linux 4.18+) and offload is not turned off."""
    if not _LINUX or not offload_allowed():
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def enable_gro(sock: socket.socket) -> bool:
    """Ask for coalesced receives (Linux 5.0+); False where unsupported or turned off."""
    if not _LINUX or not _GRO_CMSG_SPACE or not offload_allowed():
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def enable_timestamps(sock: socket.socket) -> bool:
    """Ask for kernel receive timestamps (Linux); False where unsupported."""
    if not _LINUX or not _CMSG_SPACE:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def split_segments(view: memoryview, segment: int) -> list[memoryview]:
    """Cut a coalesced receive into its datagrams (all ``segment`` bytes but the last)."""
    if segment <= 0 or segment >= len(view):
        return [view]
    return [view[start : start + segment] for start in range(0, len(view), segment)]


def gso_runs(datagrams: Sequence[Buffer]) -> list[tuple[int, int, int]]:
    """Split a list into runs that one segmentation-offload send can carry.

    Returns (start, end, segment size) triples: datagrams[start:end] are all ``segment``
    bytes long except possibly the last, which may be shorter (as UDP_SEGMENT allows), and
    the run fits ``GSO_MAX_SEGMENTS`` and ``GSO_MAX_BYTES``.
    """
    runs: list[tuple[int, int, int]] = []
    n = len(datagrams)
    start = 0
    while start < n:
        size = len(datagrams[start])
        if size == 0:  # a segment size of 0 means "do not segment": empty ones go alone
            runs.append((start, start + 1, 0))
            start += 1
            continue
        limit = min(n, start + datagrams_per_run(size))
        end = start + 1
        while end < limit and len(datagrams[end]) == size:
            end += 1
        if end < limit and 0 < len(datagrams[end]) < size:
            end += 1  # a shorter datagram may close the run
        runs.append((start, end, size))
        start = end
    return runs


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
                    [view], _CMSG_SPACE, socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    self.refused += 1  # reported once, then cleared: read on
                    continue
                raise TransportError(f"receive failed: {exc.strerror}") from exc
            segment, kernel_ns = _control(ancdata)
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
                    ) from None
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
        one gathered send per datagram without offload."""
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
        control = [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(size))]
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
                if exc.errno in _GSO_UNSUPPORTED:
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


def _control(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int]:
    """(GRO segment size or 0, kernel arrival time in ns or 0) from a receive's control data."""
    segment = kernel_ns = 0
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
            segment = _GRO_SIZE.unpack_from(data)[0]
        elif level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            kernel_ns = seconds * 1_000_000_000 + nanoseconds
    return segment, kernel_ns
