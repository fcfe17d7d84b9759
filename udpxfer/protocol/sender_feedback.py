"""What the receiver tells the sender: STATUS, NACK, DONE and ABORT, and what they change."""

from __future__ import annotations

from udpxfer.errors import UsageError
from udpxfer.protocol.bodies import MAX_RANGES
from udpxfer.protocol.events import Outcome, RepairRequested
from udpxfer.protocol.ranges import clamp_ranges
from udpxfer.protocol.sender_core import SenderCore
from udpxfer.protocol.sender_state import SenderState
from udpxfer.protocol.wire import (
    MANIFEST_HASHES,
    Abort,
    AbortCode,
    Done,
    Mode,
    Nack,
    RangeKind,
    Status,
    Verdict,
)

_REFUSALS = (AbortCode.BUSY, AbortCode.REFUSED)


class SenderFeedback(SenderCore):
    """The feedback part of a sender session: flow control, congestion samples, repairs
    and the verdict."""

    def _on_status(self, packet: Status, now: float, queued_s: float) -> None:
        self._on_feedback(now, packet.echo_ns)
        self._acked_held = max(self._acked_held, min(packet.held, self.chunk_count))
        highest_tx = min(packet.highest_tx, self._tx - 1)  # never beyond what we sent
        if highest_tx > self._highest_acked:
            self._highest_acked = highest_tx
        if packet.received >= self._reported_received:  # not an older, reordered STATUS
            self._reported_received = packet.received
            self._reported_highest = max(self._reported_highest, highest_tx)
        self._advertised = max(1, min(packet.window, self.config.max_window))
        if (congestion := self._congestion) is not None:
            rtt: float | None = None
            if packet.echo_ns:
                # Queueing in the receiver's own socket is flow control's business
                # (its advertised window), not the network's: leave it out.
                left = self._left_at.pop(packet.echo_ns, packet.echo_ns / 1e9)
                rtt = now - left - packet.queued_ns / 1e9 - queued_s
            congestion.on_status(
                packet.echo_ns,
                highest_tx=highest_tx,
                received=packet.received,
                tx_sent=self._tx - 1,
                rtt_s=rtt,
                now=now,
            )
            self._window = congestion.limit(self._advertised)
            self._pacer.set_rate(congestion.pacing_rate_bps, now)
        else:
            self._window = self._advertised
        self._probe_at = None

    def _on_feedback(self, now: float, echo_ns: int) -> None:
        self._last_heard = now
        self._feedback = True
        if echo_ns:
            self._rtt.sample(now - echo_ns / 1e9)

    def _on_nack(self, nack: Nack, now: float) -> None:
        if self.mode is Mode.BLAST or nack.round != self._round:
            return  # stale: a later END will be answered with a fresh NACK
        if self._state is not SenderState.WAITING and self._state is not SenderState.REPAIRING:
            return
        if nack.kind is RangeKind.BLOCKS:
            # Merged per round, as chunk ranges are: each block's hash goes out at most once
            # a round, however many NACKs ask for it.
            asked = self._manifest_asked
            for first, last in clamp_ranges(nack.ranges, self._block_count, limit=MAX_RANGES):
                asked.add(first, last)
            if not self._manifest:
                self.manifest_wanted = bool(asked)  # sent once the driver provides it
                return
            self._send_asked_blocks(now)
            return
        added = 0
        # Clamped to the file, merged with what is queued or was resent this round: however
        # large or repeated the ranges, the work is bounded by the file's own chunk count.
        for first, last in clamp_ranges(nack.ranges, self.chunk_count, limit=MAX_RANGES):
            added += self._repair.add(first, last)
        if added:
            if self._state is SenderState.WAITING and self._move(SenderState.REPAIRING):
                self._repair_rounds += 1
                self._end_at = None
            self._events.append(RepairRequested(nack.round, added))

    def _send_asked_blocks(self, now: float) -> None:
        asked = self._manifest_asked
        while asked:
            first = last = asked.pop()
            while asked and asked.peek() == last + 1 and last - first + 1 < MANIFEST_HASHES:
                last = asked.pop()
            self._send_manifest(first, last, now)

    def provide_manifest(self, manifest: tuple[bytes, ...], now: float) -> None:
        """The block hashes a receiver asked for (``manifest_wanted``), computed by the
        driver: the asked blocks go out now, any later ask is answered at once.

        Raises:
            UsageError: not one SHA-256 per block.
        """
        if len(manifest) != self._block_count:
            raise UsageError("the manifest must hold one SHA-256 per block")
        self._manifest = manifest
        self.manifest_wanted = False
        if self._state is SenderState.WAITING or self._state is SenderState.REPAIRING:
            self._send_asked_blocks(now)

    def _on_done(self, done: Done, now: float) -> None:
        self._verdict = done.verdict
        self._acked_held = done.held
        if self.mode is Mode.BLAST:
            if self._next_index >= self.chunk_count:
                for _ in range(2):
                    self._pending.append(self._abort(AbortCode.CLOSED, "verdict received", now))
                outcome = (
                    Outcome.COMPLETE if done.verdict is Verdict.VERIFIED else Outcome.INCOMPLETE
                )
                self._finish(now, outcome, "")
            return
        # Two copies of CLOSED: the receiver may stop lingering for a repeated END.
        for _ in range(2):
            self._pending.append(self._abort(AbortCode.CLOSED, "verdict received", now))
        if done.verdict is Verdict.VERIFIED:
            self._finish(now, Outcome.COMPLETE, "")
        elif done.verdict is Verdict.MISMATCH:
            self._finish(
                now, Outcome.MISMATCH, "the receiver's SHA-256 does not match the file", fail=True
            )
        else:
            self._finish(
                now, Outcome.INCOMPLETE, "the receiver gave up with chunks missing", fail=True
            )

    def _on_abort(self, packet: Abort, now: float) -> None:
        self._last_heard = now
        if packet.code is AbortCode.BUSY:
            reason = packet.reason or "receiver busy"
        else:
            reason = f"receiver aborted: {packet.reason}"
        outcome = Outcome.REFUSED if packet.code in _REFUSALS else Outcome.ABORTED
        self._finish(now, outcome, reason, fail=True)
