"""The only UDP socket code: buffers, non-blocking receive into a reusable buffer, sending.

The sessions hand over lists of datagrams, so batching (UDP GSO/GRO, several datagrams per
system call) changes only this module.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass

from udpxfer.errors import TransportError, UsageError
from udpxfer.sockets import SockAddr, bind_socket, connect_udp
from udpxfer.units import Address

RECV_BUFFER_BYTES = 32 << 20  # asked for; the kernel may cap it (net.core.rmem_max)
SEND_BUFFER_BYTES = 8 << 20
MAX_DATAGRAM = 65535
# Linux: SO_RCVBUFFORCE/SO_SNDBUFFORCE pass the rmem_max/wmem_max caps with CAP_NET_ADMIN.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_TRANSIENT = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}
# Linux UDP segmentation offload (linux/udp.h): one sendmsg carries many equal datagrams,
# one recvmsg returns many coalesced ones with their segment size in a control message.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels
GSO_MAX_BYTES = 65000  # below the 65,507-byte IPv4 UDP payload limit
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
    """Ask for a ``size``-byte buffer; return the usable size the kernel granted."""
    linux = sys.platform.startswith("linux")
    for option in (force_opt, opt) if linux else (opt,):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            break
        except OSError:
            continue  # no CAP_NET_ADMIN for the forcing option, or too large: go smaller
    granted = sock.getsockopt(socket.SOL_SOCKET, opt)
    # Linux reports twice the size asked for (the rest is for bookkeeping), see socket(7).
    return granted // 2 if linux else granted


def _probe_gso(sock: socket.socket) -> bool:
    """True when the kernel segments UDP for us (Linux 4.18+)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def _enable_gro(sock: socket.socket) -> bool:
    """Ask for coalesced receives (Linux 5.0+); False where unsupported."""
    if not sys.platform.startswith("linux") or not _GRO_CMSG_SPACE:
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def _enable_timestamps(sock: socket.socket) -> bool:
    """Ask for kernel receive timestamps (Linux); False where unsupported."""
    if not sys.platform.startswith("linux") or not _CMSG_SPACE:
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


def gso_runs(datagrams: list[bytes]) -> list[tuple[int, int, int]]:
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
        limit = min(n, start + max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)))
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

    On Linux it sends runs of equal datagrams with one system call (UDP GSO) and receives
    coalesced runs (UDP GRO) when the kernel offers them, with a plain fallback.
    """

    def __init__(self, sock: socket.socket, peer: SockAddr | None = None) -> None:
        self.sock = sock
        self.peer = peer
        self.refused = 0  # ICMP port-unreachable reports seen (nobody listening there)
        self.recv_buffer = bytearray(MAX_DATAGRAM)
        self.recv_view = memoryview(self.recv_buffer)
        self.gso = _probe_gso(sock)
        self.gro = _enable_gro(sock)
        self.timestamps = _enable_timestamps(sock)
        self.buffers = BufferSizes(
            RECV_BUFFER_BYTES,
            _set_buffer(sock, _SO_RCVBUFFORCE, socket.SO_RCVBUF, RECV_BUFFER_BYTES),
            SEND_BUFFER_BYTES,
            _set_buffer(sock, _SO_SNDBUFFORCE, socket.SO_SNDBUF, SEND_BUFFER_BYTES),
        )

    @classmethod
    def bind(cls, address: Address) -> UdpTransport:
        """A receiving socket bound to ``address`` (empty host: all interfaces)."""
        return cls(bind_socket(address, socket.SOCK_DGRAM))

    @classmethod
    def connect(cls, address: Address) -> UdpTransport:
        """A sending socket connected to ``address`` (only its replies are received)."""
        return cls(*connect_udp(address))

    @property
    def local_address(self) -> SockAddr:
        """The bound (host, port, ...) of the socket."""
        address: SockAddr = self.sock.getsockname()
        return address

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def recv(self) -> tuple[memoryview, SockAddr] | None:
        """One waiting datagram (or GRO run, unsplit) as a view into the buffer, or None.

        The view is valid until the next call.
        """
        got = self._receive()
        return None if got is None else (self.recv_view[: got[0]], got[2])

    def recv_batch(self) -> tuple[list[memoryview], SockAddr, float] | None:
        """The next waiting datagrams from one sender (several with GRO), or None.

        Returns:
            The datagrams (views valid until the next call), the sender, and the seconds
            they waited in the socket's receive queue (0 when the kernel does not say).
        """
        got = self._receive()
        if got is None:
            return None
        n, segment, addr, kernel_ns = got
        queued_s = max(0.0, (time.time_ns() - kernel_ns) / 1e9) if kernel_ns else 0.0
        return split_segments(self.recv_view[:n], segment), addr, queued_s

    def _receive(self) -> tuple[int, int, SockAddr, int] | None:
        """(bytes, GRO segment size or 0, sender, kernel arrival time in ns or 0), or None."""
        try:
            if not self.gro and not self.timestamps:
                n, addr = self.sock.recvfrom_into(
                    self.recv_buffer, MAX_DATAGRAM, socket.MSG_DONTWAIT
                )
                return n, 0, addr, 0
            n, ancdata, _flags, addr = self.sock.recvmsg_into(
                [self.recv_buffer], _CMSG_SPACE, socket.MSG_DONTWAIT
            )
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                self.refused += 1
                return None
            raise TransportError(f"receive failed: {exc.strerror}") from exc
        segment = kernel_ns = 0
        for level, kind, data in ancdata:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
                segment = _GRO_SIZE.unpack_from(data)[0]
            elif (
                level == socket.SOL_SOCKET
                and kind == _SO_TIMESTAMPNS
                and len(data) >= _TIMESPEC.size
            ):
                seconds, nanoseconds = _TIMESPEC.unpack_from(data)
                kernel_ns = seconds * 1_000_000_000 + nanoseconds
        return n, segment, addr, kernel_ns

    def wait(self, timeout_s: float | None) -> bool:
        """Block until a datagram is waiting or ``timeout_s`` passes; True if readable."""
        if timeout_s is not None and timeout_s <= 0:
            return False
        readable, _, _ = select.select([self.sock], [], [], timeout_s)
        return bool(readable)

    def send(self, datagram: bytes, addr: SockAddr | None = None) -> None:
        """Send one datagram (to the connected peer when ``addr`` is None).

        Blocks while the socket's send buffer is full, which paces an unpaced sender to
        what the host can push.
        """
        try:
            if addr is None:
                self.sock.send(datagram)
            else:
                self.sock.sendto(datagram, addr)
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                self.refused += 1
                return
            if exc.errno == errno.ENOBUFS:
                return  # the interface queue is full: the datagram is lost like on a wire
            if exc.errno == errno.EMSGSIZE:
                raise UsageError(
                    f"datagram of {len(datagram)} bytes is too large for the path: "
                    "use a smaller --chunk-size"
                ) from None
            raise TransportError(f"send failed: {exc.strerror}") from exc

    def send_many(self, datagrams: list[bytes], addr: SockAddr | None = None) -> None:
        """Send a list of datagrams in order, runs of equal ones in one call where possible."""
        if not self.gso or len(datagrams) < 2:
            for datagram in datagrams:
                self.send(datagram, addr)
            return
        for start, end, size in gso_runs(datagrams):
            if end - start == 1:
                self.send(datagrams[start], addr)
            elif not self._send_segmented(datagrams[start:end], size, addr):
                for datagram in datagrams[start:end]:
                    self.send(datagram, addr)

    def _send_segmented(self, run: list[bytes], size: int, addr: SockAddr | None) -> bool:
        """One GSO send; False (and GSO off from now on) when the kernel refuses it."""
        control = [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(size))]
        try:
            if addr is None:
                self.sock.sendmsg([b"".join(run)], control)
            else:
                self.sock.sendmsg([b"".join(run)], control, 0, addr)
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                self.refused += 1
                return True
            if exc.errno == errno.ENOBUFS:
                return True  # dropped like on a wire
            if exc.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.EMSGSIZE):
                self.gso = False  # no offload on this path: plain sends from now on
                return False
            raise TransportError(f"send failed: {exc.strerror}") from exc
        return True
