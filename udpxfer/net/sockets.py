"""Resolving user addresses into socket addresses, binding with clear errors, and the
kernel's count of what a full receive queue dropped.

An empty host means all interfaces: a dual-stack IPv6 socket where the system has IPv6,
else IPv4.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any

from udpxfer.errors import TransportError, UsageError, map_os_errors
from udpxfer.units import Address

ALL_INTERFACES = ""
LOOPBACK = "127.0.0.1"

SockAddr = tuple[Any, ...]


def resolve(address: Address, kind: socket.SocketKind) -> tuple[socket.AddressFamily, SockAddr]:
    """Resolve ``address`` to a (family, sockaddr) pair for a socket of ``kind``.

    Raises:
        UsageError: the host name does not resolve.
    """
    if address.host == ALL_INTERFACES:
        if socket.has_ipv6:
            return socket.AF_INET6, ("::", address.port, 0, 0)
        return socket.AF_INET, ("0.0.0.0", address.port)
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=kind)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"cannot resolve {address.host!r}: {exc}") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def connect_udp(address: Address) -> tuple[socket.socket, SockAddr]:
    """A UDP socket connected to ``address``: the kernel drops datagrams from anyone else
    and reports ICMP errors (nobody listening) on it.

    Raises:
        UsageError: the address does not resolve or cannot be reached from here.
    """
    family, sockaddr = resolve(address, socket.SOCK_DGRAM)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    with map_os_errors(UsageError, f"cannot send to {address}"):
        try:
            sock.connect(sockaddr)
        except OSError:
            sock.close()
            raise
    return sock, sockaddr


def bind_socket(address: Address, kind: socket.SocketKind) -> socket.socket:
    """Create a socket of ``kind`` bound to ``address``.

    All interfaces means a dual-stack IPv6 socket, or IPv4 alone where IPv6 is switched off.

    Raises:
        UsageError: the address is in use or not available on this machine.
        TransportError: any other refusal by the system.
    """
    family, sockaddr = resolve(address, kind)
    try:
        return _bound(family, sockaddr, kind, dual_stack=address.host == ALL_INTERFACES)
    except OSError as exc:
        error = exc
    if address.host == ALL_INTERFACES and family == socket.AF_INET6:
        try:  # IPv6 disabled on this machine: all IPv4 interfaces then
            return _bound(socket.AF_INET, ("0.0.0.0", address.port), kind, dual_stack=False)
        except OSError as exc:
            error = exc
    if error.errno == errno.EADDRINUSE:
        raise UsageError(f"address {address} is already in use") from error
    if error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        raise UsageError(f"address {address} is not available on this machine") from error
    if error.errno == errno.EACCES:
        raise UsageError(f"permission denied binding {address}") from error
    raise TransportError(f"cannot bind {address}: {error.strerror}") from error


def _bound(
    family: socket.AddressFamily, sockaddr: SockAddr, kind: socket.SocketKind, *, dual_stack: bool
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


def kernel_drops(sockets: list[socket.socket]) -> int | None:
    """Receive-queue overflows of ``sockets`` from Linux ``/proc/net/udp*`` (None elsewhere)."""
    inodes = {os.fstat(sock.fileno()).st_ino for sock in sockets}
    total, found = 0, False
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue  # not Linux, or no IPv6: nothing to count there
        for line in lines:
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            fields = line.split()
            if len(fields) >= 13 and int(fields[9]) in inodes:
                total += int(fields[12])
                found = True
    return total if found else None
