"""Keyless DATA runs built as one contiguous buffer with numpy: the sender's hot path.

A run of consecutive full chunks becomes ``count`` datagrams back to back in one buffer:
the headers written by column (index, packet number and flags vary; the rest is one template
row), the payloads copied in one step from the file, then one CRC-32 call per datagram over
its header and payload (one contiguous span, as the wire format wants). One buffer is one
element for the gathered send: the kernel gets one iovec instead of three per datagram, and
Python builds no objects per datagram but the CRC's. On a 2-core VM this halved the sender's
CPU per datagram against building a header, a view and a trailer per datagram (0.35 against
0.8-0.97 us of user time, GSO send included; 1444-byte datagrams, runs of 44).

numpy takes about 0.1 s to import, so the sender loads this module only where that time is
hidden (while it hashes a large file); until then, runs are built as pieces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from udpxfer.protocol.checksum import crc32
from udpxfer.protocol.wire import CRC_BYTES, HEADER_BYTES, MAGIC, VERSION, PacketType

_HEADER = np.dtype(
    [
        ("magic", "S4"), ("version", "u1"), ("type", "u1"), ("flags", "u1"), ("pass_no", "u1"),
        ("session", ">u8"), ("seq", ">u8"), ("pn", ">u8"), ("sent_ns", ">u8"),
    ]
)  # fmt: skip
assert _HEADER.itemsize == HEADER_BYTES  # the layout of wire.HEADER


@functools.lru_cache(maxsize=8)
def _row(chunk_size: int) -> np.dtype[np.void]:
    return np.dtype([("header", _HEADER), ("payload", "u1", (chunk_size,)), ("check", ">u4")])


def build_run(
    data: bytes | memoryview,
    chunk_size: int,
    first: int,
    pn: int,
    count: int,
    *,
    session: int,
    flags: int,
    ack_flag: int,
    ack_every: int,
    acked: int,
    window: int,
    pass_no: int,
    sent_ns: int,
    check: Callable[..., int] = crc32,
) -> tuple[bytearray, list[int]]:
    """``count`` keyless DATA datagrams of full chunks ``first ..`` numbered ``pn ..``.

    A datagram asks for an answer (``ack_flag`` on top of ``flags``) when its number is a
    multiple of ``ack_every`` or it fills the ``window`` beyond ``acked`` (the sender's rule).
    The chunks must all be whole (the file's short last chunk goes the other way). Returns
    the datagrams back to back, ``HEADER_BYTES + chunk_size + CRC_BYTES`` bytes each, and
    the numbers of those that ask for an answer, in order.
    """
    numbers = np.arange(pn, pn + count, dtype=np.int64)
    ack = (numbers % ack_every == 0) | (numbers - acked >= window)
    segment = HEADER_BYTES + chunk_size + CRC_BYTES
    buffer = bytearray(count * segment)
    rows = np.frombuffer(buffer, dtype=_row(chunk_size))
    header = rows["header"]
    header["magic"] = MAGIC
    header["version"] = VERSION
    header["type"] = int(PacketType.DATA)
    header["flags"] = np.where(ack, flags | ack_flag, flags)
    header["pass_no"] = pass_no
    header["session"] = session
    header["seq"] = np.arange(first, first + count, dtype=np.uint64)
    header["pn"] = numbers
    header["sent_ns"] = sent_ns
    rows["payload"] = np.frombuffer(
        data, dtype=np.uint8, count=count * chunk_size, offset=first * chunk_size
    ).reshape(count, chunk_size)
    view = memoryview(buffer)
    span = segment - CRC_BYTES
    rows["check"] = [check(view[start : start + span]) for start in range(0, len(buffer), segment)]
    view.release()
    asking: list[int] = numbers[ack].tolist()
    return buffer, asking
