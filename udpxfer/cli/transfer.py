"""``udpxfer send`` and ``udpxfer recv``."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from udpxfer.cli.application import EXIT_INCOMPLETE, EXIT_OK, app, fail, guarded
from udpxfer.cli.keys import KeyFileOption, NoEncryptOption, load_key
from udpxfer.cli.progress import show_progress
from udpxfer.cli.signals import handled
from udpxfer.cli.watch import RecvObserver, SendWatch, human, json_line
from udpxfer.errors import TransferError
from udpxfer.net.receiving import ReceiverServer
from udpxfer.net.sending import send_file
from udpxfer.net.sockets import ALL_INTERFACES, LOOPBACK
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.wire import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_KEYED_CHUNK_BYTES,
    MAX_CHUNK_BYTES,
    Mode,
)
from udpxfer.reports.output import check_target, is_directory_target, is_stdout, write_report
from udpxfer.reports.send_report import send_report, send_summary
from udpxfer.reports.stream import (
    DEFAULT_INTERVAL_S,
    MIN_INTERVAL_S,
)
from udpxfer.units import (
    format_size,
    parse_address,
    parse_peer_address,
    parse_rate,
    parse_size,
)

# Only what "send" needs is imported up front; the receiver and its reports (numpy, the
# analysis) load where they are used, so that a sender's first datagram leaves sooner.

DEFAULT_PORT = 9000
DEFAULT_IDLE_TIMEOUT_S = 20.0  # recv and tcp recv alike


class ModeChoice(StrEnum):
    """Transfer modes as typed on the command line."""

    reliable = "reliable"
    blast = "blast"


def stream_interval(json_stream: bool, interval: float) -> float | None:
    """``--interval`` checked; the seconds between records, or None without ``--json-stream``."""
    if interval < MIN_INTERVAL_S:
        fail(f"--interval must be at least {MIN_INTERVAL_S} s")
    return interval if json_stream else None


_ADDR_SEND_HELP = "Receiver address: HOST:PORT, [v6addr]:PORT, or a bare PORT (loopback)."
STREAM_HELP = (
    "Print one JSON object per --interval on stdout while the transfer runs (bytes, chunks, "
    "loss, rate, window, RTT; per interval and cumulative), then the final report as the "
    "last line. Human output goes to stderr."
)
INTERVAL_HELP = "Seconds between two --json-stream records (at least 0.1)."
JsonStreamOption = Annotated[bool, typer.Option("--json-stream", help=STREAM_HELP)]
IntervalOption = Annotated[float, typer.Option("--interval", metavar="SECONDS", help=INTERVAL_HELP)]


@app.command()
def send(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The file to send.", show_default=False)
    ],
    to: Annotated[str, typer.Option("--to", metavar="ADDR", help=_ADDR_SEND_HELP)] = str(
        DEFAULT_PORT
    ),
    chunk_size: Annotated[
        str | None,
        typer.Option(
            "--chunk-size",
            metavar="SIZE",
            help=f"Payload bytes per datagram (e.g. 1200, 8K; at most {MAX_CHUNK_BYTES}). "
            f"Default {DEFAULT_CHUNK_BYTES} ({DEFAULT_KEYED_CHUNK_BYTES} with --key-file): a "
            "datagram then fits a 1500-byte Ethernet MTU under IPv6 with udpxfer's header and "
            "check.",
            show_default=False,
        ),
    ] = None,
    rate: Annotated[
        str,
        typer.Option(
            "--rate",
            metavar="RATE",
            help="Pace sending to RATE bits per second (100M = 10^8 bit/s, counting whole UDP "
            "payloads; 12.5MB/s in bytes works too). 0: a congestion controller after BBR "
            "finds the path's bottleneck rate and paces at it, under the receiver's window (no "
            "relay or bottleneck on the path overflows; random loss does not slow it); with a "
            "rate, the pace is yours.",
        ),
    ] = "0",
    mode: Annotated[
        ModeChoice,
        typer.Option(
            "--mode",
            help="reliable: resend what the receiver reports missing until the SHA-256 "
            "matches. blast: send every chunk once and measure what was lost.",
        ),
    ] = ModeChoice.reliable,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            help="Reliable mode: give up after this many seconds without an answer.",
        ),
    ] = 20.0,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", metavar="NAME", help="Name to announce instead of the file's own name."
        ),
    ] = None,
    report: Annotated[
        str | None,
        typer.Option(
            "--report",
            metavar="PATH",
            help="Write the sender's JSON report (udpxfer.send-report/1) to PATH; - for "
            "stdout (then nothing else goes there). An existing file is never replaced: "
            "the report gets a -1, -2 name beside it.",
            show_default=False,
        ),
    ] = None,
    json_stream: JsonStreamOption = False,
    interval: IntervalOption = DEFAULT_INTERVAL_S,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    key_file: KeyFileOption = None,
    no_encrypt: NoEncryptOption = False,
) -> None:
    """Send one FILE to a `udpxfer recv` over UDP.

    Running the same send again after an interruption resumes a reliable
    transfer: only what the receiver does not hold yet travels.

    Exit codes: 0 when the receiver verified the SHA-256 (reliable)
    or once everything was sent (blast); 1 if the transfer failed;
    2 for bad input; 130 on Ctrl-C.

    Example: udpxfer send big.iso --to 192.0.2.7:9000 --rate 500M
    """
    with guarded():
        key = load_key(key_file)
        default_chunk = DEFAULT_CHUNK_BYTES if key is None else DEFAULT_KEYED_CHUNK_BYTES
        config = SenderConfig(
            chunk_size=parse_size(chunk_size) if chunk_size is not None else default_chunk,
            mode=Mode.BLAST if mode is ModeChoice.blast else Mode.RELIABLE,
            rate_bps=parse_rate(rate),
            give_up_s=timeout,
        )
        address = parse_peer_address(to, default_host=LOOPBACK)
        report_target = check_target(report, what="--report") if report is not None else None
        every = stream_interval(json_stream, interval)
        if not file.exists():
            fail(f"{file}: no such file")
        on_stdout = report_target is not None and is_stdout(report_target)
        machine = json_stream or on_stdout
        watch = SendWatch(file, str(address), bar=show_progress(quiet), stream_every=every)
        started = time.time()

        def publish(session: SenderSession) -> dict[str, Any]:
            doc = send_report(session, source=file, peer=str(address), started_unix_s=started)
            if report_target is not None:
                written = write_report(doc, report_target)
                if not on_stdout and not quiet:
                    typer.echo(f"report    {written}", err=machine)
            if json_stream and not on_stdout:
                json_line(doc)
            return doc

        try:
            session = send_file(
                file,
                address,
                config,
                on_progress=watch.update,
                name=name,
                key=key,
                encrypt=not no_encrypt,
            )
        except KeyboardInterrupt:
            watch.close()
            if watch.session is not None:  # the session, aborted: its report all the same
                publish(watch.session)
            raise
        finally:
            watch.close()
        doc = publish(session)
        _conclude_send(session, doc, say=human(machine))


def _conclude_send(
    session: SenderSession, doc: dict[str, Any], *, say: Callable[[str], None]
) -> None:
    ok, line = send_summary(session, doc)
    if not ok:
        raise TransferError(line)
    say(line)
    raise typer.Exit(EXIT_OK)


@app.command(short_help="Receive files over UDP, writing a JSON report for each.")
def recv(
    bind: Annotated[
        str,
        typer.Option(
            "--bind",
            metavar="ADDR",
            help="Address to listen on: HOST:PORT, [v6addr]:PORT, or a bare PORT (all "
            "interfaces, IPv4 and IPv6).",
        ),
    ] = str(DEFAULT_PORT),
    out: Annotated[
        Path,
        typer.Option("--out", metavar="DIR", help="Directory to write received files into."),
    ] = Path("received"),
    report: Annotated[
        str | None,
        typer.Option(
            "--report",
            metavar="PATH",
            help="Where to write each transfer's JSON report: a file (never replaced: an "
            "existing name gets -1, -2...), a directory (an existing one, or PATH/), - for "
            "stdout (one report per line, nothing else there), or a FIFO. "
            "Default: reports/<UTC time>-<name>.json.",
            show_default=False,
        ),
    ] = None,
    trace: Annotated[
        str | None,
        typer.Option(
            "--trace",
            metavar="PATH",
            help="Write each transfer's per-datagram trace (chunk, times, pass, flags) to this "
            "file as the datagrams come (.npy chunks appended; never replaced: -1, -2 names); "
            "`udpxfer report` renders it.",
            show_default=False,
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Exit after the first transfer ends.")
    ] = False,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout",
            metavar="SECONDS",
            help="Give a transfer up after this many silent seconds.",
        ),
    ] = DEFAULT_IDLE_TIMEOUT_S,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            metavar="SECONDS",
            help="Blast mode: seconds to wait after the sender's END for late chunks.",
        ),
    ] = 0.5,
    max_size: Annotated[
        str | None,
        typer.Option(
            "--max-size",
            metavar="SIZE",
            help="Refuse files larger than SIZE (e.g. 10G). Default: no limit but free space.",
            show_default=False,
        ),
    ] = None,
    json_stream: JsonStreamOption = False,
    interval: IntervalOption = DEFAULT_INTERVAL_S,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or start messages.")
    ] = False,
    key_file: KeyFileOption = None,
    no_encrypt: NoEncryptOption = False,
) -> None:
    """Receive files over UDP into --out, writing a JSON report per transfer.

    Files land as NAME.partial and become NAME once the SHA-256 matches;
    an incomplete transfer leaves NAME.partial (holes zero-filled).

    Exit codes with --once: 0 verified, 1 incomplete or unverified.
    Always: 2 for bad input, 130 on Ctrl-C; SIGTERM stops cleanly (0).

    Example: udpxfer recv --bind 9000 --out incoming --once
    """
    from udpxfer.protocol.receiver import ReceiverConfig

    with guarded():
        key = load_key(key_file)
        if idle_timeout <= 0 or grace < 0:
            fail("--idle-timeout must be positive and --grace not negative")
        config = ReceiverConfig(
            idle_timeout_s=idle_timeout,
            blast_grace_s=grace,
            max_file_bytes=parse_size(max_size) if max_size else None,
        )
        report_target = check_target(report, what="--report") if report is not None else None
        trace_target = _trace_target(trace)
        every = stream_interval(json_stream, interval)
        on_stdout = report_target is not None and is_stdout(report_target)
        machine = json_stream or on_stdout
        say = human(machine)
        server_target = report_target
        if json_stream and on_stdout:
            # The stream prints each report as its last line, after the final record; the
            # server's own copy (which it would write before the observer hears) is dropped.
            server_target = Path(os.devnull)
        server = ReceiverServer(
            parse_address(bind, default_host=ALL_INTERFACES),
            out,
            report_path=server_target,
            trace_path=trace_target,
            once=once,
            config=config,
            observer=RecvObserver(
                bars=show_progress(quiet),
                quiet=quiet,
                say=say,
                stream_every=every,
                report_on_stdout=on_stdout,
            ),
            key=key,
            encrypt=not no_encrypt,
            log=lambda line: typer.echo(f"udpxfer: {line}", err=True),
        )
        if key is None and not quiet:
            typer.echo(
                "note: no --key-file: anyone on the path can inject data into a transfer or "
                "forge its verdict (see docs/SECURITY.md)",
                err=True,
            )
        host, port = server.address
        buffers = server.transport.buffers
        if buffers.capped and not quiet:
            typer.echo(
                f"note: the kernel capped the receive buffer at "
                f"{format_size(buffers.recv_granted)} (asked {format_size(buffers.recv_asked)}); "
                "the sender's window shrinks to match. Raise it with "
                f"`sysctl -w net.core.rmem_max={buffers.recv_asked}`.",
                err=True,
            )
        stop = threading.Event()
        # SIGTERM stops the server cleanly (exit 0); Ctrl-C stays KeyboardInterrupt (130).
        with handled(lambda _sig: stop.set(), signal.SIGTERM):
            if not quiet:
                say(f"listening on {'[' + host + ']' if ':' in host else host}:{port}")
            results = server.serve(stop)
        if once:
            ok = bool(results) and results[-1].verified
            raise typer.Exit(EXIT_OK if ok else EXIT_INCOMPLETE)


def _trace_target(text: str | None) -> Path | None:
    """``--trace``: a file path (the trace is binary: no stdout, no directory)."""
    if text is None:
        return None
    if is_directory_target(text):
        fail(
            f"--trace {text}: is a directory; give a file path such as {text.rstrip('/')}/run.trace"
        )
    return check_target(text, what="--trace", allow_stdout=False)
