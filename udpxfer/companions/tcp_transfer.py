"""File transfer over TCP for comparison runs: the header, the verdict line, the sender.

On one connection the sender writes a header, then the file's bytes; the receiver answers
one verdict line once it has checked the SHA-256. The sender exits successfully only on
``OK``. Layout (network byte order; docs/PROTOCOL.md has the same table):

    offset size field
    0      4    magic b"UXTC"
    4      1    version (1)
    5      1    flags (0; ignored)
    6      2    name length N in bytes (0..1024)
    8      8    file size in bytes
    16     32   SHA-256 of the whole file
    48     N    file name, UTF-8 (the receiver keeps only a safe base name)
    then   size the file's bytes
    <- receiver: one ASCII line, "OK sha256=<hex>\\n" or "FAIL <reason>\\n"
"""

from __future__ import annotations

import math
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udpxfer.companions import defaults
from udpxfer.companions.runtime import NoProgress, ProgressFactory, connect_tcp
from udpxfer.companions.tcp_info import read_tcp_info
from udpxfer.errors import MalformedPacket, TransferError, UsageError, map_os_errors
from udpxfer.net.hashing import sha256_file
from udpxfer.reports.send_report import SEND_SCHEMA
from udpxfer.units import Address, format_size

DEFAULT_PORT = defaults.TCP_TRANSFER_PORT
MAGIC = b"UXTC"
VERSION = 1
HEADER = struct.Struct("!4sBBHQ32s")
MAX_NAME_BYTES = 1024
MAX_VERDICT_BYTES = 1024
SEND_SLICE_BYTES = 1 << 20  # one sendfile call: the unit of progress updates


@dataclass(frozen=True, slots=True)
class TransferHeader:
    """What the receiver learns before the file's bytes."""

    name: str
    size: int
    sha256: bytes


def encode_header(header: TransferHeader) -> bytes:
    """The header bytes for ``header``; the name is cut to ``MAX_NAME_BYTES`` of UTF-8."""
    name = header.name.encode("utf-8", errors="surrogateescape")[:MAX_NAME_BYTES]
    fixed = HEADER.pack(MAGIC, VERSION, 0, len(name), header.size, header.sha256)
    return fixed + name


def header_length_untrusted(fixed: bytes) -> int:
    """The whole header's length, from its first ``HEADER.size`` bytes.

    Raises:
        MalformedPacket: not a udpxfer TCP transfer header of a known version.
    """
    try:
        magic, version, _, name_len, _, _ = HEADER.unpack(fixed)
    except struct.error as exc:
        raise MalformedPacket(f"short header ({len(fixed)} bytes)") from exc
    if magic != MAGIC:
        raise MalformedPacket("not a udpxfer TCP transfer (bad magic)")
    if version != VERSION:
        raise MalformedPacket(f"unsupported version {version}")
    if name_len > MAX_NAME_BYTES:
        raise MalformedPacket(f"name of {name_len} bytes is too long")
    return HEADER.size + int(name_len)


def decode_header_untrusted(data: bytes) -> TransferHeader:
    """Decode a complete header (fixed part and name).

    Raises:
        MalformedPacket: the bytes are not a valid header.
    """
    length = header_length_untrusted(data[: HEADER.size])
    if len(data) != length:
        raise MalformedPacket(f"header of {len(data)} bytes, expected {length}")
    _, _, _, _, size, digest = HEADER.unpack_from(data)
    try:
        name = data[HEADER.size :].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket("file name is not UTF-8") from exc
    return TransferHeader(name, size, digest)


def encode_verdict(ok: bool, detail: str) -> bytes:
    """The receiver's answer line: ``OK sha256=<hex>`` or ``FAIL <reason>``."""
    text = f"{'OK' if ok else 'FAIL'} {detail}".encode("ascii", errors="replace")
    return text[: MAX_VERDICT_BYTES - 1].replace(b"\n", b" ") + b"\n"


def decode_verdict_untrusted(line: bytes) -> tuple[bool, str]:
    """``(ok, detail)`` from a verdict line.

    Raises:
        MalformedPacket: the line is not a verdict.
    """
    word, _, detail = line.rstrip(b"\r\n").decode("ascii", errors="replace").partition(" ")
    if word not in ("OK", "FAIL") or not line.endswith(b"\n"):
        raise MalformedPacket(f"unexpected answer from the receiver: {line[:80]!r}")
    return word == "OK", detail


@dataclass(frozen=True, slots=True)
class SendResult:
    """A file the receiver confirmed."""

    name: str
    size: int
    sha256_hex: str
    duration_s: float
    verdict: str
    tcp_info: dict[str, Any] | None = None  # the kernel's counters at the end (Linux)


def send_file(
    path: Path,
    to: Address,
    *,
    timeout_s: float = 30.0,
    progress: ProgressFactory = NoProgress,
    congestion: str | None = None,
) -> SendResult:
    """Send ``path`` to a ``tcp recv`` at ``to`` and wait for its verdict.

    ``timeout_s`` bounds the connection attempt, any stall of the receiver, and the wait for
    its verdict. ``congestion`` picks the TCP congestion control (Linux ``TCP_CONGESTION``).

    Raises:
        UsageError: the file cannot be read, or the address is bad.
        TransportError: the receiver cannot be reached.
        TransferError: the connection broke, or the receiver did not confirm the file.
    """
    if not path.is_file():
        raise UsageError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
    digest = sha256_file(path)
    with map_os_errors(UsageError, f"cannot read {path}"):
        handle = path.open("rb")
    with handle, connect_tcp(to, timeout_s) as sock:
        if congestion is not None:
            set_congestion(sock, congestion)
        size = path.stat().st_size
        started = time.perf_counter()
        sock.settimeout(timeout_s)
        bar = progress(path.name, size)
        sent = 0
        try:
            sock.sendall(encode_header(TransferHeader(path.name, size, digest)))
            while sent < size:
                n = sock.sendfile(handle, sent, min(SEND_SLICE_BYTES, size - sent))
                if n == 0:
                    raise TransferError(f"{path} shrank while it was being sent")
                sent += n
                bar.update(n)
            verdict = _read_verdict(sock)
            tcp_info = read_tcp_info(sock)  # after the verdict: every byte was acknowledged
        except TimeoutError as exc:
            raise TransferError(
                f"receiver at {to} stalled for {timeout_s:g} s after {format_size(sent)} "
                f"of {format_size(size)}"
            ) from exc
        except OSError as exc:
            raise TransferError(
                f"connection to receiver {to} lost after sending {format_size(sent)} of "
                f"{format_size(size)} ({exc.strerror or type(exc).__name__}); "
                "the file was not delivered"
            ) from exc
        finally:
            bar.close()
    ok, detail = verdict
    if not ok:
        raise TransferError(f"receiver rejected {path.name}: {detail}")
    duration = time.perf_counter() - started
    return SendResult(path.name, size, digest.hex(), duration, detail, tcp_info)


def set_congestion(sock: socket.socket, name: str) -> None:
    """Use TCP congestion control ``name`` on ``sock``.

    Raises:
        UsageError: the system has no such algorithm (or no way to choose one).
    """
    option = getattr(socket, "TCP_CONGESTION", None)
    if option is None:
        raise UsageError("--congestion: this system cannot choose the congestion control")
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, name.encode("ascii", "replace"))
    except OSError as exc:
        raise UsageError(
            f"--congestion {name}: {exc.strerror} (see "
            "/proc/sys/net/ipv4/tcp_available_congestion_control)"
        ) from exc


def _read_verdict(sock: socket.socket) -> tuple[bool, str]:
    line = b""
    while not line.endswith(b"\n") and len(line) < MAX_VERDICT_BYTES:
        data = sock.recv(MAX_VERDICT_BYTES - len(line))
        if not data:
            break
        line += data
    if not line:
        raise TransferError("receiver closed the connection without confirming the file")
    try:
        return decode_verdict_untrusted(line)
    except MalformedPacket as exc:
        raise TransferError(str(exc)) from exc


REPORT_CHUNK_BYTES = 1 << 20  # a TCP report's "chunk", as the receiver's largest read


def tcp_send_report(
    path: Path,
    peer: str,
    *,
    sent_bytes: int,
    duration_s: float,
    started_unix_s: float,
    result: SendResult | None,
    reason: str = "",
) -> dict[str, Any]:
    """The sender's report (``udpxfer.send-report/1``) of a ``tcp send``: ``result`` when the
    receiver confirmed the file, None when the transfer failed for ``reason``."""
    size = result.size if result is not None else _size_or_zero(path)
    total = math.ceil(size / REPORT_CHUNK_BYTES)
    return {
        "schema": SEND_SCHEMA,
        "transport": "tcp",
        "mode": "reliable",
        "outcome": "complete" if result is not None else "failed",
        "reason": reason,
        "peer": peer,
        "started_unix_s": round(started_unix_s, 6),
        "file": {
            "name": path.name,
            "size": size,
            "path": str(path),
            "sha256_expected": result.sha256_hex if result is not None else None,
            "sha256_actual": result.sha256_hex if result is not None else None,
            "complete": result is not None,
            "verified": result is not None,
        },
        "verdict": "verified" if result is not None else None,
        # TCP resends what the network lost inside the kernel: nothing is resent up here.
        "chunks": {
            "size": REPORT_CHUNK_BYTES,
            "total": total,
            "sent": min(total, math.ceil(sent_bytes / REPORT_CHUNK_BYTES)),
            "resent": 0,
        },
        "repair": {"rounds": 0},
        "timing": {
            "duration_s": max(0.0, duration_s),
            "goodput_bps": size * 8 / duration_s if result is not None and duration_s > 0 else None,
        },
        # The kernel's own counters (Linux): segments sent and retransmitted, RTT, cwnd.
        "tcp_info": result.tcp_info if result is not None else None,
    }


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
