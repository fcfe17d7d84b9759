"""Inclusive ranges of chunk indexes: gaps in reports, bodies of NACKs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt


def missing_ranges(held: bytes | bytearray | npt.NDArray[np.uint8]) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` ranges of the indexes where ``held`` is zero.

    Vectorised: the edges of runs of zeros come from one ``np.diff``.
    """
    flags = np.frombuffer(held, dtype=np.uint8) if not isinstance(held, np.ndarray) else held
    if flags.size == 0:
        return []
    missing = np.concatenate(([0], (flags == 0).astype(np.int8), [0]))
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

    def flags(self) -> npt.NDArray[np.uint8]:
        """One 0/1 byte per index, for vectorised work (reports, analysis)."""
        packed = np.frombuffer(bytes(self.bits), dtype=np.uint8)
        return np.unpackbits(packed, bitorder="little")[: self.size]

    def flags_range(self, first: int, last: int) -> npt.NDArray[np.uint8]:
        """0/1 bytes for the inclusive index range (inside the map), unpacking only that part."""
        lo = first >> 3
        packed = np.frombuffer(bytes(self.bits[lo : (last >> 3) + 1]), dtype=np.uint8)
        flags = np.unpackbits(packed, bitorder="little")
        return flags[first - (lo << 3) : last - (lo << 3) + 1]

    def count(self) -> int:
        """How many bits are set."""
        return int.from_bytes(self.bits, "little").bit_count()

    def missing_ranges(self, limit: int | None = None) -> list[tuple[int, int]]:
        """Inclusive ranges of clear bits among the first ``limit`` indexes (all by default)."""
        flags = self.flags()
        return missing_ranges(flags if limit is None else flags[: max(0, limit)])

    def set_ranges(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Set every index the (already clamped) inclusive ranges cover."""
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
    work) grow beyond the indexes themselves.
    """

    def __init__(self, count: int) -> None:
        self._count = count
        self._queue: list[list[int]] = []  # sorted, disjoint [first, last]
        self._taken = Bitmap(count)
        self.length = 0

    def reset(self) -> None:
        """Forget what was taken (a new repair round may ask for the same indexes again)."""
        self._taken = Bitmap(self._count)

    def add(self, first: int, last: int) -> int:
        """Queue the untaken indexes of ``[first, last]`` (clamped); returns how many were new."""
        first, last = max(0, first), min(last, self._count - 1)
        if first > last:
            return 0
        added = 0
        flags = self._taken.flags_range(first, last)
        # Runs of untaken indexes inside the range, found without a Python loop per index.
        edges = np.flatnonzero(np.diff(np.concatenate(([1], flags, [1])).astype(np.int8)))
        for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
            added += self._merge(first + a, first + b - 1)
        return added

    def _merge(self, first: int, last: int) -> int:
        queue = self._queue
        lo = 0
        hi = len(queue)
        while lo < hi:  # the first queued range ending at or after first - 1
            mid = (lo + hi) // 2
            if queue[mid][1] < first - 1:
                lo = mid + 1
            else:
                hi = mid
        new = last - first + 1
        i = lo
        merged_first, merged_last = first, last
        while i < len(queue) and queue[i][0] <= last + 1:
            a, b = queue[i]
            overlap = min(b, last) - max(a, first) + 1
            if overlap > 0:
                new -= overlap
            merged_first, merged_last = min(merged_first, a), max(merged_last, b)
            i += 1
        queue[lo:i] = [[merged_first, merged_last]]
        self.length += new
        return new

    def __bool__(self) -> bool:
        return bool(self._queue)

    def pop(self) -> int:
        """The smallest queued index, marked as taken."""
        head = self._queue[0]
        index = head[0]
        if head[0] == head[1]:
            del self._queue[0]
        else:
            head[0] += 1
        self.length -= 1
        self._taken.set(index)
        return index

    def push_front(self, index: int) -> None:
        """Put back an index just popped (it could not be sent yet)."""
        self._taken.clear(index)
        if self._queue and self._queue[0][0] == index + 1:
            self._queue[0][0] = index
        else:
            self._queue.insert(0, [index, index])
        self.length += 1

    def discard(self, first: int, last: int) -> None:
        """Drop ``[first, last]`` from the queue and mark it taken (held by the peer already)."""
        first, last = max(0, first), min(last, self._count - 1)
        if first > last:
            return
        kept: list[list[int]] = []
        for a, b in self._queue:
            if b < first or a > last:
                kept.append([a, b])
                continue
            self.length -= min(b, last) - max(a, first) + 1
            if a < first:
                kept.append([a, first - 1])
            if b > last:
                kept.append([last + 1, b])
        self._queue = kept
