"""A receiver session's data path: DATA rows one at a time or a receive's batch at once.

``on_data`` takes one row, ``on_data_batch`` a decoded receive (the same rules, vectorised);
both update the chunk maps, the counters, the trace rows and the online statistics.
"""

from __future__ import annotations

import numpy as np

from udpxfer.protocol.batch import DataBatch
from udpxfer.protocol.events import ChunkReceived
from udpxfer.protocol.online import TRACE_DUPLICATE, OnlineStats
from udpxfer.protocol.receiver_core import I64, U8, ReceiverCore
from udpxfer.protocol.receiver_state import ReceiverState
from udpxfer.protocol.wire import Flags

_RESENT = int(Flags.RESENT)
_ACK_REQUESTED = int(Flags.ACK_REQUESTED)
_ARANGE = np.arange(1 << 12, dtype=np.int64)  # row positions of a batch (at most 64 rows)
# A DATA stamp further than this from the transfer's META stamp is no clock of that sender.
MAX_STAMP_SPREAD_NS = 7 * 86400 * 10**9
_STAGED_ROWS = 256  # rows of the one-at-a-time path folded into the statistics at once


class ReceiverDataPath(ReceiverCore):
    """DATA of one incoming transfer: which chunks are new, held, duplicate or out of order."""

    def on_data(
        self,
        index: int,
        tx: int,
        payload: bytes | memoryview,
        pass_no: int,
        flags: int,
        sent_ns: int,
        now: float,
        queued_s: float = 0.0,
    ) -> bool:
        """One DATA datagram of this session (the endpoint's fast path calls this directly).

        Returns False when the chunk has no place in this file.
        """
        count = self._chunk_count
        if (
            index >= count
            or len(payload) != (self._chunk_size if index < count - 1 else self._last_len)
            or abs(sent_ns - self._stamp_origin) > MAX_STAMP_SPREAD_NS
        ):
            return False
        self.last_heard = now
        self.data_received += 1
        self.bytes_in_round += len(payload)
        held = self.held
        duplicate = held[index]
        if self.online is not None or self.trace is not None:
            mark = (flags & _RESENT) | (TRACE_DUPLICATE if duplicate else 0)
            arrival_ns = int(now * 1e9)
            if self.trace is not None:
                self.trace.append(index, tx, sent_ns, arrival_ns, pass_no, mark)
            if self.online is not None:
                self._staged.append(index, tx, sent_ns, arrival_ns, pass_no, mark)
                if len(self._staged) >= _STAGED_ROWS:
                    self.flush_online()
        if tx > self._highest_tx:
            self._highest_tx = tx
        elif not duplicate:
            self.out_of_order += 1
        if flags & _RESENT:
            self.retransmitted += 1
        else:
            self.first_pass.set(index)
            if index >= self.sent_upto:
                self.sent_upto = index + 1
        if duplicate:
            self.duplicates += 1
        elif self.state is ReceiverState.RECEIVING:
            held.set(index)
            self.held_count += 1
            self.last_data_at = now
            self._events.emit(self, ChunkReceived(index, index * self._chunk_size, payload))
            if index == self.contiguous:
                contiguous = index + 1
                while contiguous < count and held[contiguous]:
                    contiguous += 1
                self.contiguous = contiguous
            if self.held_count == count:
                self._all_held()
        if flags & _ACK_REQUESTED:
            self._send_status(sent_ns, now, queued_s)
        return True

    def on_data_batch(self, batch: DataBatch, now: float, queued_s: float = 0.0) -> I64:
        """DATA rows of this session from one receive buffer, at once (``on_data`` per row,
        vectorised; a property test holds the two to the same state).

        Returns the positions (into ``batch``) of the new chunks to store, in buffer order;
        how many rows had no place in this file is left in ``rejected_rows``.
        """
        n = len(batch)
        index = batch.index
        first, last = int(index[0]), int(index[-1])
        stamps = batch.sent_ns
        if self._staged.index:
            self.flush_online()  # rows that came one at a time go first: arrival order
        if (
            last - first == n - 1
            and self.state is ReceiverState.RECEIVING
            and last < self._chunk_count
            and self._sizes_fit(batch, last)
            and abs(int(stamps.min()) - self._stamp_origin) <= MAX_STAMP_SPREAD_NS
            and abs(int(stamps.max()) - self._stamp_origin) <= MAX_STAMP_SPREAD_NS
            and np.array_equal(index, _ARANGE[:n] + first)
            and not self.held.any_in_range(first, last)
        ):
            return self._new_run(batch, first, last, now, queued_s)
        return self._rows(batch, now, queued_s)

    def flush_online(self) -> None:
        """Fold the rows that came one at a time into the statistics."""
        if self.online is not None and self._staged.index:
            rows = self._staged.drain()
            self.online.add(
                rows["index"],
                rows["tx"],
                rows["sent_ns"],
                rows["arrival_ns"],
                rows["pass_no"],
                rows["flags"],
            )

    def online_stats(self) -> OnlineStats | None:
        """The online statistics with every row folded in (None: ``record_trace`` is off)."""
        self.flush_online()
        return self.online

    def _sizes_fit(self, batch: DataBatch, last: int) -> bool:
        """Every row of an ascending run ending at chunk ``last`` has its chunk's length
        (a batch's rows all have one length but its last row, which may be shorter)."""
        sizes = batch.payload_bytes
        final = self._last_len if last == self._chunk_count - 1 else self._chunk_size
        return int(sizes[-1]) == final and (sizes.size == 1 or int(sizes[0]) == self._chunk_size)

    def _new_run(self, batch: DataBatch, first: int, last: int, now: float, queued_s: float) -> I64:
        """The common case: chunks ``first .. last`` in order, none held yet."""
        n = last - first + 1
        tx, flags = batch.tx, batch.flags
        self.rejected_rows = 0
        self.last_heard = self.last_data_at = now
        self.data_received += n
        self.bytes_in_round += int(batch.payload_bytes.sum())
        resent_flags = flags & _RESENT
        arrival_ns = int(now * 1e9)
        if self.trace is not None:
            self.trace.extend(
                batch.index, tx, batch.sent_ns, arrival_ns, batch.pass_no, resent_flags
            )
        tx_first = int(tx[0])
        in_order = tx_first > self._highest_tx and np.array_equal(tx, _ARANGE[:n] + tx_first)
        if not in_order:
            before = np.maximum.accumulate(np.concatenate(([self._highest_tx], tx[:-1])))
            self.out_of_order += int(np.count_nonzero(tx <= before))
        self._highest_tx = max(self._highest_tx, int(tx.max()))
        resent = int(np.count_nonzero(resent_flags))
        if self.online is not None:
            # An ascending run of first transmissions in order: the statistics' scalar path.
            run = in_order and resent == 0 and not batch.pass_no.any()
            self.online.add(
                batch.index, tx, batch.sent_ns, arrival_ns, batch.pass_no, resent_flags, run=run
            )
        self.retransmitted += resent
        if resent == 0:
            self.first_pass.set_range(first, last)
            self.sent_upto = max(self.sent_upto, last + 1)
        elif resent < n:
            self._first_pass_rows(batch.index[resent_flags == 0])
        self.held.set_range(first, last)
        self.held_count += n
        if first <= self.contiguous <= last:
            self.contiguous = self.held.first_clear(self.contiguous)
        if self.held_count == self._chunk_count:
            self._all_held()
        self._ack_rows(batch, flags, now, queued_s)
        return _ARANGE[:n]

    def _rows(self, batch: DataBatch, now: float, queued_s: float) -> I64:
        """Any mix of rows (reordered, repeated, out of range): ``on_data``'s rules, at once."""
        count = self._chunk_count
        index, sent_ns = batch.index, batch.sent_ns
        expected = np.where(index < count - 1, self._chunk_size, self._last_len)
        valid = (
            (index < count)
            & (batch.payload_bytes == expected)
            & (np.abs(sent_ns - self._stamp_origin) <= MAX_STAMP_SPREAD_NS)
        )
        kept = np.flatnonzero(valid)
        self.rejected_rows = len(batch) - kept.size
        if kept.size == 0:
            return kept
        if kept.size != len(batch):
            batch = batch.take(valid)
            index, sent_ns = batch.index, batch.sent_ns
        tx, flags = batch.tx, batch.flags
        n = kept.size
        self.last_heard = now
        self.data_received += n
        self.bytes_in_round += int(batch.payload_bytes.sum())
        bits = np.frombuffer(self.held.bits, dtype=np.uint8)
        masks = np.left_shift(1, index & 7).astype(np.uint8)
        bytes_at = index >> 3
        duplicate = (bits[bytes_at] & masks) != 0
        receiving = self.state is ReceiverState.RECEIVING
        if receiving:
            # A chunk twice in one buffer: its second copy is a duplicate too.
            _, once = np.unique(index, return_index=True)
            repeated = np.ones(n, dtype=bool)
            repeated[once] = False
            duplicate |= repeated
        resent = (flags & _RESENT) != 0
        if self.trace is not None or self.online is not None:
            marks = np.where(duplicate, TRACE_DUPLICATE, 0).astype(np.uint8)
            trace_flags = (flags & _RESENT) | marks
            arrival_ns = int(now * 1e9)
            if self.trace is not None:
                self.trace.extend(index, tx, sent_ns, arrival_ns, batch.pass_no, trace_flags)
            if self.online is not None:
                self.online.add(index, tx, sent_ns, arrival_ns, batch.pass_no, trace_flags)
        # Out of order: a new chunk whose transmission number is not above every earlier one.
        before = np.maximum.accumulate(np.concatenate(([self._highest_tx], tx[:-1])))
        self.out_of_order += int(np.count_nonzero((tx <= before) & ~duplicate))
        self._highest_tx = max(self._highest_tx, int(tx.max()))
        n_resent = int(np.count_nonzero(resent))
        self.retransmitted += n_resent
        if n_resent != n:
            self._first_pass_rows(index[~resent])
        self.duplicates += int(np.count_nonzero(duplicate))
        new = kept[~duplicate] if receiving else kept[:0]
        if new.size:
            np.bitwise_or.at(bits, bytes_at[~duplicate], masks[~duplicate])
            self.held_count += new.size
            self.last_data_at = now
            if self.contiguous in index[~duplicate]:
                self.contiguous = self.held.first_clear(self.contiguous)
            if self.held_count == count:
                self._all_held()
        self._ack_rows(batch, flags, now, queued_s)
        return new

    def _first_pass_rows(self, fresh: I64) -> None:
        """First transmissions of these chunks arrived."""
        first_bits = np.frombuffer(self.first_pass.bits, dtype=np.uint8)
        np.bitwise_or.at(first_bits, fresh >> 3, np.left_shift(1, fresh & 7).astype(np.uint8))
        self.sent_upto = max(self.sent_upto, int(fresh.max()) + 1)

    def _ack_rows(self, batch: DataBatch, flags: U8, now: float, queued_s: float) -> None:
        """Answer the last row that asked for feedback (one STATUS a flush is enough)."""
        acks = np.flatnonzero(flags & _ACK_REQUESTED)
        if acks.size:
            self._send_status(int(batch.sent_ns[acks[-1]]), now, queued_s)
