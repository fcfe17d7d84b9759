"""The TCP echo server and client, over real loopback sockets."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import socket
import struct

import pytest
from companion_helpers import background, run_cli, running, wait_for

from udpxfer.companions.echo import EchoSession, run_echo_client, run_echo_server
from udpxfer.errors import TransportError
from udpxfer.units import Address


def _messages(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [1, 2, 100, 1400, 4096, 65_536, 200_000]
    return [
        rng.randbytes(rng.choice(sizes) if i % 5 else rng.randrange(1, 50)) for i in range(count)
    ]


async def _echo_client(port: int, messages: list[bytes]) -> bool:
    """Send each message and read exactly its echo back; true if every byte matched."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for message in messages:
            writer.write(message)
            await writer.drain()
            if await reader.readexactly(len(message)) != message:
                return False
        writer.write_eof()
        return await reader.read() == b""
    finally:
        writer.close()
        await writer.wait_closed()


def test_fifty_concurrent_clients_get_every_byte_back_in_order() -> None:
    streams = [_messages(seed, 200) for seed in range(50)]

    async def clients(port: int) -> list[bool]:
        return await asyncio.gather(*(_echo_client(port, msgs) for msgs in streams))

    with running(run_echo_server) as server:
        results = asyncio.run(asyncio.wait_for(clients(server.control.port), 60))
        wait_for(lambda: sum("Client disconnected" in line for line in server.logs) == 50)
        stats = server.stop()
    assert all(results)
    total = sum(len(m) for msgs in streams for m in msgs)
    assert (stats.clients, stats.bytes_in, stats.bytes_out) == (50, total, total)


def test_clients_are_numbered_and_logged_in_order() -> None:
    with running(run_echo_server) as server:
        for number in range(1, 6):
            with socket.create_connection(("127.0.0.1", server.control.port), timeout=10) as sock:
                sock.sendall(b"ping")
                assert sock.recv(16) == b"ping"
                wait_for(lambda n=number: server.logged(f"Client connected {n} from 127.0.0.1:"))
            wait_for(lambda n=number: f"Client disconnected: {n}" in server.logs)
        server.stop()
    events = [line for line in server.logs if line.startswith("Client")]
    expected = []
    for n in range(1, 6):
        expected += [f"Client connected {n}", f"Client disconnected: {n}"]
    assert [re.sub(r" from \S+$", "", e) for e in events] == expected
    assert server.logs[0].startswith("TCP echo server listening on 127.0.0.1:")


def test_server_survives_resets_half_closes_and_junk() -> None:
    with running(run_echo_server) as server:
        port = server.control.port
        for i in range(30):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(random.Random(i).randbytes(100_000))  # never read back
            if i % 3 == 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif i % 3 == 1:
                sock.shutdown(socket.SHUT_WR)
            sock.close()
        for _ in range(20):  # reset before the server even reads
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        wait_for(lambda: sum("Client disconnected" in line for line in server.logs) == 50)
        assert asyncio.run(_echo_client(port, [b"still here"]))
        server.stop()


def test_library_client_writes_echoes_and_stops_at_quit() -> None:
    received: list[bytes] = []
    said: list[str] = []
    with running(run_echo_server) as server:
        session = run_echo_client(
            server.address,
            iter([b"hello\n", "héllo wörld\n".encode(), b"Quit\r\n", b"never sent\n"]),
            write=received.append,
            say=said.append,
        )
    assert session == EchoSession(bytes_sent=20, bytes_received=20, server_closed=True)
    assert b"".join(received) == "hello\nhéllo wörld\n".encode()
    assert said[0].startswith("Connected to 127.0.0.1:")
    assert said[-1] == "Disconnected from server."


def test_library_client_refused_is_a_transport_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = Address("127.0.0.1", probe.getsockname()[1])
        with pytest.raises(TransportError, match="refused"):
            run_echo_client(address, iter([]), write=print, say=print)


def test_interactive_client_through_a_pipe() -> None:
    with running(run_echo_server) as server:
        done = run_cli(
            "tcp",
            "echo-client",
            "--to",
            f"127.0.0.1:{server.control.port}",
            input=b"first line\nsecond line\nQuit\nafter quit\n",
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Connected to 127.0.0.1:")
    assert lines[1:] == ["first line", "second line", "Disconnected from server."]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_server_stops_cleanly_with_a_summary(sig: int) -> None:
    with background("tcp", "echo-server", "--bind", "127.0.0.1:0") as server:
        port = server.port()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"12345")
            assert sock.recv(16) == b"12345"
            server.expect(r"Client connected 1 from")
            server.signal(sig)
            assert server.finish() == 0, server.stderr
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} Client connected 1", server.lines[1])
    assert "Client disconnected: 1" in server.lines[-2], server.lines
    assert server.lines[-1].endswith(
        "TCP echo server stopped: 1 client served, 5 bytes received, 5 bytes sent"
    )
    assert server.stderr == ""


def test_cli_server_on_a_busy_port_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = run_cli("tcp", "echo-server", "--bind", f"127.0.0.1:{taken.getsockname()[1]}")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "already in use" in done.stderr
