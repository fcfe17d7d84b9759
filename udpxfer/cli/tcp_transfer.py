"""``udpxfer tcp send`` and ``udpxfer tcp recv``: the TCP transfer, for TCP-vs-UDP comparisons."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from udpxfer.cli.application import EXIT_INCOMPLETE, EXIT_INTERRUPTED, guarded, tcp_app
from udpxfer.cli.companions import BIND_HELP, bind_address, peer_address
from udpxfer.cli.progress import TransferBar, show_progress
from udpxfer.cli.transfer import (
    DEFAULT_IDLE_TIMEOUT_S,
    IntervalOption,
    JsonStreamOption,
    stream_interval,
)
from udpxfer.cli.watch import json_line
from udpxfer.companions import defaults
from udpxfer.errors import TransferError
from udpxfer.reports.output import check_target, is_stdout, write_report
from udpxfer.reports.stream import DEFAULT_INTERVAL_S, ByteStream
from udpxfer.units import format_rate, format_size

if TYPE_CHECKING:
    from udpxfer.companions.runtime import Progress, ProgressFactory
    from udpxfer.companions.tcp_transfer import SendResult

# The TCP transfer (asyncio and all) is imported by its own commands only, as the companions.


def _progress(quiet: bool) -> ProgressFactory:
    """Bars on stderr, unless ``--quiet`` or stderr is not a terminal."""
    from udpxfer.companions.runtime import NoProgress

    if not show_progress(quiet):
        return NoProgress

    def bar(label: str, total: int) -> Progress:
        return TransferBar(label, total)

    return bar


@tcp_app.command("send", short_help="Send one file over TCP to `udpxfer tcp recv`.")
def tcp_send(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The file to send.", show_default=False)
    ],
    to: Annotated[
        str,
        typer.Option(
            metavar="ADDR", help="The receiver: PORT (on this machine), HOST:PORT or [v6addr]:PORT."
        ),
    ] = str(defaults.TCP_TRANSFER_PORT),
    timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0.1,
            help="Seconds the receiver may stall (connect, read, verdict) before we give up.",
        ),
    ] = 30.0,
    report: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Write the sender's JSON report (udpxfer.send-report/1, with the kernel's "
            "TCP_INFO counters: retransmissions, RTT, cwnd) to PATH; - for stdout (then "
            "nothing else goes there). An existing file is never replaced.",
            show_default=False,
        ),
    ] = None,
    json_stream: JsonStreamOption = False,
    interval: IntervalOption = DEFAULT_INTERVAL_S,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    congestion: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="TCP congestion control for this connection (cubic, reno, bbr...; Linux). "
            "Default: the system's.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Send one file over TCP to "udpxfer tcp recv", for TCP-vs-UDP comparisons.

    The receiver checks the SHA-256 and confirms: only then the exit status is 0.
    A broken connection or a rejected file exits 1, with one line on stderr.
    """
    from udpxfer.companions import tcp_transfer

    with guarded():
        target = check_target(report, what="--report") if report is not None else None
        on_stdout = target is not None and is_stdout(target)
        every = stream_interval(json_stream, interval)
        address = peer_address(to)
        counted = _CountingProgress(_streaming(_progress(quiet), "send", every))
        started, t0 = time.time(), time.monotonic()
        result: SendResult | None = None
        reason = ""
        try:
            result = tcp_transfer.send_file(
                file, address, timeout_s=timeout, progress=counted, congestion=congestion
            )
        except TransferError as exc:
            reason = str(exc)
            raise
        finally:
            if counted.started and (target is not None or json_stream):
                doc = tcp_transfer.tcp_send_report(
                    file,
                    str(address),
                    sent_bytes=counted.done,
                    duration_s=time.monotonic() - t0,
                    started_unix_s=started,
                    result=result,
                    reason=reason if result is None else "",
                )
                if target is not None:
                    written = write_report(doc, target)
                    if not on_stdout and not quiet:
                        typer.echo(f"report    {written}", err=result is None or json_stream)
                if json_stream and not on_stdout:
                    json_line(doc)
    rate = result.size * 8 / result.duration_s if result.duration_s > 0 else 0.0
    typer.echo(
        f"sent {result.name} ({format_size(result.size)}) in {result.duration_s:.3f} s "
        f"({format_rate(rate)}); receiver verified {result.verdict}",
        err=on_stdout or json_stream,
    )


def _streaming(inner: ProgressFactory, side: str, every: float | None) -> ProgressFactory:
    """``inner``'s displays, each also printing ``--json-stream`` records when ``every``."""
    if every is None:
        return inner

    def factory(label: str, total: int) -> Progress:
        return _Tee(inner(label, total), ByteStream(side, label, every, json_line, time.monotonic))

    return factory


class _Tee:
    """Two progress displays as one."""

    def __init__(self, first: Progress, second: Progress) -> None:
        self._displays = (first, second)

    def update(self, n: int) -> None:
        for display in self._displays:
            display.update(n)

    def close(self) -> None:
        for display in self._displays:
            display.close()


class _CountingProgress:
    """A progress factory that also counts the bytes done (for the sender's report)."""

    def __init__(self, inner: ProgressFactory) -> None:
        self._inner = inner
        self.started = False
        self.done = 0

    def __call__(self, label: str, total: int) -> Progress:
        self.started = True
        bar = self._inner(label, total)
        outer = self

        class _Counted:
            def update(self, n: int) -> object:
                outer.done += n
                return bar.update(n)

            def close(self) -> object:
                return bar.close()

        return _Counted()


@tcp_app.command("recv", short_help="Receive files over TCP, a JSON report for each.")
def tcp_recv(
    bind: Annotated[str, typer.Option(metavar="ADDR", help=BIND_HELP)] = str(
        defaults.TCP_TRANSFER_PORT
    ),
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="Directory for received files (created if needed).")
    ] = Path("received"),
    report: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Where to write each transfer's JSON report: a file (never replaced: an "
            "existing name gets -1, -2...), a directory (an existing one, or PATH/), - for "
            "stdout (one report per line; the log goes to stderr), or a FIFO. "
            "Default: reports/<UTC time>-<name>.json.",
            show_default=False,
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="Exit after one transfer; the exit status is its verdict."),
    ] = False,
    idle_timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0.1,
            help="Seconds of sender silence before a transfer is abandoned.",
        ),
    ] = DEFAULT_IDLE_TIMEOUT_S,
    json_stream: JsonStreamOption = False,
    interval: IntervalOption = DEFAULT_INTERVAL_S,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Receive files sent with "udpxfer tcp send" and write a JSON report for each.

    A file is written as NAME.partial, renamed to NAME once its SHA-256 matches;
    a transfer that breaks off leaves the .partial and a report saying so.
    With --once the exit status is that transfer's: 0 verified, 1 not.
    Ctrl-C or SIGTERM: exit 0 when idle, 130 during a transfer.
    """
    # The receiver writes reports (numpy, the analysis): loaded for this command only.
    from udpxfer.companions.runtime import timestamped
    from udpxfer.companions.tcp_receiver import run_tcp_receiver

    with guarded():
        target = check_target(report, what="--report") if report is not None else None
        on_stdout = target is not None and is_stdout(target)
        every = stream_interval(json_stream, interval)
        log = timestamped(lambda line: typer.echo(line, err=on_stdout or json_stream))
        result = run_tcp_receiver(
            bind_address(bind),
            out,
            log=log,
            # With the stream, each report is its last line: not a second copy on stdout.
            report=Path(os.devnull) if json_stream and on_stdout else target,
            once=once,
            idle_timeout_s=idle_timeout,
            progress=_streaming(_progress(quiet), "recv", every),
            on_report=json_line if json_stream else None,
        )
    log(result.summary())
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if once and not (result.once_report and result.once_report["file"]["verified"]):
        raise typer.Exit(EXIT_INCOMPLETE)
