"""``udpxfer compare`` and ``udpxfer lab up|down|status`` (registered on import)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm import tqdm

from udpxfer.cli.application import EXIT_INCOMPLETE, EXIT_INTERRUPTED, app, fail, guarded
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
)
from udpxfer.cli.signals import handled, raise_interrupted
from udpxfer.errors import Interrupted, LabError, UsageError
from udpxfer.lab.compare.plan import parse_sweep, parse_transports, sweep_points
from udpxfer.lab.compare.run import CompareConfig, Comparison, Progress
from udpxfer.lab.impair.models import Direction, Impairment, JitterDistribution
from udpxfer.lab.live import (
    STATE_DIR,
    LiveLab,
    check_privileges,
    choose_backend,
    labs_by_owner,
    stop_owner,
)
from udpxfer.lab.netns import (
    Backend,
    LabSpec,
    describe_lab,
    pid_alive,
    remove_leftovers,
)
from udpxfer.paths import ensure_writable_dir
from udpxfer.units import parse_rate

lab_app = typer.Typer(
    help="Bring the comparison lab up for your own tools (root): two hosts through an "
    "impairment router, in network namespaces.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(lab_app, name="lab", short_help="The comparison lab for your own tools (root).")

BackendOpt = Annotated[
    Backend,
    typer.Option(
        help="The impairment router: netem on veth where the kernel has sch_netem, else a "
        "user-space router over TUN devices applying udpxfer impair's seeded policy to every "
        "IP packet (auto picks in that order)."
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Seed of the TUN router's random decisions (default: random, printed).",
        show_default=False,
    ),
]
CongestionOpt = Annotated[
    str,
    typer.Option(
        "--tcp-congestion",
        metavar="NAME",
        help="TCP congestion control inside the lab's hosts (the Mathis model describes "
        "loss-based TCP such as cubic or reno; bbr ignores random loss).",
    ),
]


def _spec(
    per_direction: dict[Direction, Impairment], backend: Backend, seed: int | None, cc: str
) -> LabSpec:
    check_privileges()
    chosen = choose_backend(backend)
    return describe_lab(
        chosen,
        per_direction[Direction.FORWARD],
        per_direction[Direction.REVERSE],
        seed=secrets.randbits(32) if seed is None else seed,
        tcp_congestion=cc,
    )


def _lab_lines(spec: LabSpec) -> list[str]:
    a, b = spec.a, spec.b
    return [
        f"lab: {spec.backend.value} backend, MTU {spec.mtu}, TCP {spec.tcp_congestion}, "
        f"seed {spec.seed}",
        f"  host a (sender):   netns {a.netns}  device {a.device}  address {a.address}",
        f"  host b (receiver): netns {b.netns}  device {b.device}  address {b.address}",
        f"  a->b: {spec.forward.describe()}",
        f"  b->a: {spec.reverse.describe()}",
    ]


_COMPARE_HELP = "\n\n".join(
    (
        "Send the same FILE over TCP, UDP reliable and UDP blast through one packet-level "
        "impairment, and compare them side by side (root only).",
        "Builds a lab of network namespaces (hosts a and b joined through an impairment "
        "router, MTU 1500), runs `udpxfer tcp send/recv` and `udpxfer send/recv` inside it "
        "--runs times each, measures the round trip with the echo companions, and writes "
        "DIR/compare.json (udpxfer.compare/1), compare.md and compare.html with plots. "
        "Everything it creates is named udpxfer-<pid>-... and is removed on exit, Ctrl-C "
        "and SIGTERM; leftovers of a crashed run are removed at start.",
        "The impairment options are those of `udpxfer impair` and apply to every IP packet "
        "(TCP segments and ACKs alike) in the chosen --direction. --sweep varies one "
        "parameter over a list (the others as given) and plots goodput against it beside "
        "the Mathis model of TCP.",
        "Exit status: 0 when every TCP and UDP reliable run verified its file; 1 if one "
        "did not; 2 bad usage (or not root); 130 interrupted.",
    )
)
# Click rewraps each paragraph to the terminal; a paragraph that starts with "\b" is kept
# as written, so the examples stay one command per line and paste into a shell.
_COMPARE_EXAMPLES = """Examples:

\b
# 1% loss and 20 ms each way, 3 runs each:
sudo udpxfer compare big.bin --loss 1% --delay 20ms --direction both

\b
# A loss sweep at 20 ms each way (goodput vs loss, Mathis curve):
sudo udpxfer compare big.bin --delay 20ms --direction both \\
    --sweep loss=0,0.5%,1%,2%,5% --runs 2 --out reports/loss-sweep
"""


@app.command(
    help=_COMPARE_HELP,
    epilog=_COMPARE_EXAMPLES,
    short_help="TCP vs UDP through one impairment in a netns lab (root).",
)
def compare(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The file to send.", show_default=False)
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
    runs: Annotated[
        int, typer.Option(metavar="N", min=1, help="Runs of each transport at each point.")
    ] = 3,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PARAM=V1,V2,...",
            help="Vary PARAM (loss, delay, jitter or rate) over the values (repeatable: one "
            "sweep each), e.g. loss=0,0.5%,1%,2%,5% or delay=1ms,20ms,80ms.",
            show_default=False,
        ),
    ] = None,
    transports: Annotated[
        str,
        typer.Option(metavar="LIST", help="Which transports, in order: any of tcp,reliable,blast."),
    ] = "tcp,reliable,blast",
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Output directory [default: reports/compare-<UTC time>].",
            show_default=False,
        ),
    ] = None,
    backend: BackendOpt = Backend.AUTO,
    seed: SeedOpt = None,
    udp_rate: Annotated[
        str | None,
        typer.Option(
            metavar="RATE",
            help="Pass --rate to the UDP sender (bits per second, e.g. 50M). Default: the "
            "sender's own congestion control, unpaced.",
            show_default=False,
        ),
    ] = None,
    tcp_congestion: CongestionOpt = "cubic",
    timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", min=1.0, help="Seconds one transfer may take before it is stopped."
        ),
    ] = 120.0,
) -> None:
    """Compare TCP and UDP through one impairment (help text: ``_COMPARE_HELP``)."""
    with guarded():
        per_direction = build_impairment(
            direction=direction, loss=loss, gilbert=gilbert, delay=delay, jitter=jitter,
            jitter_distribution=jitter_distribution, jitter_reorder=jitter_reorder,
            reorder=reorder, reorder_gap=reorder_gap, reorder_hold=reorder_hold,
            duplicate=duplicate, corrupt=corrupt, rate=rate, queue=queue,
        )  # fmt: skip
        if not file.is_file():
            raise UsageError(f"{file}: {'not a regular file' if file.exists() else 'no such file'}")
        if udp_rate is not None:
            parse_rate(udp_rate)
        axes = [parse_sweep(text) for text in sweep or []]
        impaired = [d for d in Direction if direction.value in (d.value, "both")]
        points = sweep_points(
            per_direction[Direction.FORWARD], per_direction[Direction.REVERSE], impaired, axes
        )
        out_dir = out or Path("reports") / time.strftime("compare-%Y%m%dT%H%M%SZ", time.gmtime())
        config = CompareConfig(
            file=file.resolve(),
            out=out_dir.resolve(),
            transports=parse_transports(transports),
            runs=runs,
            points=points,
            udp_rate=udp_rate,
            timeout_s=timeout,
        )
        spec = _spec(per_direction, backend, seed, tcp_congestion)
        # SIGTERM unwinds like Ctrl-C, so that the lab is torn down and partial results written.
        with handled(raise_interrupted, signal.SIGTERM):
            _run_compare(config, spec, direction.value)


def _run_compare(config: CompareConfig, spec: LabSpec, direction: str) -> None:
    # Imported here: matplotlib would slow down every other command's start (and each
    # process the lab starts).
    from udpxfer.lab.compare import report as compare_report

    started = time.time()
    ensure_writable_dir(config.out)
    comparison: Comparison | None = None
    interrupted = False
    lab_data: dict[str, Any] = spec.as_dict()
    bar = tqdm(total=0, unit="run", leave=False, disable=not sys.stderr.isatty())
    try:
        with LiveLab(spec) as lab:
            for name in lab.removed_leftovers:
                typer.echo(f"removed a leftover of an earlier run: {name}")
            for line in _lab_lines(spec):
                typer.echo(line)
            comparison = Comparison(lab, config, Progress(say=tqdm.write, step=bar.update))
            bar.reset(total=comparison.total_steps)
            try:
                comparison.run()
            except (KeyboardInterrupt, Interrupted):
                interrupted = True
            lab_data = {**lab.spec.as_dict(), "impairment": None}
            lab_data["router_counters_last_point"] = lab.router_counters()
            typer.echo("tearing the lab down", err=interrupted)
    finally:
        bar.close()
    if comparison is None:
        return
    lab_data.pop("impairment", None)
    doc = compare_report.build_document(
        config, lab_data, direction, comparison.runs, comparison.latency,
        started_unix_s=started, interrupted=interrupted,
    )  # fmt: skip
    paths = compare_report.write_outputs(doc, config.out)
    _print_summary(doc)
    for path in paths:
        typer.echo(f"wrote {path}")
    if interrupted:
        typer.echo("udpxfer: interrupted (lab removed; partial results written)", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    failed = [r for r in doc["runs"] if r["mode"] != "blast" and not r["verified"]]
    if failed:
        fail(f"{len(failed)} TCP/UDP reliable run(s) did not verify the file", EXIT_INCOMPLETE)


def _print_summary(doc: dict[str, Any]) -> None:
    from udpxfer.lab.compare import report as compare_report

    points = doc["sweep"] or [doc]
    for point in points:
        if doc["sweep"]:
            typer.echo(f"\n{point['label']}:")
        typer.echo(compare_report.model_line(point["model"]))
        rows = compare_report.summary_rows(point)
        header = list(compare_report.SUMMARY_HEADER)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        for cells in [header, *rows]:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    lat = compare_report.latency_rows(doc["latency"])
    if lat:
        typer.echo("echo round trips (ms): " + "; ".join(
            f"{r[0]} median {r[4]} max {r[6]} ({r[2]}/{r[1]} answered)" for r in lat
        ))  # fmt: skip


# ------------------------------------------------------------------------ lab up/down/status


@lab_app.command("up", short_help="Build the lab and keep it up until Ctrl-C or `lab down`.")
def lab_up(
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
    backend: BackendOpt = Backend.AUTO,
    seed: SeedOpt = None,
    tcp_congestion: CongestionOpt = "cubic",
) -> None:
    """Build the lab and keep it up until Ctrl-C, SIGTERM or `udpxfer lab down` (root).

    The impairment options are those of `udpxfer impair`, applied to every IP packet.
    The namespace names and addresses are printed; run your own tools through the lab,
    for example:

    \b
    ip netns exec udpxfer-PID-b iperf3 -s
    ip netns exec udpxfer-PID-a iperf3 -c 10.201.2.1

    The TUN router runs inside this process: the lab lives as long as it does.
    """
    with guarded():
        per_direction = build_impairment(
            direction=direction, loss=loss, gilbert=gilbert, delay=delay, jitter=jitter,
            jitter_distribution=jitter_distribution, jitter_reorder=jitter_reorder,
            reorder=reorder, reorder_gap=reorder_gap, reorder_hold=reorder_hold,
            duplicate=duplicate, corrupt=corrupt, rate=rate, queue=queue,
        )  # fmt: skip
        spec = _spec(per_direction, backend, seed, tcp_congestion)
        stop = threading.Event()
        try:
            with handled(raise_interrupted, signal.SIGTERM), LiveLab(spec) as lab:
                for name in lab.removed_leftovers:
                    typer.echo(f"removed a leftover of an earlier run: {name}")
                for line in _lab_lines(spec):
                    typer.echo(line)
                typer.echo(
                    f"  try: ip netns exec {spec.a.netns} ping {spec.b.address}\n"
                    "lab up; Ctrl-C or `udpxfer lab down` removes it"
                )
                while not stop.wait(1.0):
                    lab.check_router()
        except (KeyboardInterrupt, Interrupted):
            typer.echo("lab removed")


@lab_app.command("status", short_help="List the labs on this machine.")
def lab_status() -> None:
    """List the labs on this machine: owner process, namespaces, addresses, impairment."""
    with guarded():
        check_privileges()
        labs = labs_by_owner()
        if not labs:
            typer.echo("no udpxfer lab is up")
            return
        for pid, names in sorted(labs.items()):
            state = "up" if pid_alive(pid) else "LEFTOVER (owner gone; `udpxfer lab down`)"
            typer.echo(f"lab of pid {pid}: {state}; namespaces {', '.join(sorted(names))}")
            try:
                data = json.loads((STATE_DIR / f"lab-{pid}.json").read_text())
            except (OSError, ValueError):
                continue
            for host in data["hosts"]:
                typer.echo(f"  host {host['role']}: {host['netns']} {host['address']}")
            typer.echo(f"  a->b: {data['impairment']['forward']}")
            typer.echo(f"  b->a: {data['impairment']['reverse']}")


@lab_app.command("down", short_help="Remove every udpxfer lab (or one owner's).")
def lab_down(
    pid: Annotated[
        int | None,
        typer.Option(
            metavar="PID",
            help="Remove only the lab of this owner pid (default: every lab).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", min=0.1, help="Seconds to wait for each lab's owner to remove it."
        ),
    ] = 10.0,
) -> None:
    """Remove every udpxfer lab: stop its owner (SIGTERM), then delete what is left."""
    with guarded():
        check_privileges()
        labs = {owner: names for owner, names in labs_by_owner().items() if pid in (None, owner)}
        for owner in sorted(labs):
            if pid_alive(owner) and owner != os.getpid():
                stop_owner(owner, timeout)
            typer.echo(f"lab of pid {owner} removed")
        leftovers = remove_leftovers(lambda owner: pid_alive(owner) and owner not in labs)
        for name in leftovers:
            typer.echo(f"removed {name}")
        if not labs and not leftovers:
            typer.echo("no udpxfer lab was up")
        still = {owner: names for owner, names in labs_by_owner().items() if owner in labs}
        if still:
            raise LabError(f"still up: {', '.join(n for ns in still.values() for n in ns)}")
