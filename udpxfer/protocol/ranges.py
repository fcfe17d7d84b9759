"""Inclusive ranges of chunk indexes: gaps in reports, bodies of NACKs."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def missing_ranges(held: bytes | bytearray | npt.NDArray[np.uint8]) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` ranges of the indexes where ``held`` is zero.

    Vectorised: the edges of runs of zeros come from one ``np.diff``.
    """
    import numpy as np  # here, so that a sender (which never calls this) starts without it

    flags = np.frombuffer(held, dtype=np.uint8) if not isinstance(held, np.ndarray) else held
    if flags.size == 0:
        return []
    pad = np.zeros(1, dtype=np.int8)  # a list [0] would make the whole array int64
    missing = np.concatenate((pad, (flags == 0).astype(np.int8), pad))
    edges = np.flatnonzero(np.diff(missing))
    starts, ends = edges[0::2], edges[1::2] - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def count_in(ranges: Iterable[tuple[int, int]]) -> int:
    """Number of indexes the inclusive ranges cover."""
    return sum(last - first + 1 for first, last in ranges)


def iter_indexes(ranges: Iterable[tuple[int, int]]) -> Iterator[int]:
    """Every index the inclusive ranges cover, in order."""
    for first, last in ranges:
        yield from range(first, last + 1)


def as_lists(ranges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Ranges as JSON-friendly ``[first, last]`` lists."""
    return [[first, last] for first, last in ranges]


def batched(ranges: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    """Consecutive slices of at most ``size`` ranges (one NACK datagram each)."""
    for start in range(0, len(ranges), size):
        yield ranges[start : start + size]


_BLOCK_BITS = 1 << 21  # bits unpacked at once by ``Bitmap.missing_ranges`` (2 MB of flags)


class Bitmap:
    """One bit per chunk (a transfer of 2^28 chunks costs 32 MiB, not 256 MiB or a dict)."""

    __slots__ = ("bits", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.bits = bytearray((size + 7) >> 3)

    def __getitem__(self, index: int) -> bool:
        return bool(self.bits[index >> 3] & (1 << (index & 7)))

    def set(self, index: int) -> None:
        """Set the bit of ``index`` (inside the map)."""
        self.bits[index >> 3] |= 1 << (index & 7)

    def clear(self, index: int) -> None:
        """Clear the bit of ``index`` (inside the map)."""
        self.bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF

    def set_range(self, first: int, last: int) -> None:
        """Set the bits of ``first .. last`` (inside the map), whole bytes at a time."""
        bits, end = self.bits, last + 1
        head, tail = first >> 3, end >> 3
        if head == tail:
            bits[head] |= ((1 << (end - first)) - 1) << (first & 7)
            return
        if first & 7:
            bits[head] |= (0xFF << (first & 7)) & 0xFF
            head += 1
        bits[head:tail] = b"\xff" * (tail - head)
        if end & 7:
            bits[tail] |= (1 << (end & 7)) - 1

    def any_in_range(self, first: int, last: int) -> bool:
        """True when any bit of ``first .. last`` (inside the map) is set."""
        head, end = first >> 3, last + 1
        word = int.from_bytes(self.bits[head : (end + 7) >> 3], "little") >> (first & 7)
        return bool(word & ((1 << (end - first)) - 1))

    def first_clear(self, start: int) -> int:
        """The first index at or after ``start`` whose bit is clear (``size`` if none)."""
        full = b"\xff" * 64
        byte = start >> 3
        # Bits of the first byte below ``start`` count as set.
        while byte < len(self.bits):
            head = self.bits[byte] | ((1 << (start & 7)) - 1 if byte == start >> 3 else 0)
            if head != 0xFF:
                free = ~head & 0xFF
                return min(self.size, (byte << 3) + (free & -free).bit_length() - 1)
            byte += 1
            while self.bits[byte : byte + 64] == full:
                byte += 64
        return self.size

    def flags(self) -> npt.NDArray[np.uint8]:
        """One 0/1 byte per index, for vectorised work (reports, analysis)."""
        import numpy as np

        packed = np.frombuffer(bytes(self.bits), dtype=np.uint8)
        return np.unpackbits(packed, bitorder="little")[: self.size]

    def count(self) -> int:
        """How many bits are set."""
        return int.from_bytes(self.bits, "little").bit_count()

    def missing_ranges(self, limit: int | None = None) -> list[tuple[int, int]]:
        """Inclusive ranges of clear bits among the first ``limit`` indexes (all by default).

        Unpacked a block at a time (``_BLOCK_BITS``), so a map of 10^8 chunks never becomes
        10^8 bytes at once; a range across a block boundary is joined.
        """
        import numpy as np

        end = self.size if limit is None else min(max(0, limit), self.size)
        packed = np.frombuffer(self.bits, dtype=np.uint8)
        out: list[tuple[int, int]] = []
        for start in range(0, end, _BLOCK_BITS):
            stop = min(start + _BLOCK_BITS, end)
            flags = np.unpackbits(packed[start >> 3 : (stop + 7) >> 3], bitorder="little")
            found = missing_ranges(flags[: stop - start])
            if found and out and out[-1][1] == start - 1 and found[0][0] == 0:
                out[-1] = (out[-1][0], found[0][1] + start)
                found = found[1:]
            out.extend((first + start, last + start) for first, last in found)
        return out

    def set_ranges(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Set every index the (already clamped) inclusive ranges cover."""
        import numpy as np

        flags = self.flags().copy()
        for first, last in ranges:
            flags[first : last + 1] = 1
        self.bits = bytearray(np.packbits(flags, bitorder="little").tobytes())

    def to_bytes(self) -> bytes:
        """The packed bits (little-endian bit order within each byte)."""
        return bytes(self.bits)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> Bitmap:
        """A map of ``size`` bits from ``to_bytes`` output (extra bits ignored, missing zero)."""
        bitmap = cls(size)
        n = min(len(bitmap.bits), len(data))
        bitmap.bits[:n] = data[:n]
        if size & 7 and len(bitmap.bits) == n and n:
            bitmap.bits[-1] &= (1 << (size & 7)) - 1
        return bitmap


def clamp_ranges(
    ranges: Iterable[tuple[int, int]], count: int, *, limit: int
) -> list[tuple[int, int]]:
    """Peer-supplied inclusive ranges clipped to ``[0, count)``, at most ``limit`` of them.

    Never loops over what a range covers: only over the ranges themselves.
    """
    out: list[tuple[int, int]] = []
    for first, last in ranges:
        if len(out) >= limit:
            break
        if first >= count or last < first:
            continue
        out.append((max(0, first), min(last, count - 1)))
    return out


class RangeQueue:
    """Indexes waiting to be sent, as merged inclusive ranges, taken from the front.

    Adding a range that overlaps what is queued, or what was already taken since ``reset``,
    adds only what is new, so repeated or overlapping requests never make the queue (or the
    work) grow beyond the indexes themselves. Pure interval arithmetic: the work of ``add`` is
    in the number of ranges it meets, never in the indexes a range covers.
    """

    def __init__(self, count: int) -> None:
        self._count = count
        self._queue: list[list[int]] = []  # sorted, disjoint [first, last]
        self._taken: list[list[int]] = []  # likewise: taken since the last reset
        self.length = 0

    def reset(self) -> None:
        """Forget what was taken (a new repair round may ask for the same indexes again)."""
        self._taken = []

    def add(self, first: int, last: int) -> int:
        """Queue the untaken indexes of ``[first, last]`` (clamped); returns how many were new."""
        first, last = max(0, first), min(last, self._count - 1)
        if first > last:
            return 0
        added = 0
        for a, b in _subtract([(first, last)], self._taken):
            for c, d in _subtract([(a, b)], self._queue):
                _insert(self._queue, c, d)
                added += d - c + 1
        self.length += added
        return added

    def __bool__(self) -> bool:
        return bool(self._queue)

    def peek(self) -> int:
        """The smallest queued index, left in the queue."""
        return self._queue[0][0]

    def pop(self) -> int:
        """The smallest queued index, marked as taken."""
        head = self._queue[0]
        index = head[0]
        if head[0] == head[1]:
            del self._queue[0]
        else:
            head[0] += 1
        self.length -= 1
        _insert(self._taken, index, index)
        return index

    def pop_run(self, limit: int) -> tuple[int, int]:
        """Up to ``limit`` (at least 1) consecutive indexes from the front, marked as taken.

        Returns ``(first, count)``: indexes ``first .. first + count - 1``.
        """
        head = self._queue[0]
        first = head[0]
        count = max(1, min(limit, head[1] - first + 1))
        if first + count > head[1]:
            del self._queue[0]
        else:
            head[0] = first + count
        self.length -= count
        _insert(self._taken, first, first + count - 1)
        return first, count

    def push_front(self, index: int) -> None:
        """Put back an index just popped (it could not be sent yet)."""
        _remove(self._taken, index, index)
        _insert(self._queue, index, index)
        self.length += 1

    def discard(self, first: int, last: int) -> None:
        """Drop ``[first, last]`` from the queue and mark it taken (held by the peer already)."""
        first, last = max(0, first), min(last, self._count - 1)
        if first > last:
            return
        self.length -= _remove(self._queue, first, last)
        _insert(self._taken, first, last)


def _overlapping(ranges: list[list[int]], first: int, last: int) -> tuple[int, int]:
    """Slice bounds of the ranges that overlap or touch ``[first, last]``."""
    lo = bisect.bisect_left(ranges, first - 1, key=lambda r: r[1])
    hi = lo
    while hi < len(ranges) and ranges[hi][0] <= last + 1:
        hi += 1
    return lo, hi


def _insert(ranges: list[list[int]], first: int, last: int) -> None:
    lo, hi = _overlapping(ranges, first, last)
    if lo < hi:
        first, last = min(first, ranges[lo][0]), max(last, ranges[hi - 1][1])
    ranges[lo:hi] = [[first, last]]


def _remove(ranges: list[list[int]], first: int, last: int) -> int:
    """Take ``[first, last]`` out of ``ranges``; returns how many indexes were there."""
    lo, hi = _overlapping(ranges, first, last)
    kept: list[list[int]] = []
    removed = 0
    for a, b in ranges[lo:hi]:
        overlap = min(b, last) - max(a, first) + 1
        if overlap > 0:
            removed += overlap
        if a < first:
            kept.append([a, min(b, first - 1)])
        if b > last:
            kept.append([max(a, last + 1), b])
    ranges[lo:hi] = kept
    return removed


def _subtract(pieces: list[tuple[int, int]], ranges: list[list[int]]) -> list[tuple[int, int]]:
    """The parts of ``pieces`` outside ``ranges``."""
    out: list[tuple[int, int]] = []
    for first, last in pieces:
        lo, hi = _overlapping(ranges, first, last)
        start = first
        for a, b in ranges[lo:hi]:
            if a > start:
                out.append((start, min(a - 1, last)))
            start = max(start, b + 1)
        if start <= last:
            out.append((start, last))
    return out
