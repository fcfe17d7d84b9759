"""Commands of the lab part of the CLI (registered on import): ``udpxfer impair``."""

from __future__ import annotations

import secrets
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from udpxfer.cli.application import app, guarded
from udpxfer.cli.impair_options import (
    CorruptOpt,
    DelayOpt,
    DirectionChoice,
    DirectionOpt,
    DuplicateOpt,
    GilbertOpt,
    JitterDistributionOpt,
    JitterOpt,
    JitterReorderOpt,
    LossOpt,
    QueueOpt,
    RateOpt,
    ReorderGapOpt,
    ReorderHoldOpt,
    ReorderOpt,
    build_impairment,
    parsed,
)
from udpxfer.cli.signals import handled
from udpxfer.lab.impair.models import Direction, JitterDistribution
from udpxfer.net.sockets import ALL_INTERFACES, LOOPBACK
from udpxfer.units import (
    Address,
    parse_address,
    parse_peer_address,
)

if TYPE_CHECKING:
    from udpxfer.lab.relay import Relay
    from udpxfer.lab.relay_log import RecordLog

T = TypeVar("T")


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
    direction: DirectionOpt = DirectionChoice.FORWARD,
    loss: LossOpt = "0",
    gilbert: GilbertOpt = None,
    delay: DelayOpt = "0",
    jitter: JitterOpt = "0",
    jitter_distribution: JitterDistributionOpt = JitterDistribution.UNIFORM,
    jitter_reorder: JitterReorderOpt = False,
    reorder: ReorderOpt = "0",
    reorder_gap: ReorderGapOpt = 1,
    reorder_hold: ReorderHoldOpt = "100ms",
    duplicate: DuplicateOpt = "0",
    corrupt: CorruptOpt = "0",
    rate: RateOpt = "0",
    queue: QueueOpt = None,
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
        per_direction = build_impairment(
            direction=direction,
            loss=loss,
            gilbert=gilbert,
            delay=delay,
            jitter=jitter,
            jitter_distribution=jitter_distribution,
            jitter_reorder=jitter_reorder,
            reorder=reorder,
            reorder_gap=reorder_gap,
            reorder_hold=reorder_hold,
            duplicate=duplicate,
            corrupt=corrupt,
            rate=rate,
            queue=queue,
        )
        listen_address = parsed(
            "--listen", lambda text: parse_address(text, default_host=ALL_INTERFACES), listen
        )
        target = parsed("--to", lambda text: parse_peer_address(text, default_host=LOOPBACK), to)
        if seed is None:
            seed = secrets.randbits(32)
        from udpxfer.lab.relay import Relay
        from udpxfer.lab.relay_log import RecordLog

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


# By relay.StopReason value (a StrEnum), so that the relay loads with its command only.
_WHY: dict[str, str] = {
    "stopped": "stopped",
    "count limit": "count limit reached",
    "duration": "duration elapsed",
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

    def stop(sig: signal.Signals) -> None:
        caught.append(sig.name)
        relay.stop()

    started = time.monotonic()
    try:
        # Ctrl-C and SIGTERM stop the relay cleanly instead of killing the process.
        with handled(stop, signal.SIGINT, signal.SIGTERM):
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
