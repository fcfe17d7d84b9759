"""What the companion servers share: timestamped logs, client numbering, clean shutdown.

Every server is a coroutine that binds, calls ``ready`` with a :class:`ServerControl` (the
bound address and a thread-safe ``stop``), serves until its stop event is set, then returns
its :class:`ServerStats`. :func:`run_until_stopped` runs one under ``asyncio.run`` and turns
SIGINT/SIGTERM into that stop event, so Ctrl-C ends a server cleanly with its summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Protocol, TypeVar

from udpxfer.errors import TransportError, UsageError
from udpxfer.net.sockets import SockAddr, bind_socket
from udpxfer.units import Address, format_sockaddr

T = TypeVar("T")
Log = Callable[[str], None]

# Enough room for a burst of hundreds of simultaneous connects (the kernel caps it at somaxconn).
LISTEN_BACKLOG = 1024
READ_BYTES = 1 << 16


def timestamped(emit: Log) -> Log:
    """Wrap ``emit`` so every line starts with local date and time to the millisecond."""

    def log(message: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        emit(f"{stamp}.{int(now * 1000) % 1000:03d} {message}")

    return log


def peer_of(writer: asyncio.StreamWriter) -> str:
    """The client's address, or ``unknown peer`` when it reset before we could ask."""
    peer = writer.get_extra_info("peername")
    return format_sockaddr(peer) if peer else "unknown peer"


def describe_socket(sock: socket.socket) -> str:
    """Where a bound socket listens, with its family: ``[::]:2222 (IPv6, dual-stack)``."""
    where = format_sockaddr(sock.getsockname())
    if sock.family == socket.AF_INET:
        return f"{where} (IPv4)"
    dual = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    return f"{where} (IPv6{', dual-stack' if dual else ''})"


def printable(data: bytes, limit: int = 80) -> str:
    """Network bytes as one safe log line: UTF-8 where valid, escaped elsewhere, cut short."""
    text = data[: limit * 4].decode("utf-8", errors="backslashreplace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(data)} bytes)"


@dataclass(frozen=True, slots=True)
class ServerControl:
    """Handed to ``ready`` once a server listens: its address and a thread-safe stop."""

    address: SockAddr
    stop: Callable[[], None]

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return int(self.address[1])


Ready = Callable[[ServerControl], None]


class Progress(Protocol):
    """A progress display (a ``tqdm`` bar fits): told of bytes done, closed at the end."""

    def update(self, n: int) -> object: ...

    def close(self) -> object: ...


ProgressFactory = Callable[[str, int], Progress]  # (label, total bytes) -> display


class NoProgress:
    """The display that shows nothing."""

    def __init__(self, label: str = "", total: int = 0) -> None:
        pass

    def update(self, n: int) -> None:
        """Ignore ``n``."""

    def close(self) -> None:
        """Nothing to close."""


@dataclass(slots=True)
class ServerStats:
    """Counters every server keeps; ``summary`` is its one-line goodbye."""

    clients: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def summary(self, name: str, request: str = "") -> str:
        """``NAME stopped: 3 clients served, 120 bytes received, 120 bytes sent``.

        ``request`` (e.g. ``"datagram echoed"``) adds the request count, pluralised.
        """
        parts = [counted(self.clients, "client served")]
        if request:
            parts.append(counted(self.requests, request))
        parts += [f"{self.bytes_in} bytes received", f"{self.bytes_out} bytes sent"]
        return f"{name} stopped: {', '.join(parts)}"


def counted(n: int, phrase: str) -> str:
    """``1 client served``, ``2 clients served``: the first word takes the plural."""
    noun, _, rest = phrase.partition(" ")
    return f"{n} {noun}{'' if n == 1 else 's'}{' ' if rest else ''}{rest}"


def control_for(sock: socket.socket, stop: asyncio.Event) -> ServerControl:
    """A :class:`ServerControl` for ``sock`` whose ``stop`` may be called from any thread."""
    loop = asyncio.get_running_loop()

    def stop_soon() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: already stopped
            loop.call_soon_threadsafe(stop.set)

    return ServerControl(sock.getsockname(), stop_soon)


def run_until_stopped(
    main: Callable[[asyncio.Event], Awaitable[T]], *, handle_signals: bool = True
) -> T:
    """Run ``main(stop)`` in a fresh event loop; SIGINT and SIGTERM set ``stop``.

    The handlers stay in place after the loop ends: a second signal while the server shuts
    down and prints its summary is ignored, where the default action would kill it (exit
    143). Signal handling needs the main thread (tests run servers in threads and pass False).
    """

    async def runner() -> T:
        stop = asyncio.Event()
        if handle_signals:
            loop = asyncio.get_running_loop()

            def on_signal(signum: int, frame: FrameType | None) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: stopping already
                    loop.call_soon_threadsafe(stop.set)

            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError):  # not the main thread
                    signal.signal(sig, on_signal)
        return await main(stop)

    return asyncio.run(runner())


# Serves one TCP client; the int is the client's 1-based arrival number.
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def serve_tcp(
    bind: Address,
    handler: ConnectionHandler,
    *,
    name: str,
    stop: asyncio.Event,
    stats: ServerStats,
    log: Log,
    ready: Ready | None = None,
    log_clients: bool = True,
    stream_limit: int = READ_BYTES,
) -> ServerStats:
    """Accept TCP clients on ``bind`` until ``stop``, numbering and logging each one.

    Logs ``Client connected N`` and ``Client disconnected: N`` (the seed's phrases) unless
    ``log_clients`` is false. A reset, a half-open peer or any socket error ends only that
    client. On stop, listening ends, the clients still connected are closed, and ``stats`` is
    returned.

    Raises:
        UsageError: the address is in use or unavailable.
    """
    sock = bind_socket(bind, socket.SOCK_STREAM)
    tasks: set[asyncio.Task[None]] = set()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats.clients += 1
        number = stats.clients
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        if log_clients:
            log(f"Client connected {number} from {peer_of(writer)}")
        note = ""
        try:
            await handler(reader, writer, number)
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, ...
            note = f" ({exc.strerror or type(exc).__name__})"
        except asyncio.CancelledError:
            note = " (server stopping)"  # swallowed: this task is the top of its stack
        finally:
            if note:
                writer.transport.abort()  # a reset or a stop: nothing more to flush
            else:
                writer.close()
            tasks.discard(task)
            if log_clients:
                log(f"Client disconnected: {number}{note}")

    server = await asyncio.start_server(
        on_client, sock=sock, backlog=LISTEN_BACKLOG, limit=stream_limit
    )
    log(f"{name} listening on {describe_socket(sock)}")
    if ready is not None:
        ready(control_for(sock, stop))
    try:
        await stop.wait()
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
    return stats


def connect_tcp(to: Address, timeout_s: float) -> socket.socket:
    """Open a TCP connection to ``to`` (every address the name resolves to is tried).

    The socket is returned in blocking mode without a timeout.

    Raises:
        UsageError: the host name does not resolve.
        TransportError: nobody listens there, or the connection attempt timed out.
    """
    try:
        sock = socket.create_connection((to.host, to.port), timeout=timeout_s)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve {to.host!r}: {exc.strerror}") from exc
    except TimeoutError as exc:
        raise TransportError(f"cannot connect to {to}: timed out after {timeout_s:g} s") from exc
    except OSError as exc:
        hint = " (is the server running?)" if exc.errno == errno.ECONNREFUSED else ""
        raise TransportError(f"cannot connect to {to}: {exc.strerror}{hint}") from exc
    sock.settimeout(None)
    return sock


def read_lines(fd: int) -> Iterator[bytes]:
    """Lines (with their ``\\n``) read from a file descriptor, the last one possibly without.

    Reads with ``os.read``, not a buffered file object: a thread blocked here holds no
    interpreter-level lock, so the process can exit while it waits for the keyboard.
    """
    pending = b""
    while chunk := os.read(fd, READ_BYTES):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line + b"\n" for line in lines)
    if pending:
        yield pending
