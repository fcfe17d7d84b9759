"""What one direction of an emulated link does: the impairment models and their parameters.

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

``parse_gilbert`` and ``parse_queue_limit`` read the option values that build these models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from udpxfer.errors import UsageError
from udpxfer.units import format_rate, parse_probability, parse_size

DEFAULT_QUEUE_LIMIT = 1000  # datagrams, as netem's default ``limit``
DEFAULT_REORDER_HOLD_S = 0.1


class Direction(StrEnum):
    """Which way a datagram travels through the relay."""

    FORWARD = "forward"  # client -> server (towards --to)
    REVERSE = "reverse"  # server -> client


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


def parse_gilbert(text: str) -> GilbertElliott:
    """Parse ``p,r[,1-h[,1-k]]`` (netem ``gemodel`` order; fractions or percentages).

    Raises:
        UsageError: not two to four probabilities.
    """
    fields = [field.strip() for field in text.split(",")]
    if not 2 <= len(fields) <= 4:
        raise UsageError(f"bad Gilbert-Elliott model {text!r}: expected p,r[,1-h[,1-k]]")
    return GilbertElliott(*(parse_probability(field) for field in fields))


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


def parse_queue_limit(text: str) -> tuple[int, bool]:
    """Parse a queue limit: a bare count of datagrams, or bytes with a unit (``64K``, ``1500B``).

    Returns:
        The limit and whether it counts bytes.

    Raises:
        UsageError: neither a count nor a size.
    """
    if text.strip().isdigit():
        return int(text), False
    return parse_size(text), True


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
