"""Impairment policy: what a lossy, slow, reordering link does to each datagram (sans-IO).

An ``ImpairmentPolicy`` stands for one direction of an emulated link. Datagrams and the time
they arrived go in (``on_datagram(data, now, dest)``); the datagrams to send now come out
(``due(now)``), with ``next_deadline()`` saying when to ask again. There are no sockets, clocks
or files here: time is an argument and randomness comes from a seeded ``random.Random``, so
every decision is reproducible and testable with a fake clock. ``udpxfer.lab.relay`` is the thin
socket loop around two policies.

A datagram goes through: loss and Gilbert-Elliott, the bottleneck queue, corruption, delay and
jitter, the reorder hold, and duplication on the way out. Each model draws from its own random
stream, once for every datagram that arrives (dropped or not), so switching one model on or off
does not change the decisions of the others: the same seed and the same datagrams give the same
loss pattern with or without delay.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from typing import Any, Generic, TypeVar

from udpxfer.lab.impair.models import (
    Direction,
    GilbertElliott,
    Impairment,
    JitterDistribution,
)
from udpxfer.lab.impair.records import Datagram, DirectionStats, DropCause, Record, classify

Dest = TypeVar("Dest")  # where a datagram goes: opaque to the policy, handed back by due()


def direction_rng(seed: int, direction: Direction) -> random.Random:
    """The random stream of one direction: independent of the other, fixed by ``seed``.

    Seeding with a string hashes it with SHA-512 (``random.seed`` version 2), so the stream does
    not depend on ``PYTHONHASHSEED`` or the platform.
    """
    return random.Random(f"udpxfer.impair/{seed}/{direction.value}")


def flip_bit(data: Datagram, bit: int) -> bytes:
    """A copy of ``data`` with bit ``bit`` (byte ``bit // 8``, LSB first) inverted."""
    out = bytearray(data)
    out[bit >> 3] ^= 1 << (bit & 7)
    return bytes(out)


# A datagram waiting in the delay line: (release time, arrival order, data, dest, extra copy,
# arrival time, record). Tuples, not objects: this is the per-datagram hot path.
_Entry = tuple[float, int, Datagram, Dest, Datagram | None, float, Record | None]


class _Held(Generic[Dest]):
    """A datagram picked for reordering, waiting for ``remaining`` later datagrams to go."""

    __slots__ = ("deadline", "entry", "remaining")

    def __init__(self, entry: _Entry[Dest], remaining: int, deadline: float) -> None:
        self.entry = entry
        self.remaining = remaining
        self.deadline = deadline


def _deadline(held: _Held[Any]) -> float:
    return held.deadline


class ImpairmentPolicy(Generic[Dest]):
    """One direction of the emulated link: decides the fate and release time of each datagram.

    Args:
        config: what to do to the datagrams.
        rng: the source of every random decision (see ``direction_rng``); the policy derives
            one independent stream per model from it.
        direction: only used to label stats and records.
        record: keep a ``Record`` per datagram for ``take_records()`` (costs some speed).
    """

    def __init__(
        self,
        config: Impairment,
        rng: random.Random,
        *,
        direction: Direction = Direction.FORWARD,
        record: bool = False,
    ) -> None:
        self.config = config
        self.direction = direction
        self.stats = DirectionStats(direction)
        self._record = record
        # One stream per model, always derived in this order, so that a model's decisions
        # depend only on the seed and the datagrams (not on which other models are on).
        streams = [random.Random(rng.getrandbits(128)) for _ in range(6)]
        self._loss_rng, self._ge_rng, self._delay_rng = streams[:3]
        self._reorder_rng, self._dup_rng, self._corrupt_rng = streams[3:]
        self._ge_bad = False
        self._passthrough = config.is_identity
        self._timed = config.needs_timing
        self._seq = 0
        self._order = 0
        self._ready: list[tuple[Datagram, Dest]] = []
        self._line: list[_Entry[Dest]] = []  # heap by release time
        self._held: list[_Held[Dest]] = []
        self._last_release = -math.inf  # keeps order unless jitter may reorder
        self._link: deque[tuple[float, int]] = deque()  # bottleneck: (start, size) not started
        self._link_bytes = 0
        self._link_free = -math.inf  # when the bottleneck finishes its current datagram
        self._records: list[Record] = []

    @property
    def holds_data(self) -> bool:
        """True when ``on_datagram`` may keep ``data`` past the call: pass immutable bytes.

        When False, everything handed in comes out of the next ``due()`` call, so a caller may
        pass a view of a reused buffer if it sends before reusing it.
        """
        return self._timed

    @property
    def passthrough(self) -> bool:
        """True when datagrams go through untouched, at once and unrecorded.

        A caller may then send them on itself and report them with ``count_passthrough``,
        saving two calls per datagram on the relay's fastest path.
        """
        return self._passthrough and not self._record

    def count_passthrough(self, datagrams: int, n_bytes: int) -> None:
        """Count datagrams a caller sent on itself while ``passthrough`` holds."""
        self._seq += datagrams
        stats = self.stats
        stats.datagrams_in += datagrams
        stats.bytes_in += n_bytes
        stats.delivered += datagrams

    @property
    def pending(self) -> int:
        """Datagrams accepted and not yet released."""
        return len(self._ready) + len(self._line) + len(self._held)

    def on_datagram(self, data: Datagram, now: float, dest: Dest) -> None:
        """Take one datagram that arrived at ``now``, bound for ``dest``."""
        seq = self._seq
        self._seq = seq + 1
        stats = self.stats
        size = len(data)
        stats.datagrams_in += 1
        stats.bytes_in += size
        if self._passthrough:
            stats.delivered += 1
            self._ready.append((data, dest))
            if self._record:
                passed = Record(self.direction, seq, now, size, *classify(data))
                passed.delay_s = 0.0
                self._records.append(passed)
            return
        cfg = self.config
        # Draw every enabled model's decision for every datagram (see the module docstring).
        cause: DropCause | None = None
        if cfg.loss and self._loss_rng.random() < cfg.loss:
            cause = DropCause.LOSS
        if cfg.gilbert is not None and self._gilbert_loses(cfg.gilbert) and cause is None:
            cause = DropCause.GILBERT
        duplicated = bool(cfg.duplicate) and self._dup_rng.random() < cfg.duplicate
        corrupt_bit: int | None = None
        if cfg.corrupt and self._corrupt_rng.random() < cfg.corrupt and size:
            corrupt_bit = self._corrupt_rng.randrange(size * 8)
        reordered = bool(cfg.reorder) and self._reorder_rng.random() < cfg.reorder
        extra_delay = self._delay_sample() if cfg.delay_s or cfg.jitter_s else 0.0
        release = now
        if cause is None and cfg.rate_bps:
            departure = self._bottleneck(size, now)
            if departure is None:
                cause = DropCause.QUEUE
            else:
                release = departure
        record = Record(self.direction, seq, now, size, *classify(data)) if self._record else None
        if cause is not None:
            stats.count_drop(cause)
            if record is not None:
                record.delivered = False
                record.cause = cause
                self._records.append(record)
            return
        copy: Datagram | None = data if duplicated else None
        if corrupt_bit is not None:
            data = flip_bit(data, corrupt_bit)
            stats.corrupted += 1
            if record is not None:
                record.corrupted = True
                record.corrupt_bit = corrupt_bit
        if not self._timed:
            self._emit((now, 0, data, dest, copy, now, record))
            return
        release += extra_delay
        if not cfg.jitter_reorder and release < self._last_release:
            release = self._last_release
        self._last_release = max(self._last_release, release)
        self._order += 1
        entry = (release, self._order, data, dest, copy, now, record)
        if reordered:
            stats.reordered += 1
            if record is not None:
                record.reordered = True
            self._held.append(_Held(entry, cfg.reorder_gap, release + cfg.reorder_hold_s))
        else:
            heapq.heappush(self._line, entry)

    def due(self, now: float) -> list[tuple[Datagram, Dest]]:
        """The datagrams to send at ``now``, in release order, with their destinations."""
        line, held = self._line, self._held
        # Merge the delay line and the held datagrams in time order, so a held datagram goes
        # out right after its last follower even when one call releases a long batch.
        while line or held:
            t_line = line[0][0] if line else math.inf
            first_held = min(held, key=_deadline) if held else None
            t_held = math.inf if first_held is None else first_held.deadline
            if min(t_line, t_held) > now:
                break
            if first_held is not None and t_held <= t_line:
                held.remove(first_held)
                self._emit(first_held.entry, t_held)
                continue
            entry = heapq.heappop(line)
            self._emit(entry)
            for waiting in held:
                if entry[1] < waiting.entry[1]:
                    continue  # arrived before the held one: it does not overtake it
                waiting.remaining -= 1
                if waiting.remaining == 0:
                    # Due now, unless its own (jittered) release time is still ahead.
                    waiting.deadline = min(waiting.deadline, max(waiting.entry[0], entry[0]))
        ready, self._ready = self._ready, []
        return ready

    def next_deadline(self) -> float | None:
        """When ``due()`` will next have something to send (``-inf``: now), or None."""
        if self._ready:
            return -math.inf
        times = [held.deadline for held in self._held]
        if self._line:
            times.append(self._line[0][0])
        return min(times) if times else None

    def take_records(self) -> list[Record]:
        """The records of datagrams whose fate is settled since the last call."""
        records, self._records = self._records, []
        return records

    def discard_pending(self) -> int:
        """Drop everything still held (the relay is stopping); returns how many."""
        entries = [entry for entry in self._line] + [held.entry for held in self._held]
        self._line.clear()
        self._held.clear()
        for entry in entries:
            self.stats.count_drop(DropCause.SHUTDOWN)
            record = entry[6]
            if record is not None:
                record.delivered = False
                record.cause = DropCause.SHUTDOWN
                self._records.append(record)
        return len(entries)

    def _gilbert_loses(self, ge: GilbertElliott) -> bool:
        # As netem's loss_gilb_ell(): the state the datagram meets decides its loss
        # probability, then the chain takes one step.
        rng = self._ge_rng
        if self._ge_bad:
            loss = ge.loss_bad
            if rng.random() < ge.r:
                self._ge_bad = False
        else:
            loss = ge.loss_good
            if rng.random() < ge.p:
                self._ge_bad = True
        if loss >= 1.0:
            return True
        return loss > 0.0 and rng.random() < loss

    def _delay_sample(self) -> float:
        cfg = self.config
        jitter = cfg.jitter_s
        if not jitter:
            return cfg.delay_s
        if cfg.jitter_distribution is JitterDistribution.NORMAL:
            sample = self._delay_rng.gauss(cfg.delay_s, jitter)
        else:
            sample = self._delay_rng.uniform(cfg.delay_s - jitter, cfg.delay_s + jitter)
        # A datagram cannot leave before it arrived: clamp (this lifts the mean a little when
        # jitter is large next to the delay).
        return max(sample, 0.0)

    def _bottleneck(self, size: int, now: float) -> float | None:
        """The time ``size`` bytes finish crossing the bottleneck, or None for a tail drop."""
        cfg = self.config
        link = self._link
        while link and link[0][0] <= now:  # began transmission: no longer queued
            self._link_bytes -= link.popleft()[1]
        limit = cfg.queue_limit
        if limit and (
            self._link_bytes + size > limit if cfg.queue_in_bytes else len(link) >= limit
        ):
            return None
        start = max(now, self._link_free)
        self._link_free = start + size * 8 / cfg.rate_bps
        link.append((start, size))
        self._link_bytes += size
        return self._link_free

    def _emit(self, entry: _Entry[Dest], at: float | None = None) -> None:
        release, _, data, dest, copy, arrival, record = entry
        if at is not None and at > release:
            release = at
        ready = self._ready
        ready.append((data, dest))
        stats = self.stats
        stats.delivered += 1
        delay = release - arrival
        stats.delay_sum_s += delay
        if copy is not None:
            ready.append((copy, dest))
            stats.duplicated += 1
        if record is not None:
            record.delay_s = delay
            record.duplicated = copy is not None
            self._records.append(record)
