"""A transfer's loss, reordering and delay statistics, kept up to date batch by batch.

``OnlineStats.add`` takes the per-datagram columns of one receive batch (what a trace records:
chunk index, transmission number, send stamp, arrival, pass, flags) and folds them into state
whose size does not grow with the transfer: one bit per chunk (first transmissions seen) and
per transmission number (for duplicates), the open RFC 3550 jitter, a log histogram of the
delays, and time bins that merge as the transfer grows. ``sections`` then gives the report
sections ``analysis.sections.analyse`` computes from a whole trace, with the same keys; a
property test holds the two to the same numbers (exactly where ``analyse`` is exact; within
the stated bounds for the delay percentiles, and by construction for the time series' totals).

Each ``add`` costs a handful of numpy calls per batch, none per datagram; the common batch (an
ascending run of first transmissions under one send stamp) takes the scalar path.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from udpxfer.protocol.ranges import Bitmap
from udpxfer.protocol.reorder import Reordering
from udpxfer.protocol.sketch import RELATIVE_ACCURACY, LogHistogram, TimeBins

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]

# Bits of a trace record's flags (``udpxfer.analysis.trace`` and the receiver use these).
TRACE_RESENT: Final = 1  # the RESENT wire flag, kept as is
TRACE_DUPLICATE: Final = 2  # the chunk was already held when this datagram arrived

JITTER_POLE: Final = 15 / 16  # RFC 3550 6.4.1: J += (|D| - J) / 16
_POWERS: Final = np.power(JITTER_POLE, np.arange(1 << 13, dtype=np.float64))
_SERIES: Final = {
    "datagrams": "sum",  # arrival axis
    "new_bytes": "sum",
    "delay_sum": "sum",  # one-way delay - the first batch's minimum (ns)
    "delay_max": "max",
    "jitter": "last",
    "first": "sum",  # send axis: first transmissions received
    "first_min": "min",  # their lowest chunk index
    "index_sum": "sum",
    "send_sum": "sum",  # their send times (ns on the receiver axis)
}


class OnlineStats:
    """Everything the report's analysis sections need, folded in batch by batch."""

    def __init__(self, chunk_count: int, chunk_size: int, file_size: int, started_ns: int):
        self.chunk_count = chunk_count
        self.chunk_size = chunk_size
        self.file_size = file_size
        self.last_bytes = file_size - (chunk_count - 1) * chunk_size if chunk_count else 0
        self.started_ns = started_ns
        self.first_pass = Bitmap(chunk_count)
        self.order = Reordering(max(8 * chunk_count, 1 << 20))
        self.delays = LogHistogram()
        self.bins = TimeBins(_SERIES)
        self.datagrams = self.duplicates = self.resent = self.first_rows = 0
        self.origin: int | None = None  # one-way delay of reference: the first batch's minimum
        self.delay_min = self.delay_max = 0  # exact, relative to ``origin``
        self.jitter = 0.0  # RFC 3550 J after the last arrival (ns)
        self._last_delay: int | None = None
        # Least-squares fit of send time on chunk index over first transmissions (the pace):
        # sums of i, t, i^2 and i t, for the slope beyond the first and last time bins.
        self.fit = np.zeros(5, dtype=np.float64)  # n, sum i, sum t, sum i^2, sum i t
        # The common batch touches one arrival bin and one send bin: their sums gather here in
        # plain floats and go into the bins when the batch lands in another bin.
        self._arrival: list[float] = [-1, 0, 0, 0, -np.inf, np.nan]  # bin, n, bytes, sum, max, J
        self._send: list[float] = [-1, 0, np.inf, 0, 0]  # bin, n, min index, sum i, sum t
        self._fit = [0.0] * 5

    # -- per batch -----------------------------------------------------------------------

    def add(
        self,
        index: I64,
        tx: I64,
        sent_ns: I64,
        arrival_ns: int | I64,
        pass_no: npt.NDArray[np.integer[Any]],
        flags: npt.NDArray[np.integer[Any]],
        *,
        run: bool = False,
    ) -> None:
        """One batch of datagram records in arrival order (``flags``: ``TRACE_*`` bits).

        ``run=True`` promises an ascending run of new chunks ``index[0]..index[-1]``, first
        transmissions with consecutive transmission numbers above all earlier ones (the
        receiver's fast path), which skips the checks.
        """
        n = int(index.size)
        if n == 0:
            return
        self.datagrams += n
        arrival_same = isinstance(arrival_ns, int)
        arrival_last = arrival_ns if isinstance(arrival_ns, int) else int(arrival_ns[-1])
        s_low, s_high = int(sent_ns.min()), int(sent_ns.max())
        if self.origin is None:
            low = arrival_ns - s_high if arrival_same else int((arrival_ns - sent_ns).min())
            self.origin = int(low)
        t_arrival = arrival_last - self.started_ns
        reach = max(t_arrival, s_high + self.origin - self.started_ns, 0)
        if reach >= self.bins.bins * self.bins.width_ns:
            self.flush_bins()
            self.bins.reach(reach)
        if run:
            first, last = int(index[0]), int(index[-1])
            self.first_rows += n
            self.first_pass.set_range(first, last)
            self.order.add_run(int(tx[0]), int(tx[-1]))
            new_bytes = n * self.chunk_size
            if last == self.chunk_count - 1:
                new_bytes -= self.chunk_size - self.last_bytes
            if s_low == s_high:
                self._first_run(first, last, s_low)
            else:
                self._first_send(index, sent_ns, False, t_arrival)
        else:
            new_bytes = self._general(index, tx, sent_ns, pass_no, flags, t_arrival)
        if arrival_same and s_low == s_high:  # one delay for the whole batch
            self._one_delay(int(arrival_last) - s_low - self.origin, n, new_bytes, t_arrival)
        else:
            delay = np.asarray(arrival_ns - sent_ns, dtype=np.int64) - self.origin
            self._delays(delay, arrival_ns, arrival_same, new_bytes, t_arrival, index, flags)

    def _general(
        self,
        index: I64,
        tx: I64,
        sent_ns: I64,
        pass_no: npt.NDArray[np.integer[Any]],
        flags: npt.NDArray[np.integer[Any]],
        t_arrival: int,
    ) -> int:
        """Any batch: first transmissions, duplicates, reordering. Returns its new bytes."""
        flags = flags.astype(np.uint8, copy=False)
        first = (pass_no == 0) & ((flags & TRACE_RESENT) == 0)
        fresh = (flags & TRACE_DUPLICATE) == 0
        n_first = int(np.count_nonzero(first))
        self.first_rows += n_first
        self.resent += int(np.count_nonzero(flags & TRACE_RESENT))
        n_fresh = int(np.count_nonzero(fresh))
        self.duplicates += index.size - n_fresh
        if n_first:
            rows = index[first]
            bits = np.frombuffer(self.first_pass.bits, dtype=np.uint8)
            np.bitwise_or.at(bits, rows >> 3, np.left_shift(1, rows & 7).astype(np.uint8))
            self._first_send(rows, sent_ns[first], False, t_arrival)
        self.order.add(tx)
        new_bytes = n_fresh * self.chunk_size
        if n_fresh and self.last_bytes != self.chunk_size:
            short = int(np.count_nonzero(index[fresh] == self.chunk_count - 1))
            new_bytes -= short * (self.chunk_size - self.last_bytes)
        return new_bytes

    def _first_run(self, first: int, last: int, sent_ns: int) -> None:
        """``_first_send`` of chunks ``first .. last`` under one send stamp (no numpy)."""
        assert self.origin is not None
        t = sent_ns + self.origin - self.started_ns
        n = last - first + 1
        index_sum = (first + last) * n / 2
        square_sum = (
            last * (last + 1) * (2 * last + 1) - (first - 1) * first * (2 * first - 1)
        ) / 6
        fit = self._fit
        fit[0] += n
        fit[1] += index_sum
        fit[2] += t * n
        fit[3] += square_sum
        fit[4] += t * index_sum
        at = self.bins.slot(t)
        send = self._send
        if at != send[0]:
            self._flush_send()
            send[0] = at
        send[1] += n
        send[2] = min(send[2], first)
        send[3] += index_sum
        send[4] += float(t) * n

    def _first_send(self, rows: I64, sent_ns: I64, one_stamp: bool, t_arrival: int) -> None:
        """First transmissions on the send-time axis (the sender's clock moved onto ours by
        the first batch's smallest delay)."""
        assert self.origin is not None
        self._flush_send()  # written straight into the bins below
        shift = self.origin - self.started_ns
        bins = self.bins
        if one_stamp:
            t = int(sent_ns[0]) + shift
            i = rows.astype(np.float64)
            index_sum = float(i.sum())
            self.fit += (rows.size, index_sum, t * rows.size, float(np.dot(i, i)), t * index_sum)
            at = bins.slot(t)
            bins.update_one("first", at, rows.size)
            bins.update_one("first_min", at, int(rows[0]))
            bins.update_one("index_sum", at, index_sum)
            bins.update_one("send_sum", at, float(t) * rows.size)
            return
        times = sent_ns + shift
        slots = bins.index(times)
        i, f = rows.astype(np.float64), times.astype(np.float64)
        self.fit += (rows.size, i.sum(), f.sum(), np.dot(i, i), np.dot(i, f))
        bins.update("first", slots, 1.0)
        bins.update("first_min", slots, i)
        bins.update("index_sum", slots, i)
        bins.update("send_sum", slots, f)

    def _one_delay(self, delay: int, n: int, new_bytes: int, t_arrival: int) -> None:
        """A batch that arrived at once under one send stamp: every row has this delay."""
        self.delays.add_same(delay, n)
        self.delay_min = min(self.delay_min, delay)
        self.delay_max = max(self.delay_max, delay)
        if self._last_delay is not None:
            # RFC 3550 A.8 over consecutive arrivals: |D| is |delay change| once, then 0.
            change = abs(delay - self._last_delay)
            self.jitter = float(_POWERS[n] if n < _POWERS.size else JITTER_POLE**n) * self.jitter
            self.jitter += (1 - JITTER_POLE) * float(JITTER_POLE ** (n - 1)) * change
        elif n > 1:
            self.jitter *= JITTER_POLE ** (n - 1)
        self._last_delay = delay
        at = self.bins.slot(t_arrival)
        pending = self._arrival
        if at != pending[0]:
            self._flush_arrival()
            pending[0] = at
        pending[1] += n
        pending[2] += new_bytes
        pending[3] += float(delay) * n
        pending[4] = max(pending[4], delay)
        pending[5] = self.jitter

    def _delays(
        self,
        delay: I64,
        arrival_ns: int | I64,
        arrival_same: bool,
        new_bytes: int,
        t_arrival: int,
        index: I64,
        flags: npt.NDArray[np.integer[Any]],
    ) -> None:
        """Delays that differ within the batch: the histogram, RFC 3550 jitter and bins."""
        self._flush_arrival()  # written straight into the bins below (the jitter: in order)
        self.delays.add(delay)
        self.delay_min = min(self.delay_min, int(delay.min()))
        self.delay_max = max(self.delay_max, int(delay.max()))
        prior = self._last_delay
        steps = np.abs(np.diff(delay if prior is None else np.concatenate(([prior], delay))))
        self._last_delay = int(delay[-1])
        b = self.bins
        if arrival_same:
            self.jitter = _jitter_after(self.jitter, steps.astype(np.float64))
            at = b.slot(t_arrival)
            b.update_one("datagrams", at, delay.size)
            b.update_one("new_bytes", at, new_bytes)
            b.update_one("delay_sum", at, float(delay.sum()))
            b.update_one("delay_max", at, float(delay.max()))
            b.update_one("jitter", at, self.jitter)
            return
        assert not isinstance(arrival_ns, int)
        slots = b.index(arrival_ns - self.started_ns)
        fresh = (flags & TRACE_DUPLICATE) == 0
        size = np.where(index == self.chunk_count - 1, self.last_bytes, self.chunk_size)
        b.update("datagrams", slots, 1.0)
        b.update("new_bytes", slots, np.where(fresh, size, 0).astype(np.float64))
        b.update("delay_sum", slots, delay.astype(np.float64))
        b.update("delay_max", slots, delay.astype(np.float64))
        # Jitter at the last arrival of each bin: one vectorised sum per bin touched.
        if prior is None:
            steps = np.concatenate(([0], steps))
        ends = [*np.flatnonzero(np.diff(slots)).tolist(), slots.size - 1]
        start = 0
        for end in ends:
            self.jitter = _jitter_after(self.jitter, steps[start : end + 1].astype(np.float64))
            b.update_one("jitter", int(slots[end]), self.jitter)
            start = end + 1

    def _flush_arrival(self) -> None:
        at, n, new_bytes, delay_sum, delay_max, jitter = self._arrival
        if at >= 0:
            b, slot = self.bins, int(at)
            b.update_one("datagrams", slot, n)
            b.update_one("new_bytes", slot, new_bytes)
            b.update_one("delay_sum", slot, delay_sum)
            b.update_one("delay_max", slot, delay_max)
            b.update_one("jitter", slot, jitter)
        self._arrival[:] = [-1, 0, 0, 0, -np.inf, np.nan]

    def _flush_send(self) -> None:
        at, n, first_min, index_sum, send_sum = self._send
        if at >= 0:
            b, slot = self.bins, int(at)
            b.update_one("first", slot, n)
            b.update_one("first_min", slot, first_min)
            b.update_one("index_sum", slot, index_sum)
            b.update_one("send_sum", slot, send_sum)
        self._send[:] = [-1, 0, np.inf, 0, 0]

    def flush_bins(self) -> None:
        """Put the gathered sums into the bins (before they merge, or are read)."""
        self._flush_arrival()
        self._flush_send()
        self.fit += self._fit
        self._fit = [0.0] * 5


def _jitter_after(jitter: float, steps: F64) -> float:
    """RFC 3550 J after the |D| values ``steps``: J_n = a^n J + (1 - a) sum a^(n-1-k) |D_k|."""
    n = steps.size
    if n == 0:
        return jitter
    weights = (
        _POWERS[n - 1 :: -1] if n <= _POWERS.size else np.power(JITTER_POLE, np.arange(n)[::-1])
    )
    return float(JITTER_POLE**n * jitter + (1 - JITTER_POLE) * float(np.dot(weights, steps)))


def delay_quantiles(stats: OnlineStats) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """RFC 5481 PDV percentiles (ms) from the log histogram, and each one's error bound (ms).

    PDV = D - min D; the histogram holds D - origin and min D - origin is exact, so each
    percentile's error is the histogram's: ``RELATIVE_ACCURACY`` times |D - origin| there.
    """
    keys = ("p50", "p95", "p99")
    values: dict[str, float | None] = dict.fromkeys((*keys, "max"))
    errors: dict[str, float | None] = dict.fromkeys(keys)
    estimates = stats.delays.quantiles([0.50, 0.95, 0.99])
    if not estimates:
        return values, errors
    floor = stats.delay_min
    for key, (estimate, bound) in zip(keys, estimates, strict=True):
        values[key] = max(estimate - floor, 0.0) / 1e6
        errors[key] = bound / 1e6
    values["max"] = (stats.delay_max - floor) / 1e6
    return values, errors


PDV_METHOD: Final = (
    f"log histogram (DDSketch buckets), each percentile within {RELATIVE_ACCURACY:.1%} of the "
    "delay above the first batch's minimum; max exact"
)
