"""``udpxfer tcp ...`` and ``udpxfer udp ...``: the lab companions and the TCP transfer.

Servers log to stdout with timestamps, stop cleanly on Ctrl-C or SIGTERM with a one-line
summary, and exit 0. Clients exit 130 when interrupted.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from udpxfer.cli.application import EXIT_INCOMPLETE, EXIT_INTERRUPTED, guarded, tcp_app, udp_app
from udpxfer.cli.progress import TransferBar, show_progress
from udpxfer.cli.transfer import (
    DEFAULT_IDLE_TIMEOUT_S,
    IntervalOption,
    JsonStreamOption,
    stream_interval,
)
from udpxfer.cli.watch import json_line
from udpxfer.companions import defaults
from udpxfer.errors import TransferError, UsageError
from udpxfer.net.sockets import ALL_INTERFACES, LOOPBACK
from udpxfer.reports.output import check_target, is_stdout, write_report
from udpxfer.reports.stream import DEFAULT_INTERVAL_S, ByteStream
from udpxfer.units import (
    Address,
    format_rate,
    format_size,
    parse_address,
    parse_peer_address,
    parse_size,
)

if TYPE_CHECKING:
    from udpxfer.companions.runtime import Progress, ProgressFactory
    from udpxfer.companions.tcp_transfer import SendResult
    from udpxfer.companions.udp_echo import EchoReply

# The companion programs (asyncio and all) are imported by their own commands only, so that
# loading the CLI for another command, such as "udpxfer send", does not pay for them.

_BIND_HELP = (
    "Where to listen: PORT (all interfaces, IPv4 and IPv6), HOST:PORT or [v6addr]:PORT. "
    "Port 0 picks a free port; the log says which."
)
_TO_HELP = "The server: PORT (on this machine), HOST:PORT or [v6addr]:PORT."


def _bind(text: str) -> Address:
    return parse_address(text, default_host=ALL_INTERFACES)


def _to(text: str) -> Address:
    return parse_peer_address(text, default_host=LOOPBACK)


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _progress(quiet: bool) -> ProgressFactory:
    """Bars on stderr, unless ``--quiet`` or stderr is not a terminal."""
    from udpxfer.companions.runtime import NoProgress

    if not show_progress(quiet):
        return NoProgress

    def bar(label: str, total: int) -> Progress:
        return TransferBar(label, total)

    return bar


# ---------------------------------------------------------------- TCP echo


@tcp_app.command("echo-server", short_help="Echo each client's bytes back, many at once.")
def echo_server(
    bind: Annotated[str, typer.Option(metavar="ADDR", help=_BIND_HELP)] = str(defaults.ECHO_PORT),
) -> None:
    """Echo every byte each client sends back to it (many clients at once).

    Clients are numbered in order of arrival, and logged with a timestamp:
    "Client connected N from HOST:PORT", then "Client disconnected: N".
    Ctrl-C or SIGTERM stops the server; it prints a summary and exits 0.

    Try it with: udpxfer tcp echo-client (or nc localhost 8000)
    """
    from udpxfer.companions import echo
    from udpxfer.companions.runtime import timestamped

    log = timestamped(typer.echo)
    with guarded():
        stats = echo.run_echo_server(_bind(bind), log=log)
    log(stats.summary("TCP echo server"))


@tcp_app.command("echo-client", short_help="Send typed lines to an echo server.")
def echo_client(
    to: Annotated[str, typer.Option(metavar="ADDR", help=_TO_HELP)] = str(defaults.ECHO_PORT),
    timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0.1,
            help="Seconds to wait for the connection, and for the server to close after Quit.",
        ),
    ] = 5.0,
) -> None:
    """Send each line you type to an echo server and print what comes back.

    A line "Quit" (or Ctrl-D) closes our side of the connection;
    the client ends when the server closes, and says so.

    From a pipe: printf 'hello\\nQuit\\n' | udpxfer tcp echo-client
    """
    from udpxfer.companions import echo
    from udpxfer.companions.runtime import read_lines

    with guarded():
        echo.run_echo_client(
            _to(to),
            read_lines(sys.stdin.fileno()),
            write=_write_stdout,
            say=typer.echo,
            timeout_s=timeout,
        )


# ---------------------------------------------------------------- palindrome


@tcp_app.command(
    "palindrome-server", short_help="Say whether each line a client sends is a palindrome."
)
def palindrome_server(
    bind: Annotated[str, typer.Option(metavar="ADDR", help=_BIND_HELP)] = str(
        defaults.PALINDROME_PORT
    ),
    strict: Annotated[
        bool,
        typer.Option(
            help="Compare each line's exact code points. By default case, accents and "
            "everything but letters and digits are ignored."
        ),
    ] = False,
    explain: Annotated[
        bool,
        typer.Option(
            help="Follow each verdict with a tab and the normalised form that was compared."
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log every request and its answer.")
    ] = False,
) -> None:
    """Answer whether each line a client sends is a palindrome.

    One UTF-8 line per request, one line per answer, in order:
    PALINDROME, NOT PALINDROME or ERROR <reason>.
    By default case, accents and all but letters and digits are ignored,
    so "A man, a plan, a canal: Panama" is a palindrome.
    A line over 64 KiB, or not UTF-8, gets an ERROR; the connection stays open.

    Try it with: udpxfer tcp palindrome-client (or nc localhost 8001)
    """
    from udpxfer.companions import palindrome_tcp
    from udpxfer.companions.runtime import timestamped

    log = timestamped(typer.echo)
    with guarded():
        stats = palindrome_tcp.run_palindrome_server(
            _bind(bind), strict=strict, explain=explain, verbose=verbose, log=log
        )
    log(stats.summary("Palindrome server", "request answered"))


@tcp_app.command("palindrome-client", short_help="Ask a palindrome server about strings.")
def palindrome_client(
    strings: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="STRING",
            help="Strings to check, one answer line each. Without any, lines are read "
            "from stdin (type them, Ctrl-D ends).",
            show_default=False,
        ),
    ] = None,
    to: Annotated[str, typer.Option(metavar="ADDR", help=_TO_HELP)] = str(defaults.PALINDROME_PORT),
    timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", min=0.1, help="Seconds to wait for the connection and each answer."
        ),
    ] = 10.0,
) -> None:
    """Ask a palindrome server about each string and print its answers, in order.

    Example: udpxfer tcp palindrome-client "Ésope reste ici et se repose" hello
    prints one answer line per string:
    PALINDROME
    NOT PALINDROME
    """
    from udpxfer.companions import palindrome_tcp
    from udpxfer.companions.runtime import read_lines

    with guarded():
        if strings:
            lines = [palindrome_tcp.request_line(text) for text in strings]
            palindrome_tcp.run_palindrome_client(
                _to(to), lines, on_answer=typer.echo, timeout_s=timeout
            )
            return
        if sys.stdin.isatty():
            typer.echo("Type a line to check it; Ctrl-D ends.", err=True)
        palindrome_tcp.run_palindrome_client(
            _to(to), read_lines(sys.stdin.fileno()), on_answer=typer.echo, timeout_s=timeout
        )


# ---------------------------------------------------------------- UDP echo


@udp_app.command("echo-server", short_help="Echo every datagram back, logging each.")
def udp_echo_server(
    bind: Annotated[str, typer.Option(metavar="ADDR", help=_BIND_HELP)] = str(
        defaults.UDP_ECHO_PORT
    ),
    close_after: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            min=0.0,
            help="Close after this many seconds (the original closed after 8). "
            "Default: run until Ctrl-C or SIGTERM.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Echo every datagram back to its sender, logging its text, size and sender.

    The log starts with the address, port and family the server listens on.
    Try it with: udpxfer udp echo-client hello world
    """
    from udpxfer.companions import udp_echo
    from udpxfer.companions.runtime import timestamped

    log = timestamped(typer.echo)
    with guarded():
        stats = udp_echo.run_udp_echo_server(_bind(bind), close_after_s=close_after, log=log)
    log(stats.summary("UDP echo server", "datagram echoed"))


@udp_app.command("echo-client", short_help="Time echoes from a UDP echo server, like ping.")
def udp_echo_client(
    buffers: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="TEXT",
            help="Text sent as ONE datagram: several buffers are joined, so 'hello world' "
            "arrives as 'helloworld'. Without any, a generated payload of --size bytes.",
            show_default=False,
        ),
    ] = None,
    to: Annotated[str, typer.Option(metavar="ADDR", help=_TO_HELP)] = str(defaults.UDP_ECHO_PORT),
    count: Annotated[
        int,
        typer.Option(
            "--count", "-c", metavar="N", min=0, help="Datagrams to send; 0 = until Ctrl-C."
        ),
    ] = 1,
    interval: Annotated[
        float,
        typer.Option("--interval", "-i", metavar="SECONDS", min=0.0, help="Seconds between sends."),
    ] = 1.0,
    size: Annotated[
        str | None,
        typer.Option(
            "--size",
            "-s",
            metavar="SIZE",
            help="Generated payload size (e.g. 1400, 8K) when no buffers are given "
            f"[default: {defaults.UDP_ECHO_PAYLOAD_BYTES}].",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", "-W", metavar="SECONDS", min=0.001, help="Seconds to wait for each echo."
        ),
    ] = 1.0,
) -> None:
    """Send datagrams to a UDP echo server and time the echoes, like ping.

    Prints each echo with its round-trip time, then
    "N transmitted, M received, X% lost; rtt min/avg/max/mdev = a/b/c/d ms".
    Exit status: 0 if at least one echo came back, 1 if all were lost, 130 on Ctrl-C.
    """
    from udpxfer.companions import udp_echo
    from udpxfer.companions.rtt import PingStats
    from udpxfer.companions.runtime import printable

    stats = PingStats()
    parts = [text.encode("utf-8", errors="surrogateescape") for text in buffers or []]

    def on_echo(reply: EchoReply) -> None:
        typer.echo(
            f"{len(reply.data)} bytes from {reply.peer}: seq={reply.seq} "
            f"time={reply.rtt_ms:.3f} ms: {printable(reply.data, 60)}"
        )

    def on_loss(seq: int, reason: str) -> None:
        typer.echo(f"seq={seq}: {reason}")

    with guarded():
        if parts and size is not None:
            raise UsageError("give buffers or --size, not both")
        target = _to(to)
        try:
            udp_echo.run_udp_echo_client(
                target,
                parts,
                stats=stats,
                size=None if size is None else parse_size(size),
                count=count,
                interval_s=interval,
                timeout_s=timeout,
                on_echo=on_echo,
                on_loss=on_loss,
            )
        finally:
            if stats.transmitted:
                typer.echo(f"--- {target} UDP echo statistics ---")
                typer.echo(stats.summary())
    if not stats.received:
        raise typer.Exit(EXIT_INCOMPLETE)


# ---------------------------------------------------------------- TCP file transfer


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
        address = _to(to)
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
    bind: Annotated[str, typer.Option(metavar="ADDR", help=_BIND_HELP)] = str(
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
            _bind(bind),
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
