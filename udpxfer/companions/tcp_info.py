"""The kernel's view of a TCP connection (Linux ``TCP_INFO``): retransmissions, RTT, cwnd.

``struct tcp_info`` from ``include/uapi/linux/tcp.h``; fields appended by later kernels are
read only when the kernel returned enough bytes.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

# (name, offset, struct format) of the fields we report.
_FIELDS = (
    ("retransmits", 2, "B"),  # consecutive RTO retransmissions right now
    ("rto_us", 8, "I"),
    ("snd_mss", 16, "I"),
    ("lost", 32, "I"),
    ("rtt_us", 68, "I"),  # smoothed RTT
    ("rttvar_us", 72, "I"),
    ("snd_ssthresh", 76, "I"),
    ("snd_cwnd", 80, "I"),
    ("total_retrans", 100, "I"),  # segments retransmitted over the connection's life
    ("segs_out", 136, "I"),
    ("min_rtt_us", 148, "I"),
    ("data_segs_out", 156, "I"),
    ("bytes_sent", 200, "Q"),  # including retransmissions (Linux 4.19+)
    ("bytes_retrans", 208, "Q"),
)
TCP_INFO_BYTES = 256


def decode_tcp_info(raw: bytes) -> dict[str, int]:
    """The fields of ``_FIELDS`` that ``raw`` (a ``struct tcp_info``) is long enough to hold."""
    out: dict[str, int] = {}
    for name, offset, fmt in _FIELDS:
        if offset + struct.calcsize(fmt) <= len(raw):
            (out[name],) = struct.unpack_from(fmt, raw, offset)
    return out


def read_tcp_info(sock: socket.socket) -> dict[str, Any] | None:
    """``TCP_INFO`` of a connected socket, or None where the system has no such option."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, TCP_INFO_BYTES)
    except OSError:
        return None
    info: dict[str, Any] = decode_tcp_info(raw)
    congestion = getattr(socket, "TCP_CONGESTION", None)
    if congestion is not None:
        try:
            name = sock.getsockopt(socket.IPPROTO_TCP, congestion, 16)
        except OSError:
            name = b""
        info["congestion_control"] = name.split(b"\0", 1)[0].decode("ascii", "replace") or None
    return info
