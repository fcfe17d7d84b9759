"""Decoding a whole receive buffer of DATA datagrams at once (STYLE.md section 9).

A UDP GRO receive hands over up to 64 datagrams back to back, all ``segment`` bytes long but
the last, which may be shorter. Wire v2 puts a fixed 40-byte header at the start of each and
one integrity check over one contiguous span at its end, so a numpy structured view with a
stride of ``segment`` reads every header of the buffer in one step; only the CRC-32 is one
call per datagram (zlib, 0.3 us for 1400 bytes).

``decode_batch_untrusted`` splits the rows into the fast ones (well-formed keyless DATA with a
valid check) and the rest, which the caller hands one by one to the row decoder
(``codec.decode_untrusted``, via the endpoint's ``receive_datagram``): that path stays the one
truth for everything unusual (junk, control packets, keyed datagrams, a failed check), and a
property test holds the two to the same answers. Sans-IO: bytes in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from udpxfer.protocol.checksum import crc32
from udpxfer.protocol.wire import (
    CRC_BYTES,
    HEADER_BYTES,
    MAGIC,
    MAX_PN,
    MAX_STAMP_NS,
    TAG_BYTES,
    VERSION,
    Flags,
    PacketType,
)

_MAGIC = int.from_bytes(MAGIC, "big")
_DATA = int(PacketType.DATA)
_DATA_FLAGS = int(Flags.RESENT | Flags.ACK_REQUESTED)  # keyless DATA takes no other bits
_MIN_BYTES = HEADER_BYTES + CRC_BYTES
# The first header word: magic (32 bits), version, type, flags, pass (8 bits each). Keyless
# DATA has these bits fixed; only the two DATA flags and the pass number may vary.
_FIXED_MASK = np.uint64(~((_DATA_FLAGS << 8) | 0xFF) & 0xFFFFFFFFFFFFFFFF)
_FIXED_DATA = np.uint64((_MAGIC << 32) | (VERSION << 24) | (_DATA << 16))
# Keyed DATA: the KEYED bit set, ENCRYPTED either way (the tag covers the choice).
_KEYED_FLAGS = int(Flags.KEYED)
_KEYED_MASK = np.uint64(~(((_DATA_FLAGS | int(Flags.ENCRYPTED)) << 8) | 0xFF) & 0xFFFFFFFFFFFFFFFF)
_KEYED_DATA = np.uint64((_MAGIC << 32) | (VERSION << 24) | (_DATA << 16) | (_KEYED_FLAGS << 8))
_ROWS = np.arange(1 << 12, dtype=np.int64)

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class DataBatch:
    """The fast rows of a receive buffer, in buffer order, as columns.

    ``rows`` are the positions of the datagrams in the buffer (datagram ``r`` starts at byte
    ``r * segment``); ``payload_bytes`` is each one's payload length; its payload starts at
    ``r * segment + HEADER_BYTES``. ``slow`` lists, in order, the rows for the row decoder.
    """

    segment: int
    rows: I64
    session: npt.NDArray[np.uint64]
    index: I64
    tx: I64
    sent_ns: I64
    pass_no: U8
    flags: U8
    payload_bytes: I64
    slow: list[int]

    def __len__(self) -> int:
        return int(self.rows.size)

    def take(self, keep: npt.NDArray[np.bool_]) -> DataBatch:
        """The rows where ``keep`` is true (``slow`` unchanged)."""
        return DataBatch(
            self.segment,
            self.rows[keep],
            self.session[keep],
            self.index[keep],
            self.tx[keep],
            self.sent_ns[keep],
            self.pass_no[keep],
            self.flags[keep],
            self.payload_bytes[keep],
            self.slow,
        )

    def payload_start(self, position: int) -> int:
        """Where the payload of the ``position``-th fast row starts in the buffer."""
        return int(self.rows[position]) * self.segment + HEADER_BYTES


def row_count(length: int, segment: int) -> int:
    """Datagrams in a receive of ``length`` bytes coalesced at ``segment`` bytes (0: one)."""
    if length <= 0:
        return 1 if length == 0 else 0
    if segment <= 0 or segment >= length:
        return 1
    return -(-length // segment)


def decode_batch_untrusted(
    buffer: bytes | bytearray | memoryview, length: int, segment: int, *, keyed: bool = False
) -> DataBatch:
    """Decode the first ``length`` bytes of ``buffer``, a run of datagrams ``segment`` bytes
    apart (``segment`` 0 or at least ``length``: one datagram).

    Keyless, the fast rows are DATA whose CRC-32 checks. ``keyed``, they are DATA with an
    AEAD tag, not yet authenticated: the session's seal opens them (``AeadSeal.open_batch``)
    before anything in them is used. Never raises for any content: what the fast path does
    not take goes to ``slow``.
    """
    view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    n = row_count(length, segment)
    if segment <= 0 or segment >= length:
        segment = max(length, 1)
    last_bytes = length - (n - 1) * segment if n else 0
    trailer = TAG_BYTES if keyed else CRC_BYTES
    least = HEADER_BYTES + trailer
    # Rows long enough to hold a header and a trailer (only the last can be shorter).
    full = n if last_bytes >= least else n - 1
    if segment < least:
        full = 0
    if full <= 0:
        return _empty(segment, list(range(n)))
    # One copy of the headers; read as five big-endian 64-bit words too: magic, version,
    # type, flags and pass in the first; session, seq, pn and stamp in the others.
    raw = np.ndarray((full, HEADER_BYTES), dtype=np.uint8, buffer=view, strides=(segment, 1))
    raw = raw.copy()
    words = raw.view(">u8").astype(np.uint64)
    mask, fixed = (_KEYED_MASK, _KEYED_DATA) if keyed else (_FIXED_MASK, _FIXED_DATA)
    ok = (
        ((words[:, 0] & mask) == fixed)
        & ((words[:, 2] | words[:, 3]) <= MAX_PN)  # no chunk index is near 2^62: int64 below
        & (words[:, 4] <= MAX_STAMP_NS)
    )
    if not keyed:
        _check_crc(view, length, segment, n, full, last_bytes, ok)
    if full == n and ok.all():
        rows = _ROWS[:n]
        slow: list[int] = []
    else:
        rows = np.flatnonzero(ok)
        slow = sorted(set(range(n)) - set(rows.tolist()))
        raw, words = raw[rows], words[rows]
    sizes = np.full(rows.size, segment - least, dtype=np.int64)
    if full == n and rows.size and rows[-1] == n - 1:
        sizes[-1] = last_bytes - least
    signed = words.view(np.int64)  # every value checked above to be below 2^63
    return DataBatch(
        segment,
        rows,
        words[:, 1],
        signed[:, 2],
        signed[:, 3],
        signed[:, 4],
        raw[:, 7],
        raw[:, 6],
        sizes,
        slow,
    )


def _check_crc(
    view: memoryview,
    length: int,
    segment: int,
    n: int,
    full: int,
    last_bytes: int,
    ok: npt.NDArray[np.bool_],
) -> None:
    """Clear ``ok`` where the CRC-32 of header and payload differs from the trailer."""
    span = segment - CRC_BYTES
    short = full == n and last_bytes != segment  # the last datagram is shorter
    whole = full - 1 if short else full  # rows of exactly ``segment`` bytes
    spans = _spans(view, segment, whole)
    trailers = np.ndarray(
        (whole,), dtype=">u4", buffer=view, offset=span, strides=(segment,)
    ).tolist()
    if short:
        spans.append(view[(n - 1) * segment : length - CRC_BYTES])
        trailers.append(int.from_bytes(view[length - CRC_BYTES : length], "big"))
    computed = list(map(crc32, spans))
    if computed != trailers:
        ok &= np.equal(computed, trailers)


def payload_views(view: memoryview, batch: DataBatch, positions: I64) -> list[memoryview]:
    """The payloads of the rows of ``batch`` at ``positions`` (increasing), as views of
    ``view``, the buffer it was decoded from (for a gathered write straight from it)."""
    step = batch.segment
    rows = batch.rows[positions]
    slots = _views(
        view, step, HEADER_BYTES, step - CRC_BYTES, int(rows[-1]) + 1 if rows.size else 0
    )
    n = rows.size
    # Rows 0 .. n-1 (the common case) take no work per row.
    out = slots[:n] if n and int(rows[-1]) == n - 1 else [slots[row] for row in rows.tolist()]
    if n and int(batch.payload_bytes[positions[-1]]) != step - _MIN_BYTES:
        start = int(rows[-1]) * step + HEADER_BYTES  # the buffer's shorter last datagram
        out[-1] = view[start : start + int(batch.payload_bytes[positions[-1]])]
    return out


# (segment, start) -> the buffer whose views are kept, and the views: one buffer per kind of
# view, and a few kinds (the oldest goes first), so that a caller with a fresh buffer each
# time pins no more than its latest few.
_view_cache: dict[tuple[int, int], tuple[memoryview, list[memoryview]]] = {}
_VIEW_CACHE_ENTRIES = 8


def _spans(view: memoryview, segment: int, rows: int) -> list[memoryview]:
    """The checked span of the first ``rows`` datagram slots of ``view`` (all but the
    trailer), as views."""
    return _views(view, segment, 0, segment - CRC_BYTES, rows)[:rows]


def _views(view: memoryview, segment: int, start: int, end: int, rows: int) -> list[memoryview]:
    """``view[slot * segment + start : slot * segment + end]`` for at least the first ``rows``
    slots (fewer where ``view`` ends).

    A receiver reads into the same buffer over and over: the views of each buffer (the same
    memoryview object each time) are made once, as far as they are asked for, and shared;
    do not change the list.
    """
    key = (segment, start)
    cached = _view_cache.get(key)
    if cached is None or cached[0] is not view:
        _view_cache.pop(key, None)
        if len(_view_cache) >= _VIEW_CACHE_ENTRIES:
            del _view_cache[next(iter(_view_cache))]
        cached = _view_cache[key] = (view, [])
    views = cached[1]
    if len(views) < rows:
        first = len(views) * segment
        last = min(rows * segment, len(view) - end + 1)
        views.extend(view[at + start : at + end] for at in range(first, last, segment))
    return views


def _empty(segment: int, slow: list[int]) -> DataBatch:
    i64 = np.empty(0, dtype=np.int64)
    u8 = np.empty(0, dtype=np.uint8)
    return DataBatch(segment, i64, np.empty(0, dtype=np.uint64), i64, i64, i64, u8, u8, i64, slow)
