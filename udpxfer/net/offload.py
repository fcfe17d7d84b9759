"""What the kernel offers a UDP socket, probed once at setup: buffer sizes, segmentation
offload (GSO/GRO) and receive timestamps; and the pure functions that cut GSO runs, split GRO
receives and read a receive's control data.

Setting the environment variable ``UDPXFER_NO_OFFLOAD=1`` turns GSO and GRO off (one datagram
per system call), for comparisons and for paths where offload misbehaves.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from udpxfer.protocol.wire import datagrams_per_run

MIN_BUFFER_BYTES = 256 << 10  # where halving a refused size stops (macOS: kern.ipc.maxsockbuf)
OFFLOAD_ENV = "UDPXFER_NO_OFFLOAD"
# Linux: SO_RCVBUFFORCE/SO_SNDBUFFORCE pass the rmem_max/wmem_max caps with CAP_NET_ADMIN.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
# Linux UDP segmentation offload (linux/udp.h, udp(7)): one sendmsg carries many equal
# datagrams, one recvmsg returns many coalesced ones with their segment size in a control
# message. On loopback GSO cuts the cost of sending a 1400-byte datagram about fivefold.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
# Errors of a GSO send that mean "no offload on this path" rather than a lost datagram.
GSO_UNSUPPORTED = {errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE}
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
# Kernel receive timestamps (socket(7) SO_TIMESTAMPNS: a struct timespec, CLOCK_REALTIME)
# tell how long a datagram waited in our own receive queue before we read it.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("=qq")
# Room for a receive's control messages: the GRO segment size and the timestamp.
RECV_CONTROL_BYTES = (
    _GRO_CMSG_SPACE + socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
)
SEGMENT_SIZE = struct.Struct("=H")  # the UDP_SEGMENT control message of a GSO send
_GRO_SIZE = struct.Struct("=i")
_LINUX = sys.platform.startswith("linux")

# What sendmsg takes: bytes, bytearrays, memoryviews (of a receive buffer, of a mapped file).
Buffer = Any


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
    if not _LINUX or not RECV_CONTROL_BYTES:
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


def parse_control(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int]:
    """(GRO segment size or 0, kernel arrival time in ns or 0) from a receive's control data."""
    segment = kernel_ns = 0
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
            segment = _GRO_SIZE.unpack_from(data)[0]
        elif level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            kernel_ns = seconds * 1_000_000_000 + nanoseconds
    return segment, kernel_ns
