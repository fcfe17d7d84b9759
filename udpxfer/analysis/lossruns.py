"""First-pass loss statistics from a lost mask read in blocks: bounded memory for any size.

The lost mask of a transfer is one bit per chunk (the receiver's first-pass bitmap); unpacked
whole it would be a byte per chunk (100 MB for a 140 GB file). ``LossRuns`` takes it block by
block, carrying what spans a block boundary (the open run, the last two chunks, the open RFC
3611 group), and ends with the same integers ``loss`` and ``bursts`` compute over the whole mask:
run-length histograms, Gilbert transition counts, the lag sums of the Gilbert-Elliott moments
and the RFC 3611 burst counters. Pure numpy, vectorised per block.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Bools = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

BLOCK_CHUNKS = 1 << 20  # 1 Mi chunks per block: 1 MB of bools, a few such temporaries


@dataclass(frozen=True, slots=True)
class MomentCounts:
    """Integer sums of a 0/1 sequence x of length n for its lag moments (all exact).

    ``ones`` = sum x_t, ``pairs1`` = sum x_t x_t+1, ``pairs2`` = sum x_t x_t+2, ``triples`` =
    sum x_t x_t+1 x_t+2, and the first and last two values (for the sums' shorter ranges).
    """

    n: int
    ones: int
    pairs1: int
    pairs2: int
    triples: int
    head: tuple[int, int]
    tail: tuple[int, int]

    @classmethod
    def of(cls, x: Bools) -> MomentCounts:
        """The counts of a whole mask at once (the reference for the block-wise ones)."""
        return _Moments().feed(x).result()

    def centred(self) -> tuple[float, float, float, float, float] | None:
        """``(mean, var, c1, c2, k3)``: mean, variance, lag-1 and lag-2 autocovariance and
        third lag moment of x, from the counts (None below 3 values).

        With m the mean, sum over t <= n-2 of (x_t - m)(x_t+1 - m) = pairs1 - m (sum x_t +
        sum x_t+1) + (n - 1) m^2 (and alike for lag 2 and the triple product), the sums of x
        over the shorter ranges being ``ones`` less the values at the ends.
        """
        n = self.n
        if n < 3:
            return None
        x0, x1 = self.head
        y2, y1 = self.tail  # x_n-2, x_n-1
        k = self.ones
        m = k / n
        var = (k - k * m) / n
        c1 = (self.pairs1 - m * ((k - y1) + (k - x0)) + (n - 1) * m * m) / (n - 1)
        c2 = (self.pairs2 - m * ((k - y2 - y1) + (k - x0 - x1)) + (n - 2) * m * m) / (n - 2)
        pairs_a = self.pairs1 - y2 * y1  # sum x_t x_t+1 for t <= n-3
        pairs_b = self.pairs1 - x0 * x1  # sum x_t+1 x_t+2 for t <= n-3
        singles = (k - y2 - y1) + (k - x0 - y1) + (k - x0 - x1)
        k3 = (
            self.triples
            - m * (pairs_a + self.pairs2 + pairs_b)
            + m * m * singles
            - (n - 2) * m * m * m
        ) / (n - 2)
        return m, var, c1, c2, k3


class _Moments:
    """``MomentCounts`` fed block by block."""

    __slots__ = ("head", "n", "ones", "pairs1", "pairs2", "tail", "triples")

    def __init__(self) -> None:
        self.n = self.ones = self.pairs1 = self.pairs2 = self.triples = 0
        self.head: list[int] = []
        self.tail = np.zeros(0, dtype=np.bool_)

    def feed(self, block: Bools) -> _Moments:
        if block.size == 0:
            return self
        carried = self.tail.size
        x = np.concatenate((self.tail, block)) if carried else block
        # Only products whose last factor is new: pairs from carried-1, lag 2 from carried-2.
        a = x[max(carried - 1, 0) :]
        b = x[max(carried - 2, 0) :]
        self.pairs1 += int(np.count_nonzero(a[:-1] & a[1:]))
        self.pairs2 += int(np.count_nonzero(b[:-2] & b[2:]))
        self.triples += int(np.count_nonzero(b[:-2] & b[1:-1] & b[2:]))
        self.ones += int(np.count_nonzero(block))
        self.n += block.size
        if len(self.head) < 2:
            self.head += [int(v) for v in block[: 2 - len(self.head)]]
        self.tail = x[-2:].copy()
        return self

    def result(self) -> MomentCounts:
        head = [*self.head, 0, 0][:2]
        tail = [int(v) for v in self.tail]
        tail = [0, 0, *tail][-2:]
        return MomentCounts(
            self.n,
            self.ones,
            self.pairs1,
            self.pairs2,
            self.triples,
            (head[0], head[1]),
            (tail[0], tail[1]),
        )


@dataclass(slots=True)
class Bursts3611:
    """RFC 3611 section 4.7.2 counters: bursts, the chunks and losses inside them, and the
    sum of their durations (from the send times of their first and after-last chunks)."""

    gmin: int
    bursts: int = 0
    burst_chunks: int = 0
    burst_lost: int = 0
    lost: int = 0
    duration_ns: float = 0.0
    first_start: int = -1  # position of the first burst's first chunk (-1: no burst)
    last_end: int = -1  # position of the last burst's last chunk


@dataclass(slots=True)
class LossRuns:
    """Run lengths, Gilbert transitions, moment counts and RFC 3611 counters of a lost mask
    fed in blocks (``feed``), equal to the whole-mask computation.

    ``slot_time`` maps original chunk positions to send times (ns, float) for the RFC 3611
    durations: burst ``[a, b]`` lasts ``slot_time(b + 1) - slot_time(a)``.
    """

    gmin: int
    slot_time: Callable[[I64], F64] | None = None
    n: int = 0
    lost: int = 0
    loss_runs: Counter[int] = field(default_factory=Counter)
    gap_runs: Counter[int] = field(default_factory=Counter)
    first: int = -1  # the first value (-1: none yet)
    last: int = -1
    _run: tuple[bool, int] = (False, 0)  # the open run: value and length
    _moments: _Moments = field(default_factory=_Moments)
    bursts: Bursts3611 = field(init=False)
    # The open RFC 3611 group: first loss (position, original), last loss, losses in it.
    _group: tuple[int, int, int, int, int] | None = None

    def __post_init__(self) -> None:
        self.bursts = Bursts3611(self.gmin)

    def feed(self, lost: Bools, original: I64 | None = None) -> None:
        """The next block of the mask; ``original`` gives each value's chunk index (default:
        consecutive), which only the RFC 3611 durations use."""
        size = lost.size
        if size == 0:
            return
        offset = self.n
        self._runs(lost)
        self._moments.feed(lost)
        positions = np.flatnonzero(lost)
        at = original[positions] if original is not None else positions + offset
        self._rfc3611(positions + offset, at)
        if self.first < 0:
            self.first = int(lost[0])
        self.last = int(lost[-1])
        self.n += size
        self.lost += positions.size

    def finish(self) -> None:
        """Close the open run and RFC 3611 group (call once, after the last block)."""
        value, length = self._run
        if length:
            (self.loss_runs if value else self.gap_runs)[length] += 1
            self._run = (False, 0)
        if self._group is not None:
            self._close_group(*self._group)
            self._group = None

    @property
    def moments(self) -> MomentCounts:
        return self._moments.result()

    def transitions(self) -> tuple[int, int, int, int]:
        """``(received -> lost, from received, lost -> received, from lost)`` between
        consecutive chunks (Gilbert's counts)."""
        if self.n == 0:
            return 0, 0, 0, 0
        loss_runs, gap_runs = self.loss_runs.total(), self.gap_runs.total()
        to_lost = loss_runs - (self.first == 1)
        to_received = gap_runs - (self.first == 0)
        from_received = (self.n - self.lost) - (self.last == 0)
        from_lost = self.lost - (self.last == 1)
        return to_lost, from_received, to_received, from_lost

    def _runs(self, lost: Bools) -> None:
        changes = np.flatnonzero(lost[1:] != lost[:-1]) + 1
        starts = np.concatenate((np.zeros(1, dtype=np.int64), changes))
        lengths = np.diff(np.append(starts, lost.size))
        values = lost[starts]
        value, length = self._run
        if length and bool(values[0]) == value:
            lengths[0] += length
        elif length:
            (self.loss_runs if value else self.gap_runs)[length] += 1
        closed_lengths, closed_values = lengths[:-1], values[:-1]
        for target, mask in ((self.loss_runs, closed_values), (self.gap_runs, ~closed_values)):
            found, counts = np.unique(closed_lengths[mask], return_counts=True)
            target.update(dict(zip(found.tolist(), counts.tolist(), strict=True)))
        self._run = (bool(values[-1]), int(lengths[-1]))

    def _rfc3611(self, positions: I64, original: I64) -> None:
        """Group losses separated by fewer than Gmin received chunks (RFC 3611 4.7.2; its
        Appendix A.2 does the same one packet at a time)."""
        if positions.size == 0:
            return
        gaps = np.diff(positions) - 1
        new = np.empty(positions.size, dtype=np.bool_)
        new[1:] = gaps >= self.gmin
        group = self._group
        new[0] = group is None or int(positions[0]) - group[2] - 1 >= self.gmin
        starts = np.flatnonzero(new)
        ends = np.concatenate((starts[1:] - 1, [positions.size - 1]))
        if not new[0]:  # the open group goes on
            assert group is not None
            through = int(starts[0]) - 1 if starts.size else positions.size - 1
            group = (
                group[0],
                group[1],
                int(positions[through]),
                int(original[through]),
                group[4] + through + 1,
            )
        if starts.size:
            if group is not None:
                self._close_group(*group)
            losses = ends - starts + 1
            closed = slice(0, starts.size - 1)
            self._close_groups(
                positions[starts[closed]],
                original[starts[closed]],
                positions[ends[closed]],
                original[ends[closed]],
                losses[closed],
            )
            s, e = int(starts[-1]), int(ends[-1])
            group = (
                int(positions[s]),
                int(original[s]),
                int(positions[e]),
                int(original[e]),
                int(losses[-1]),
            )
        self._group = group

    def _close_group(self, first: int, first_o: int, last: int, last_o: int, losses: int) -> None:
        one = np.array([first, first_o, last, last_o, losses], dtype=np.int64)
        self._close_groups(*one[:, None])

    def _close_groups(self, first: I64, first_o: I64, last: I64, last_o: I64, losses: I64) -> None:
        burst = losses >= 2  # a lone loss stays in the gap (4.7.2; A.2 counts it there)
        b = self.bursts
        b.lost += int(losses.sum())
        if not burst.any():
            return
        first, first_o, last, last_o = first[burst], first_o[burst], last[burst], last_o[burst]
        b.bursts += int(first.size)
        b.burst_chunks += int((last - first + 1).sum())
        b.burst_lost += int(losses[burst].sum())
        if b.first_start < 0:
            b.first_start = int(first[0])
        b.last_end = int(last[-1])
        if self.slot_time is not None:
            b.duration_ns += float((self.slot_time(last_o + 1) - self.slot_time(first_o)).sum())

    def gap_periods(self) -> int:
        """Maximal runs of chunks outside every burst (after ``finish``)."""
        b = self.bursts
        if self.n == 0:
            return 0
        if b.bursts == 0:
            return 1
        return b.bursts + 1 - (b.first_start == 0) - (b.last_end == self.n - 1)


def iter_lost_blocks(
    received: bytes | bytearray,
    count: int,
    skip: bytes | bytearray = b"",
    limit: int = -1,
    block: int = BLOCK_CHUNKS,
) -> Iterator[tuple[Bools, I64 | None, int]]:
    """Blocks of the lost mask over chunks ``0 .. count-1`` from packed received bits, as
    ``(lost, original indexes or None, first index)``.

    Chunks set in ``skip`` (packed bits: a resumed transfer's chunks already on disk) and
    chunks from ``limit`` on (when ``0 <= limit < count``: an interrupted first pass) are
    left out; a block that left some out carries its chunks' original indexes.
    """
    end = count if not 0 <= limit < count else limit
    bits = np.frombuffer(received, dtype=np.uint8)
    held = np.frombuffer(skip, dtype=np.uint8) if skip else None
    for start in range(0, end, block):
        stop = min(start + block, end)
        lo, hi = start >> 3, (stop + 7) >> 3
        lost = ~np.unpackbits(bits[lo:hi], bitorder="little")[: stop - start].astype(np.bool_)
        if held is None:
            yield lost, None, start
            continue
        had = np.zeros(stop - start, dtype=np.bool_)
        part = np.unpackbits(held[lo:hi], bitorder="little")[: stop - start].astype(np.bool_)
        had[: part.size] = part
        keep = np.flatnonzero(~had)
        yield lost[keep], keep + start, start
