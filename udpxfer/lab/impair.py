"""Impairment policy: what a lossy, slow, reordering link does to each datagram (sans-IO).

An ``ImpairmentPolicy`` stands for one direction of an emulated link. Datagrams and the time
they arrived go in (``on_datagram(data, now, dest)``); the datagrams to send now come out
(``due(now)``), with ``next_deadline()`` saying when to ask again. There are no sockets, clocks
or files here: time is an argument and randomness comes from a seeded ``random.Random``, so
every decision is reproducible and testable with a fake clock. ``udpxfer.lab.relay`` is the thin
socket loop around two policies.

The models follow Linux netem (``tc-netem(8)``, ``net/sched/sch_netem.c``) where it has one:

* random loss ``loss``: each datagram is dropped with probability P (netem ``loss random``);
* Gilbert-Elliott burst loss (netem ``loss gemodel p r 1-h 1-k``): a two-state Markov chain;
  a datagram is lost with probability 1-k in the good state and 1-h in the bad state, then the
  chain moves good->bad with probability p and bad->good with probability r. With 1-h = 1 and
  1-k = 0 the loss rate is p/(p+r) and bursts last 1/r datagrams on average;
* delay with jitter: uniform in [delay - jitter, delay + jitter] as netem does without a
  distribution table, or normal with standard deviation ``jitter``; never below zero. By
  default a datagram is never released before the one ahead of it (netem behaves so when a
  rate is set); ``jitter_reorder`` lets jitter reorder instead;
* explicit reordering: a datagram picked with probability P is held back and released right
  after the ``reorder_gap``-th datagram that follows it (1: it swaps with the next one), or
  when ``reorder_hold_s`` has passed, whichever comes first. (netem's ``reorder`` sends the
  picked packet immediately and delays the rest; holding one back is the same effect stated
  from the picked datagram's side, and does not need a delay to work);
* duplication: a picked datagram is sent twice in a row (the copy is the original bytes);
* corruption: a picked datagram has one uniformly chosen bit flipped (netem ``corrupt``);
* a rate bottleneck: a FIFO link of ``rate_bps`` bits per second counting whole UDP payloads;
  a datagram waits for the ones ahead of it, then takes ``size * 8 / rate_bps`` seconds to
  leave. At most ``queue_limit`` datagrams (or bytes) may wait behind the one being sent;
  further arrivals are tail-dropped.

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
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from udpxfer.errors import MalformedPacket, UsageError
from udpxfer.protocol import codec, wire
from udpxfer.units import format_rate

Dest = TypeVar("Dest")  # where a datagram goes: opaque to the policy, handed back by due()
Datagram = bytes | bytearray | memoryview

DEFAULT_QUEUE_LIMIT = 1000  # datagrams, as netem's default ``limit``
DEFAULT_REORDER_HOLD_S = 0.1


class Direction(StrEnum):
    """Which way a datagram travels through the relay."""

    FORWARD = "forward"  # client -> server (towards --to)
    REVERSE = "reverse"  # server -> client


class DropCause(StrEnum):
    """Why a datagram was not delivered."""

    LOSS = "loss"  # random loss
    GILBERT = "gilbert"  # Gilbert-Elliott burst loss
    QUEUE = "queue"  # tail drop at the bottleneck queue
    SHUTDOWN = "shutdown"  # still held when the relay stopped


class JitterDistribution(StrEnum):
    """The shape of the delay variation."""

    UNIFORM = "uniform"  # netem without a table: delay +- jitter, flat
    NORMAL = "normal"  # Gaussian, standard deviation = jitter


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise UsageError(f"{name} must be a probability from 0 to 1, got {value}")


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Parameters of the Gilbert-Elliott loss model, in netem ``gemodel`` order."""

    p: float  # good -> bad transition probability
    r: float  # bad -> good transition probability
    loss_bad: float = 1.0  # 1-h: loss probability in the bad state
    loss_good: float = 0.0  # 1-k: loss probability in the good state

    def __post_init__(self) -> None:
        for name in ("p", "r", "loss_bad", "loss_good"):
            _check_probability(f"--gilbert {name}", getattr(self, name))
        if self.r == 0 and self.p > 0:
            raise UsageError(
                "--gilbert r is 0: the first burst would never end; give r > 0 "
                "(mean burst 1/r datagrams)"
            )

    @property
    def bad_fraction(self) -> float:
        """Long-run fraction of datagrams that meet the bad state: p / (p + r)."""
        total = self.p + self.r
        return self.p / total if total else 0.0

    @property
    def loss_rate(self) -> float:
        """Long-run loss probability of the chain."""
        bad = self.bad_fraction
        return bad * self.loss_bad + (1.0 - bad) * self.loss_good


@dataclass(frozen=True, slots=True)
class Impairment:
    """What one direction of the emulated link does; the default does nothing."""

    loss: float = 0.0
    gilbert: GilbertElliott | None = None
    delay_s: float = 0.0
    jitter_s: float = 0.0
    jitter_distribution: JitterDistribution = JitterDistribution.UNIFORM
    jitter_reorder: bool = False  # let jitter reorder (netem without rate); else keep order
    reorder: float = 0.0
    reorder_gap: int = 1
    reorder_hold_s: float = DEFAULT_REORDER_HOLD_S
    duplicate: float = 0.0
    corrupt: float = 0.0
    rate_bps: int = 0  # 0: no bottleneck
    queue_limit: int = DEFAULT_QUEUE_LIMIT  # 0: unlimited; only with a rate
    queue_in_bytes: bool = False  # queue_limit counts bytes instead of datagrams

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate", "corrupt"):
            _check_probability(f"--{name}", getattr(self, name))
        for name, value in (
            ("--delay", self.delay_s),
            ("--jitter", self.jitter_s),
            ("reorder hold", self.reorder_hold_s),
        ):
            if not value >= 0.0 or math.isinf(value):
                raise UsageError(f"{name} must be a finite duration of zero or more, got {value}")
        if self.reorder_gap < 1:
            raise UsageError(f"--reorder-gap must be 1 or more, got {self.reorder_gap}")
        if self.rate_bps < 0:
            raise UsageError(f"--rate must be zero or more, got {self.rate_bps}")
        if self.queue_limit < 0:
            raise UsageError(f"--queue must be zero or more, got {self.queue_limit}")

    @property
    def needs_timing(self) -> bool:
        """True when datagrams may be held: a delay, jitter, bottleneck or reordering."""
        return bool(self.delay_s or self.jitter_s or self.rate_bps or self.reorder)

    @property
    def is_identity(self) -> bool:
        """True when every datagram goes through untouched and at once."""
        return not (
            self.needs_timing or self.loss or self.gilbert or self.duplicate or self.corrupt
        )

    def describe(self) -> str:
        """A short human description (``loss 5%, delay 20 ms +- 5 ms``) or ``none``."""
        parts: list[str] = []
        if self.loss:
            parts.append(f"loss {self.loss:.4g}")
        if self.gilbert is not None:
            ge = self.gilbert
            parts.append(
                f"gilbert p={ge.p:.4g} r={ge.r:.4g} 1-h={ge.loss_bad:.4g} 1-k={ge.loss_good:.4g}"
            )
        if self.delay_s or self.jitter_s:
            text = f"delay {self.delay_s * 1e3:.4g} ms"
            if self.jitter_s:
                text += f" +- {self.jitter_s * 1e3:.4g} ms {self.jitter_distribution.value}"
                text += " (may reorder)" if self.jitter_reorder else ""
            parts.append(text)
        if self.reorder:
            parts.append(f"reorder {self.reorder:.4g} gap {self.reorder_gap}")
        if self.duplicate:
            parts.append(f"duplicate {self.duplicate:.4g}")
        if self.corrupt:
            parts.append(f"corrupt {self.corrupt:.4g}")
        if self.rate_bps:
            unit = "bytes" if self.queue_in_bytes else "datagrams"
            limit = f"{self.queue_limit} {unit}" if self.queue_limit else "unlimited"
            parts.append(f"rate {format_rate(self.rate_bps)} queue {limit}")
        return ", ".join(parts) or "none"


def split_by_direction(impairment: Impairment, direction: str) -> dict[Direction, Impairment]:
    """The impairment for each direction when it applies to ``forward``, ``reverse`` or ``both``.

    Raises:
        UsageError: ``direction`` is none of those.
    """
    none = Impairment()
    if direction == "both":
        return {Direction.FORWARD: impairment, Direction.REVERSE: impairment}
    if direction == Direction.FORWARD:
        return {Direction.FORWARD: impairment, Direction.REVERSE: none}
    if direction == Direction.REVERSE:
        return {Direction.FORWARD: none, Direction.REVERSE: impairment}
    raise UsageError(f"--direction must be forward, reverse or both, got {direction!r}")


def direction_rng(seed: int, direction: Direction) -> random.Random:
    """The random stream of one direction: independent of the other, fixed by ``seed``.

    Seeding with a string hashes it with SHA-512 (``random.seed`` version 2), so the stream does
    not depend on ``PYTHONHASHSEED`` or the platform.
    """
    return random.Random(f"udpxfer.impair/{seed}/{direction.value}")


# The log columns, in order (docs/IMPAIR.md describes them).
LOG_COLUMNS = (
    "dir",
    "seq",
    "t_s",
    "size",
    "action",
    "cause",
    "delay_ms",
    "duplicated",
    "corrupted",
    "corrupt_bit",
    "reordered",
    "type",
    "session",
    "index",
    "resent",
)


@dataclass(slots=True)
class Record:
    """The ground truth about one datagram that arrived: what it was and what was done to it."""

    direction: Direction
    seq: int  # 0, 1, 2, ... in order of arrival in this direction
    arrival_s: float  # the ``now`` it arrived with
    size: int
    packet_type: str | None = None  # udpxfer packet type name, None if not one of ours
    session: int | None = None
    index: int | None = None  # DATA: the chunk index
    resent: bool | None = None  # DATA: the RESENT flag
    delivered: bool = True
    cause: DropCause | None = None
    delay_s: float | None = None  # scheduled release minus arrival, for delivered datagrams
    duplicated: bool = False
    corrupted: bool = False
    corrupt_bit: int | None = None  # which bit was flipped (byte * 8 + bit, LSB = 0)
    reordered: bool = False

    def as_row(self, epoch: float = 0.0) -> dict[str, object]:
        """The record as a log row keyed by ``LOG_COLUMNS``; times relative to ``epoch``."""
        return {
            "dir": self.direction.value,
            "seq": self.seq,
            "t_s": round(self.arrival_s - epoch, 9),
            "size": self.size,
            "action": "delivered" if self.delivered else "dropped",
            "cause": None if self.cause is None else self.cause.value,
            "delay_ms": None if self.delay_s is None else round(self.delay_s * 1e3, 6),
            "duplicated": self.duplicated,
            "corrupted": self.corrupted,
            "corrupt_bit": self.corrupt_bit,
            "reordered": self.reordered,
            "type": self.packet_type,
            "session": None if self.session is None else f"{self.session:016x}",
            "index": self.index,
            "resent": self.resent,
        }


def classify(data: Datagram) -> tuple[str | None, int | None, int | None, bool | None]:
    """What a datagram is on the udpxfer wire: (type name, session, chunk index, resent).

    Anything that does not decode (foreign, truncated, failing its check) is ``(None, ...)``.
    """
    try:
        packet = codec.decode_untrusted(data)
    except MalformedPacket:
        return None, None, None, None
    if isinstance(packet, wire.Data):
        return wire.PacketType.DATA.name, packet.session, packet.index, packet.resent
    return wire.PacketType(data[5]).name, packet.session, None, None


@dataclass(slots=True)
class DirectionStats:
    """Counters of one direction, for the summary."""

    direction: Direction
    datagrams_in: int = 0
    bytes_in: int = 0
    delivered: int = 0  # datagrams sent on (a duplicate pair counts once)
    dropped_loss: int = 0
    dropped_gilbert: int = 0
    dropped_queue: int = 0
    dropped_shutdown: int = 0
    duplicated: int = 0  # extra copies sent
    corrupted: int = 0
    reordered: int = 0
    delay_sum_s: float = 0.0  # over delivered datagrams

    @property
    def dropped(self) -> int:
        """All datagrams not delivered."""
        return self.dropped_loss + self.dropped_gilbert + self.dropped_queue + self.dropped_shutdown

    @property
    def mean_delay_s(self) -> float:
        """Mean scheduled delay of delivered datagrams (0 when none)."""
        return self.delay_sum_s / self.delivered if self.delivered else 0.0

    def count_drop(self, cause: DropCause) -> None:
        """Count one datagram dropped for ``cause``."""
        name = f"dropped_{cause.value}"
        setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, object]:
        """The counters as plain JSON-ready values."""
        return {
            "datagrams_in": self.datagrams_in,
            "bytes_in": self.bytes_in,
            "delivered": self.delivered,
            "dropped": {
                "loss": self.dropped_loss,
                "gilbert": self.dropped_gilbert,
                "queue": self.dropped_queue,
                "shutdown": self.dropped_shutdown,
            },
            "duplicated": self.duplicated,
            "corrupted": self.corrupted,
            "reordered": self.reordered,
            "mean_delay_ms": round(self.mean_delay_s * 1e3, 6),
        }

    def summary_line(self) -> str:
        """One line for the exit summary."""
        return (
            f"{self.direction.value}: {self.datagrams_in} in, {self.delivered} delivered, "
            f"{self.dropped} dropped (loss {self.dropped_loss}, gilbert {self.dropped_gilbert}, "
            f"queue {self.dropped_queue}, shutdown {self.dropped_shutdown}), "
            f"{self.duplicated} duplicated, {self.corrupted} corrupted, "
            f"{self.reordered} reordered, mean delay {self.mean_delay_s * 1e3:.3f} ms"
        )


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
