"""The palindrome exercise over TCP: a line-per-request server and its client.

The protocol logic (framing, normalisation, answers) is in :mod:`udpxfer.companions.palindrome`;
this module only moves its bytes.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterable

from udpxfer.companions import defaults
from udpxfer.companions.palindrome import Line, LineFramer, answer
from udpxfer.companions.runtime import (
    READ_BYTES,
    Log,
    Ready,
    ServerStats,
    connect_tcp,
    printable,
    run_until_stopped,
    serve_tcp,
)
from udpxfer.errors import TransferError, UsageError
from udpxfer.units import Address

DEFAULT_PORT = defaults.PALINDROME_PORT
# The normalised form can be longer than the line (NFKD expands some characters up to 18 times).
MAX_ANSWER_BYTES = 8 << 20


def run_palindrome_server(
    bind: Address,
    *,
    strict: bool = False,
    explain: bool = False,
    log: Log,
    verbose: bool = False,
    ready: Ready | None = None,
    handle_signals: bool = True,
) -> ServerStats:
    """Answer palindrome requests on ``bind`` until SIGINT/SIGTERM; return counters.

    Args:
        strict: compare the lines' code points as they are instead of the normalised forms.
        explain: follow each default-mode verdict with a tab and the normalised form.
        verbose: log every request and its answer.

    Raises:
        UsageError: the address is in use or unavailable.
    """
    stats = ServerStats()

    async def serve(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int
    ) -> None:
        framer = LineFramer()
        while True:
            data = await reader.read(READ_BYTES)
            stats.bytes_in += len(data)
            requests = framer.feed(data) if data else framer.finish()
            for request in requests:
                reply = answer(request, strict=strict, explain=explain)
                if verbose:
                    shown = printable(request.data, 60) if isinstance(request, Line) else "(long)"
                    log(f"{number}: {shown} -> {printable(reply.encode(), 60)}")
                encoded = reply.encode("utf-8") + b"\n"
                writer.write(encoded)
                stats.bytes_out += len(encoded)
                stats.requests += 1
            await writer.drain()
            if not data:
                return

    async def main(stop: asyncio.Event) -> ServerStats:
        name = f"Palindrome server ({'strict' if strict else 'normalised'} comparison)"
        return await serve_tcp(bind, serve, name=name, stop=stop, stats=stats, log=log, ready=ready)

    return run_until_stopped(main, handle_signals=handle_signals)


def request_line(text: str) -> bytes:
    """One command-line string as a request line (its original bytes, plus ``\\n``).

    Raises:
        UsageError: the string contains a newline, which would make it two requests.
    """
    data = os.fsencode(text)
    if b"\n" in data:
        raise UsageError("a string to check cannot contain a newline (one line per request)")
    return data + b"\n"


def run_palindrome_client(
    to: Address,
    lines: Iterable[bytes],
    *,
    on_answer: Callable[[str], None],
    timeout_s: float = 10.0,
) -> int:
    """Send each line and hand its answer to ``on_answer``, one after the other.

    Returns:
        The number of answers received.

    Raises:
        TransportError: the server cannot be reached.
        TransferError: the server closed, reset or went silent for ``timeout_s``.
    """
    answered = 0
    with connect_tcp(to, timeout_s) as sock:
        sock.settimeout(timeout_s)
        replies = sock.makefile("rb")
        try:
            for line in lines:
                sock.sendall(line if line.endswith(b"\n") else line + b"\n")
                reply = replies.readline(MAX_ANSWER_BYTES)
                if not reply.endswith(b"\n"):
                    raise TransferError(f"{to} closed the connection without answering")
                on_answer(reply.rstrip(b"\r\n").decode("utf-8", errors="replace"))
                answered += 1
            sock.shutdown(socket.SHUT_WR)
        except TimeoutError as exc:
            raise TransferError(f"no answer from {to} within {timeout_s:g} s") from exc
        except OSError as exc:
            raise TransferError(f"connection to {to} lost: {exc.strerror}") from exc
        finally:
            replies.close()
    return answered
