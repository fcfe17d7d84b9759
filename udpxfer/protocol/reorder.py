"""RFC 4737 reordering and RFC 5560 duplicates over transmission numbers, kept online."""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from udpxfer.protocol.ranges import Bitmap

I64 = npt.NDArray[np.int64]

# RFC 4737 extents: the jumps of the highest transmission number seen (each leaves a hole a
# late datagram may fill) are kept for the most recent ``REORDER_MEMORY``; a datagram later
# than that is still counted as reordered, but its extent is not measured (``extent_unknown``).
REORDER_MEMORY: Final = 1 << 16


class Reordering:
    """RFC 4737 over transmission numbers in arrival order, online.

    NextExp is the highest number seen + 1 (section 3.3): an arrival below it is reordered
    (4.1). Its extent (4.2.1) is its position (among unique arrivals) minus the position of the
    arrival that first took NextExp past it: the jump that left the hole it fills. Arrivals of
    a number seen before are network duplicates (RFC 5560), set aside first as RFC 4737 assumes
    unique numbers; a bit per number tells them (up to ``cap`` numbers).
    """

    __slots__ = ("_jumps", "_n_jumps", "cap", "count", "duplicates", "extent_max", "extent_sum",
                 "extent_unknown", "highest", "seen", "unique")  # fmt: skip

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen = bytearray()
        self.highest = -1
        self.unique = self.count = self.duplicates = 0
        self.extent_sum = self.extent_max = self.extent_unknown = 0
        self._jumps = np.zeros((3, 16), dtype=np.int64)  # from, to, position; grows to 2 x memory
        self._n_jumps = 0

    def add_run(self, first: int, last: int) -> None:
        """Transmissions ``first .. last`` arrived in order, all above the highest."""
        if first > self.highest + 1:
            self._record(np.array([[self.highest], [first], [self.unique]], dtype=np.int64))
        self._mark_range(first, last)
        self.unique += last - first + 1
        self.highest = last

    def add(self, tx: I64) -> None:
        """Transmissions in arrival order, any mix."""
        n = tx.size
        if n > 1 and int(tx[0]) > self.highest and bool(np.all(np.diff(tx) == 1)):
            self.add_run(int(tx[0]), int(tx[-1]))
            return
        _, once = np.unique(tx, return_index=True)
        keep = np.zeros(n, dtype=np.bool_)
        keep[once] = True
        below = np.flatnonzero(keep & (tx <= self.highest) & (tx < self.cap))
        if below.size and self.seen:
            values = tx[below]
            bytes_at = values >> 3
            inside = bytes_at < len(self.seen)
            bits = np.zeros(below.size, dtype=np.uint8)
            table = np.frombuffer(self.seen, dtype=np.uint8)
            bits[inside] = table[bytes_at[inside]] >> (values[inside] & 7).astype(np.uint8) & 1
            del table  # a view would pin the bytearray: it must stay free to grow
            keep[below[bits != 0]] = False
        fresh = tx[keep]
        self.duplicates += n - fresh.size
        if fresh.size == 0:
            return
        position = self.unique + np.arange(fresh.size, dtype=np.int64)
        before = np.maximum.accumulate(np.concatenate(([self.highest], fresh)))[:-1]
        jumps = np.flatnonzero(fresh > before + 1)
        if jumps.size:
            self._record(np.stack((before[jumps], fresh[jumps], position[jumps])))
        late = np.flatnonzero(fresh < before)
        if late.size:
            self._late(fresh[late], position[late])
        self._mark(fresh)
        self.unique += fresh.size
        self.highest = max(self.highest, int(fresh.max()))

    def _late(self, values: I64, position: I64) -> None:
        self.count += values.size
        table = self._jumps[:, : self._n_jumps]
        at = np.searchsorted(table[0], values, side="left") - 1
        found = (at >= 0) & (values < table[1][np.maximum(at, 0)])
        extents = position[found] - table[2][at[found]]
        self.extent_unknown += int(values.size - extents.size)
        if extents.size:
            self.extent_sum += int(extents.sum())
            self.extent_max = max(self.extent_max, int(extents.max()))

    def _record(self, jumps: I64) -> None:
        k = jumps.shape[1]
        size = self._jumps.shape[1]
        if self._n_jumps + k > size and size < 2 * REORDER_MEMORY:
            grown = np.zeros(
                (3, min(2 * REORDER_MEMORY, max(2 * size, self._n_jumps + k))), np.int64
            )
            grown[:, : self._n_jumps] = self._jumps[:, : self._n_jumps]
            self._jumps = grown
        if self._n_jumps + k > self._jumps.shape[1]:
            keep = min(self._n_jumps, REORDER_MEMORY)  # forget the oldest holes
            self._jumps[:, :keep] = self._jumps[:, self._n_jumps - keep : self._n_jumps]
            self._n_jumps = keep
            if k > self._jumps.shape[1] - keep:
                jumps = jumps[:, -(self._jumps.shape[1] - keep) :]
                k = jumps.shape[1]
        self._jumps[:, self._n_jumps : self._n_jumps + k] = jumps
        self._n_jumps += k

    def _grow(self, highest: int) -> bool:
        need = (min(highest, self.cap - 1) >> 3) + 1
        if need > len(self.seen):
            self.seen.extend(bytes(max(need, 2 * len(self.seen)) - len(self.seen)))
        return highest < self.cap

    def _mark_range(self, first: int, last: int) -> None:
        if first >= self.cap:
            return
        self._grow(last)
        bitmap = Bitmap.__new__(Bitmap)
        bitmap.bits, bitmap.size = self.seen, len(self.seen) * 8
        bitmap.set_range(first, min(last, self.cap - 1))

    def _mark(self, values: I64) -> None:
        values = values[values < self.cap]
        if values.size:
            self._grow(int(values.max()))
            table = np.frombuffer(self.seen, dtype=np.uint8)
            np.bitwise_or.at(table, values >> 3, np.left_shift(1, values & 7).astype(np.uint8))
