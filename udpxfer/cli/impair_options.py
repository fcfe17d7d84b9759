"""The impairment options shared by ``udpxfer impair`` and ``udpxfer compare``.

One set of option declarations (type, help) and one builder, so that both commands take the
same words and mean the same thing by them; the values themselves are read by the models'
own parsers (``udpxfer.lab.impair.models``).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, TypeVar

import typer

from udpxfer.errors import UsageError
from udpxfer.lab.impair.models import (
    DEFAULT_QUEUE_LIMIT,
    Direction,
    Impairment,
    JitterDistribution,
    parse_gilbert,
    parse_queue_limit,
    split_by_direction,
)
from udpxfer.units import parse_duration, parse_probability, parse_rate

T = TypeVar("T")


class DirectionChoice(StrEnum):
    """Which way the impairment applies."""

    FORWARD = "forward"
    REVERSE = "reverse"
    BOTH = "both"


def parsed(option: str, parse: Callable[[str], T], text: str) -> T:
    """``parse(text)``, with the option's name in front of any error."""
    try:
        return parse(text)
    except UsageError as exc:
        raise UsageError(f"{option}: {exc}") from exc


DirectionOpt = Annotated[
    DirectionChoice,
    typer.Option(help="Impair client->target (forward), target->client (reverse) or both."),
]

LossOpt = Annotated[str, typer.Option(metavar="PROB", help="Random loss probability (0.05 or 5%).")]

GilbertOpt = Annotated[
    str | None,
    typer.Option(
        metavar="P,R[,1-H[,1-K]]",
        help="Gilbert-Elliott burst loss p,r[,1-h[,1-k]] as netem gemodel: p good->bad, "
        "r bad->good, 1-h loss in the bad state (default 1), 1-k loss in the good state "
        "(default 0). Loss rate p/(p+r), mean burst 1/r datagrams.",
        show_default=False,
    ),
]

DelayOpt = Annotated[
    str,
    typer.Option(
        metavar="DURATION", help="Added one-way delay (20ms, 0.5s, 250us; bare number: ms)."
    ),
]

JitterOpt = Annotated[
    str,
    typer.Option(
        metavar="DURATION",
        help="Delay variation: +- this (uniform) or the standard deviation (normal).",
    ),
]

JitterDistributionOpt = Annotated[JitterDistribution, typer.Option(help="Shape of the jitter.")]

JitterReorderOpt = Annotated[
    bool,
    typer.Option(
        "--jitter-reorder",
        help="Let jitter reorder datagrams. Without it a datagram never leaves before the "
        "one ahead of it (as netem with a rate), which raises the mean delay at high rates.",
    ),
]

ReorderOpt = Annotated[
    str,
    typer.Option(
        metavar="PROB",
        help="Probability that a datagram is held back and sent after the next "
        "--reorder-gap datagrams (or after --reorder-hold, if fewer follow).",
    ),
]

ReorderGapOpt = Annotated[
    int,
    typer.Option(metavar="N", min=1, help="How many later datagrams overtake a reordered one."),
]

ReorderHoldOpt = Annotated[
    str,
    typer.Option(metavar="DURATION", help="Longest a reordered datagram waits for its followers."),
]

DuplicateOpt = Annotated[
    str, typer.Option(metavar="PROB", help="Probability that a datagram is sent twice.")
]

CorruptOpt = Annotated[
    str,
    typer.Option(metavar="PROB", help="Probability that one random bit of a datagram is flipped."),
]

RateOpt = Annotated[
    str,
    typer.Option(
        metavar="RATE",
        help="Bottleneck in bits per second over UDP payloads (100M, 1.5G; 0: none).",
    ),
]

QueueOpt = Annotated[
    str | None,
    typer.Option(
        metavar="N|SIZE",
        help="Bottleneck buffer, tail drop beyond it: a count of datagrams or bytes with a "
        f"unit (64K, 1500B); 0: unlimited. Needs --rate. [default: {DEFAULT_QUEUE_LIMIT}]",
        show_default=False,
    ),
]


def build_impairment(
    *,
    direction: DirectionChoice,
    loss: str,
    gilbert: str | None,
    delay: str,
    jitter: str,
    jitter_distribution: JitterDistribution,
    jitter_reorder: bool,
    reorder: str,
    reorder_gap: int,
    reorder_hold: str,
    duplicate: str,
    corrupt: str,
    rate: str,
    queue: str | None,
) -> dict[Direction, Impairment]:
    """The impairment of each direction from the options as typed.

    Raises:
        UsageError: an option does not parse, or the combination makes no sense.
    """
    rate_bps = parsed("--rate", parse_rate, rate)
    queue_limit, queue_in_bytes = DEFAULT_QUEUE_LIMIT, False
    if queue is not None:
        if not rate_bps:
            raise UsageError("--queue is the bottleneck's buffer: it needs --rate")
        queue_limit, queue_in_bytes = parsed("--queue", parse_queue_limit, queue)
    config = Impairment(
        loss=parsed("--loss", parse_probability, loss),
        gilbert=None if gilbert is None else parsed("--gilbert", parse_gilbert, gilbert),
        delay_s=parsed("--delay", parse_duration, delay),
        jitter_s=parsed("--jitter", parse_duration, jitter),
        jitter_distribution=jitter_distribution,
        jitter_reorder=jitter_reorder,
        reorder=parsed("--reorder", parse_probability, reorder),
        reorder_gap=reorder_gap,
        reorder_hold_s=parsed("--reorder-hold", parse_duration, reorder_hold),
        duplicate=parsed("--duplicate", parse_probability, duplicate),
        corrupt=parsed("--corrupt", parse_probability, corrupt),
        rate_bps=rate_bps,
        queue_limit=queue_limit,
        queue_in_bytes=queue_in_bytes,
    )
    return split_by_direction(config, direction.value)
