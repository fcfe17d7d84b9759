"""``udpxfer tcp echo-*|palindrome-*`` and ``udpxfer udp echo-*``: the lab companions.

Servers log to stdout with timestamps, stop cleanly on Ctrl-C or SIGTERM with a one-line
summary, and exit 0. Clients exit 130 when interrupted. The address options here serve
``udpxfer tcp send|recv`` (``cli.tcp_transfer``) too.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from udpxfer.cli.application import EXIT_INCOMPLETE, guarded, tcp_app, udp_app
from udpxfer.companions import defaults
from udpxfer.errors import UsageError
from udpxfer.net.sockets import ALL_INTERFACES, LOOPBACK
from udpxfer.units import Address, parse_address, parse_peer_address, parse_size

if TYPE_CHECKING:
    from udpxfer.companions.udp_echo import EchoReply


# The companion programs (asyncio and all) are imported by their own commands only, so that
# loading the CLI for another command, such as "udpxfer send", does not pay for them.

BIND_HELP = (
    "Where to listen: PORT (all interfaces, IPv4 and IPv6), HOST:PORT or [v6addr]:PORT. "
    "Port 0 picks a free port; the log says which."
)
TO_HELP = "The server: PORT (on this machine), HOST:PORT or [v6addr]:PORT."


def bind_address(text: str) -> Address:
    """``--bind``: a bare port listens on all interfaces."""
    return parse_address(text, default_host=ALL_INTERFACES)


def peer_address(text: str) -> Address:
    """``--to``: a bare port is on this machine."""
    return parse_peer_address(text, default_host=LOOPBACK)


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# ---------------------------------------------------------------- TCP echo


@tcp_app.command("echo-server", short_help="Echo each client's bytes back, many at once.")
def echo_server(
    bind: Annotated[str, typer.Option(metavar="ADDR", help=BIND_HELP)] = str(defaults.ECHO_PORT),
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
        stats = echo.run_echo_server(bind_address(bind), log=log)
    log(stats.summary("TCP echo server"))


@tcp_app.command("echo-client", short_help="Send typed lines to an echo server.")
def echo_client(
    to: Annotated[str, typer.Option(metavar="ADDR", help=TO_HELP)] = str(defaults.ECHO_PORT),
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
            peer_address(to),
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
    bind: Annotated[str, typer.Option(metavar="ADDR", help=BIND_HELP)] = str(
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
            bind_address(bind), strict=strict, explain=explain, verbose=verbose, log=log
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
    to: Annotated[str, typer.Option(metavar="ADDR", help=TO_HELP)] = str(defaults.PALINDROME_PORT),
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
                peer_address(to), lines, on_answer=typer.echo, timeout_s=timeout
            )
            return
        if sys.stdin.isatty():
            typer.echo("Type a line to check it; Ctrl-D ends.", err=True)
        palindrome_tcp.run_palindrome_client(
            peer_address(to),
            read_lines(sys.stdin.fileno()),
            on_answer=typer.echo,
            timeout_s=timeout,
        )


# ---------------------------------------------------------------- UDP echo


@udp_app.command("echo-server", short_help="Echo every datagram back, logging each.")
def udp_echo_server(
    bind: Annotated[str, typer.Option(metavar="ADDR", help=BIND_HELP)] = str(
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
        stats = udp_echo.run_udp_echo_server(bind_address(bind), close_after_s=close_after, log=log)
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
    to: Annotated[str, typer.Option(metavar="ADDR", help=TO_HELP)] = str(defaults.UDP_ECHO_PORT),
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
        target = peer_address(to)
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
