"""The TCP echo pair: a server that pipes every byte back, and a line-by-line client.

Behaviour kept from the seed: port 8000, numbered clients, ``Client connected N`` /
``Client disconnected: N`` logs, every byte echoed; the client prints a banner, sends each
line it reads, prints what comes back, stops on a line ``Quit`` by closing its side, and says
so when the server closes.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from udpxfer.companions import defaults
from udpxfer.companions.runtime import (
    READ_BYTES,
    Log,
    Ready,
    ServerStats,
    connect_tcp,
    run_until_stopped,
    serve_tcp,
)
from udpxfer.errors import TransferError, map_os_errors
from udpxfer.units import Address

DEFAULT_PORT = defaults.ECHO_PORT
QUIT = b"Quit"
POLL_S = 0.2  # how often the client looks up from the socket to check for the end of input


def run_echo_server(
    bind: Address, *, log: Log, ready: Ready | None = None, handle_signals: bool = True
) -> ServerStats:
    """Serve TCP echo on ``bind`` until SIGINT/SIGTERM (or ``ready``'s stop); return counters.

    Raises:
        UsageError: the address is in use or unavailable.
    """
    stats = ServerStats()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        # Read, write, drain: a client that stops reading stops being read (backpressure).
        while data := await reader.read(READ_BYTES):
            stats.bytes_in += len(data)
            writer.write(data)
            await writer.drain()
            stats.bytes_out += len(data)

    async def main(stop: asyncio.Event) -> ServerStats:
        return await serve_tcp(
            bind, echo, name="TCP echo server", stop=stop, stats=stats, log=log, ready=ready
        )

    return run_until_stopped(main, handle_signals=handle_signals)


@dataclass(frozen=True, slots=True)
class EchoSession:
    """What one client session did."""

    bytes_sent: int
    bytes_received: int
    server_closed: bool


def run_echo_client(
    to: Address,
    lines: Iterable[bytes],
    *,
    write: Callable[[bytes], None],
    say: Log,
    timeout_s: float = 5.0,
) -> EchoSession:
    """Send ``lines`` to an echo server and ``write`` whatever comes back, as it comes.

    Input is consumed by a helper thread so echoes are printed while the user types. A line
    ``Quit`` (or the end of input) closes our sending side; the session then ends when the
    server closes, or ``timeout_s`` later if it does not.

    Raises:
        TransportError: the server cannot be reached.
        TransferError: the connection broke (reset) during the session.
    """
    sock = connect_tcp(to, timeout_s)
    say(f"Connected to {to}. Type lines to send; a line 'Quit' ends the session.")
    input_done = threading.Event()
    sent = [0]

    def pump() -> None:
        try:
            for line in lines:
                if line.rstrip(b"\r\n") == QUIT:
                    break
                sock.sendall(line)
                sent[0] += len(line)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server went away: the reading side reports it
        finally:
            input_done.set()

    threading.Thread(target=pump, name="echo-client-input", daemon=True).start()
    received = 0
    closed_by_server = False
    deadline: float | None = None
    try:
        while True:
            # select, not a socket timeout: the timeout would also cut the sender thread's sendall.
            readable, _, _ = select.select([sock], [], [], POLL_S)
            if not readable:
                if input_done.is_set():
                    deadline = deadline or time.monotonic() + timeout_s
                    if time.monotonic() >= deadline:
                        say(f"Server did not close within {timeout_s:g} s; closing.")
                        break
                continue
            with map_os_errors(TransferError, f"connection to {to} lost"):
                data = sock.recv(READ_BYTES)
            if not data:
                closed_by_server = True
                say("Disconnected from server.")
                break
            received += len(data)
            write(data)
    finally:
        sock.close()
    return EchoSession(sent[0], received, closed_by_server)
