"""The only UDP socket code: buffers, non-blocking receive into a reusable buffer, sending.

The sessions hand over lists of datagrams, so batching (UDP GSO/GRO, several datagrams per
system call) changes only this module.
"""

from __future__ import annotations

import errno
import select
import socket
import sys
from dataclasses import dataclass

from udpxfer.errors import TransportError, UsageError
from udpxfer.sockets import SockAddr, bind_socket, resolve
from udpxfer.units import Address

RECV_BUFFER_BYTES = 32 << 20  # asked for; the kernel may cap it (net.core.rmem_max)
SEND_BUFFER_BYTES = 8 << 20
MAX_DATAGRAM = 65535
# Linux: SO_RCVBUFFORCE/SO_SNDBUFFORCE pass the rmem_max/wmem_max caps with CAP_NET_ADMIN.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_TRANSIENT = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}


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
    for option in (force_opt, opt):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            break
        except OSError:
            continue  # no CAP_NET_ADMIN for the forcing option: try the capped one
    granted = sock.getsockopt(socket.SOL_SOCKET, opt)
    # Linux reports twice the size asked for (the rest is for bookkeeping), see socket(7).
    return granted // 2 if sys.platform.startswith("linux") else granted


class UdpTransport:
    """A UDP socket with large buffers, used without blocking on receive."""

    def __init__(self, sock: socket.socket, peer: SockAddr | None = None) -> None:
        self.sock = sock
        self.peer = peer
        self.refused = 0  # ICMP port-unreachable reports seen (nobody listening there)
        self.recv_buffer = bytearray(MAX_DATAGRAM)
        self.recv_view = memoryview(self.recv_buffer)
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
        family, sockaddr = resolve(address, socket.SOCK_DGRAM)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            raise UsageError(f"cannot send to {address}: {exc.strerror}") from None
        return cls(sock, sockaddr)

    @property
    def local_address(self) -> SockAddr:
        """The bound (host, port, ...) of the socket."""
        address: SockAddr = self.sock.getsockname()
        return address

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def recv(self) -> tuple[memoryview, SockAddr] | None:
        """One waiting datagram as a view into the reusable buffer, or None.

        The view is valid until the next call.
        """
        try:
            n, addr = self.sock.recvfrom_into(self.recv_buffer, MAX_DATAGRAM, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in _TRANSIENT:
                self.refused += 1
                return None
            raise TransportError(f"receive failed: {exc.strerror}") from exc
        return self.recv_view[:n], addr

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
        """Send a list of datagrams in order."""
        for datagram in datagrams:
            self.send(datagram, addr)
