"""Commands of the lab part of the CLI (registered on import): ``udpxfer impair``."""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, TypeVar

import typer

from udpxfer.cli.app import app, guarded
from udpxfer.errors import UsageError
from udpxfer.impair import (
    DEFAULT_QUEUE_LIMIT,
    Direction,
    GilbertElliott,
    Impairment,
    JitterDistribution,
    split_by_direction,
)
from udpxfer.relay import RecordLog, Relay, StopReason
from udpxfer.sockets import ALL_INTERFACES, LOOPBACK
from udpxfer.units import (
    Address,
    parse_address,
    parse_duration,
    parse_peer_address,
    parse_probability,
    parse_rate,
    parse_size,
)

T = TypeVar("T")


class DirectionChoice(StrEnum):
    """Which way the impairment applies."""

    FORWARD = "forward"
    REVERSE = "reverse"
    BOTH = "both"


def _parsed(option: str, parse: Callable[[str], T], text: str) -> T:
    """``parse(text)``, with the option's name in front of any error."""
    try:
        return parse(text)
    except UsageError as exc:
        raise UsageError(f"{option}: {exc}") from None


def parse_gilbert(text: str) -> GilbertElliott:
    """Parse ``p,r[,1-h[,1-k]]`` (netem ``gemodel`` order; fractions or percentages).

    Raises:
        UsageError: not two to four probabilities.
    """
    fields = [field.strip() for field in text.split(",")]
    if not 2 <= len(fields) <= 4:
        raise UsageError(f"bad Gilbert-Elliott model {text!r}: expected p,r[,1-h[,1-k]]")
    return GilbertElliott(*(parse_probability(field) for field in fields))


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


# Click rewraps each paragraph to the terminal; a paragraph that starts with "\b" is kept
# as written, so the examples stay one command per line and paste into a shell.
_HELP = "\n\n".join(
    (
        "Relay UDP between senders and a target, impairing it like a bad network (as netem).",
        "Senders send to --listen; datagrams go on to --to and replies come back to the sender "
        "(each sender address gets its own upstream port, like a NAT). Loss, burst loss, delay, "
        "jitter, reordering, duplication, corruption and a rate bottleneck combine, per "
        "direction. --log records what happened to every datagram (docs/IMPAIR.md).",
        "PROB is a fraction (0.05) or a percentage (5%). DURATION takes ms, s or us; a bare "
        "number means milliseconds. RATE is bits per second with decimal suffixes (100M). The "
        "relay stops on Ctrl-C or SIGTERM, or at --count-limit / --duration, and prints a "
        "summary; exit status 0.",
    )
)
_EXAMPLES = """Examples:

\b
# 5% random loss, 20 ms +- 5 ms delay, to a receiver on port 9001:
udpxfer recv --bind 9001 &
udpxfer impair --listen 9000 --to 9001 --loss 5% --delay 20ms --jitter 5ms &
udpxfer send FILE --to 127.0.0.1:9000

\b
# Bursts (1% chance to enter one, 4 datagrams long on average) both ways,
# a 100 Mbit/s bottleneck with a 64 KiB buffer, reproducible, logged:
udpxfer impair --listen 9000 --to 9001 --direction both \\
    --gilbert 1%,25% --rate 100M --queue 64K --seed 7 --log lab.jsonl
"""


@contextmanager
def _stop_on_signals(relay: Relay, caught: list[str]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM stop ``relay`` cleanly instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        caught.append(signal.Signals(signum).name)
        relay.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@app.command(
    help=_HELP,
    epilog=_EXAMPLES,
    short_help="Relay UDP, impairing it like a bad network (netem).",
)
def impair(
    listen: Annotated[
        str,
        typer.Option(
            metavar="ADDR",
            help="Where senders send: HOST:PORT, [v6addr]:PORT or a bare PORT (all interfaces).",
            show_default=False,
        ),
    ],
    to: Annotated[
        str,
        typer.Option(
            metavar="ADDR",
            help="Where datagrams are relayed to: HOST:PORT or a bare PORT (loopback).",
            show_default=False,
        ),
    ],
    direction: Annotated[
        DirectionChoice,
        typer.Option(help="Impair client->target (forward), target->client (reverse) or both."),
    ] = DirectionChoice.FORWARD,
    loss: Annotated[
        str, typer.Option(metavar="PROB", help="Random loss probability (0.05 or 5%).")
    ] = "0",
    gilbert: Annotated[
        str | None,
        typer.Option(
            metavar="P,R[,1-H[,1-K]]",
            help="Gilbert-Elliott burst loss p,r[,1-h[,1-k]] as netem gemodel: p good->bad, "
            "r bad->good, 1-h loss in the bad state (default 1), 1-k loss in the good state "
            "(default 0). Loss rate p/(p+r), mean burst 1/r datagrams.",
            show_default=False,
        ),
    ] = None,
    delay: Annotated[
        str,
        typer.Option(
            metavar="DURATION", help="Added one-way delay (20ms, 0.5s, 250us; bare number: ms)."
        ),
    ] = "0",
    jitter: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="Delay variation: +- this (uniform) or the standard deviation (normal).",
        ),
    ] = "0",
    jitter_distribution: Annotated[
        JitterDistribution, typer.Option(help="Shape of the jitter.")
    ] = JitterDistribution.UNIFORM,
    jitter_reorder: Annotated[
        bool,
        typer.Option(
            "--jitter-reorder",
            help="Let jitter reorder datagrams. Without it a datagram never leaves before the "
            "one ahead of it (as netem with a rate), which raises the mean delay at high rates.",
        ),
    ] = False,
    reorder: Annotated[
        str,
        typer.Option(
            metavar="PROB",
            help="Probability that a datagram is held back and sent after the next "
            "--reorder-gap datagrams (or after --reorder-hold, if fewer follow).",
        ),
    ] = "0",
    reorder_gap: Annotated[
        int,
        typer.Option(metavar="N", min=1, help="How many later datagrams overtake a reordered one."),
    ] = 1,
    reorder_hold: Annotated[
        str,
        typer.Option(
            metavar="DURATION", help="Longest a reordered datagram waits for its followers."
        ),
    ] = "100ms",
    duplicate: Annotated[
        str, typer.Option(metavar="PROB", help="Probability that a datagram is sent twice.")
    ] = "0",
    corrupt: Annotated[
        str,
        typer.Option(
            metavar="PROB", help="Probability that one random bit of a datagram is flipped."
        ),
    ] = "0",
    rate: Annotated[
        str,
        typer.Option(
            metavar="RATE",
            help="Bottleneck in bits per second over UDP payloads (100M, 1.5G; 0: none).",
        ),
    ] = "0",
    queue: Annotated[
        str | None,
        typer.Option(
            metavar="N|SIZE",
            help="Bottleneck buffer, tail drop beyond it: a count of datagrams or bytes with a "
            f"unit (64K, 1500B); 0: unlimited. Needs --rate. [default: {DEFAULT_QUEUE_LIMIT}]",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Seed of every random decision: the same seed and datagrams give the same "
            "decisions. Default: a random one, printed.",
            show_default=False,
        ),
    ] = None,
    log: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Write one record per datagram (the ground truth) to this file: JSON Lines, "
            "or CSV if it ends in .csv. Costs some throughput.",
            show_default=False,
        ),
    ] = None,
    count_limit: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=1,
            help="Stop after this many datagrams arrived (both ways), once they have left.",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", min=0.0, help="Stop after this many seconds.", show_default=False
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print nothing but errors.")] = False,
) -> None:
    """Relay UDP between senders and a target, impairing it (help text: ``_HELP``)."""
    with guarded():
        rate_bps = _parsed("--rate", parse_rate, rate)
        queue_limit, queue_in_bytes = DEFAULT_QUEUE_LIMIT, False
        if queue is not None:
            if not rate_bps:
                raise UsageError("--queue is the bottleneck's buffer: it needs --rate")
            queue_limit, queue_in_bytes = _parsed("--queue", parse_queue_limit, queue)
        config = Impairment(
            loss=_parsed("--loss", parse_probability, loss),
            gilbert=None if gilbert is None else _parsed("--gilbert", parse_gilbert, gilbert),
            delay_s=_parsed("--delay", parse_duration, delay),
            jitter_s=_parsed("--jitter", parse_duration, jitter),
            jitter_distribution=jitter_distribution,
            jitter_reorder=jitter_reorder,
            reorder=_parsed("--reorder", parse_probability, reorder),
            reorder_gap=reorder_gap,
            reorder_hold_s=_parsed("--reorder-hold", parse_duration, reorder_hold),
            duplicate=_parsed("--duplicate", parse_probability, duplicate),
            corrupt=_parsed("--corrupt", parse_probability, corrupt),
            rate_bps=rate_bps,
            queue_limit=queue_limit,
            queue_in_bytes=queue_in_bytes,
        )
        per_direction = split_by_direction(config, direction.value)
        listen_address = _parsed(
            "--listen", lambda text: parse_address(text, default_host=ALL_INTERFACES), listen
        )
        target = _parsed("--to", lambda text: parse_peer_address(text, default_host=LOOPBACK), to)
        if seed is None:
            seed = secrets.randbits(32)
        record_log = RecordLog(log) if log is not None else None
        try:
            _run(
                Relay(
                    listen_address,
                    target,
                    forward=per_direction[Direction.FORWARD],
                    reverse=per_direction[Direction.REVERSE],
                    seed=seed,
                    on_records=None if record_log is None else record_log.write,
                    count_limit=count_limit,
                    duration_s=duration,
                ),
                target,
                record_log,
                quiet=quiet,
            )
        finally:
            if record_log is not None:
                record_log.close()


_WHY = {
    StopReason.STOPPED: "stopped",
    StopReason.COUNT_LIMIT: "count limit reached",
    StopReason.DURATION: "duration elapsed",
}


def _run(relay: Relay, target: Address, record_log: RecordLog | None, *, quiet: bool) -> None:
    """Relay until stopped, then print the summary."""

    def say(text: str) -> None:
        if not quiet:
            typer.echo(text)

    host, port = relay.listen_address
    if record_log is not None:
        record_log.epoch = relay.epoch
    say(f"impair: relaying {Address(host, port)} -> {target}, seed {relay.seed}")
    say(f"  forward: {relay.forward.config.describe()}")
    say(f"  reverse: {relay.reverse.config.describe()}")
    caught: list[str] = []
    started = time.monotonic()
    try:
        with _stop_on_signals(relay, caught):
            reason = relay.run()
    finally:
        relay.close()
    why = f"by {caught[0]}" if caught else _WHY[reason]
    say(f"impair: stopped ({why}) after {time.monotonic() - started:.1f} s, seed {relay.seed}")
    for stats in relay.stats.values():
        say(f"  {stats.summary_line()}")
    extra = relay.relay_stats
    say(
        f"  clients {extra.clients}, send failures {extra.send_failed}, "
        f"target unreachable {extra.unreachable}"
    )
    for way, drops in (
        ("forward", extra.kernel_drops_forward),
        ("reverse", extra.kernel_drops_reverse),
    ):
        if drops:
            say(
                f"  {way}: {drops} datagrams dropped by the kernel before the relay could read "
                "them (receive buffer full; not in the log)"
            )
    if record_log is not None:
        say(f"  log: {record_log.path}")
