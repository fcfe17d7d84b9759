"""The UDP echo server and the ping-like client, over real loopback sockets."""

from __future__ import annotations

import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from companion_helpers import WAIT_S, background, run_cli, running

from udpxfer.companions.rtt import PingStats
from udpxfer.companions.udp_echo import (
    EchoReply,
    probe_payload,
    run_udp_echo_client,
    run_udp_echo_server,
)
from udpxfer.units import Address

# Decides, per datagram (0-based arrival index and bytes), what a scripted server sends back.
Script = Callable[[int, bytes], list[bytes]]


@contextmanager
def scripted_udp_server(script: Script) -> Iterator[tuple[Address, list[bytes]]]:
    """A loopback UDP socket that answers each datagram as ``script`` says; records arrivals."""
    arrivals: list[bytes] = []
    stop = threading.Event()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65_535)
            except TimeoutError:
                continue
            arrivals.append(data)
            for reply in script(len(arrivals) - 1, data):
                sock.sendto(reply, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Address("127.0.0.1", sock.getsockname()[1]), arrivals
    finally:
        stop.set()
        thread.join(WAIT_S)
        sock.close()


def echo_all(_: int, data: bytes) -> list[bytes]:
    return [data]


def run_client(to: Address, buffers: list[bytes], **kwargs: object) -> tuple[PingStats, list]:
    events: list[EchoReply | tuple[int, str]] = []
    stats = run_udp_echo_client(
        to,
        buffers,
        stats=PingStats(),
        on_echo=events.append,
        on_loss=lambda seq, reason: events.append((seq, reason)),
        **kwargs,  # type: ignore[arg-type]
    )
    return stats, events


def test_several_buffers_arrive_as_one_datagram() -> None:
    with scripted_udp_server(echo_all) as (address, arrivals):
        stats, events = run_client(address, [b"hello", b"world"], timeout_s=5.0)
    assert arrivals == [b"helloworld"]
    assert stats.transmitted == stats.received == 1
    assert isinstance(events[0], EchoReply)
    assert events[0].data == b"helloworld"


def test_losses_are_counted_exactly() -> None:
    dropped = {2, 5, 6}

    def lossy(index: int, data: bytes) -> list[bytes]:
        return [] if index in dropped else [data]

    with scripted_udp_server(lossy) as (address, arrivals):
        stats, events = run_client(address, [], count=10, interval_s=0.0, timeout_s=0.5)
    assert len(arrivals) == 10
    assert (stats.transmitted, stats.received, stats.lost) == (10, 7, 3)
    assert stats.loss_percent == pytest.approx(30.0)
    assert [e for e in events if isinstance(e, tuple)] == [
        (seq, "no echo within 0.5 s") for seq in (3, 6, 7)
    ]
    assert re.fullmatch(
        r"10 transmitted, 7 received, 30% lost; rtt min/avg/max/mdev = "
        r"\d+\.\d{3}/\d+\.\d{3}/\d+\.\d{3}/\d+\.\d{3} ms",
        stats.summary(),
    )


def test_a_late_echo_is_not_taken_for_the_next_probe() -> None:
    held: list[bytes] = []

    def late_second(index: int, data: bytes) -> list[bytes]:
        if index == 1:
            held.append(data)
            return []
        return [*held, data] if index == 2 else [data]  # seq 2's echo comes before seq 3's

    with scripted_udp_server(late_second) as (address, _):
        stats, events = run_client(address, [], count=3, interval_s=0.0, timeout_s=0.5, size=64)
    assert (stats.transmitted, stats.received, stats.stray) == (3, 2, 1)
    assert [e.seq for e in events if isinstance(e, EchoReply)] == [1, 3]


def test_rtt_statistics_are_pings() -> None:
    stats = PingStats(transmitted=5, rtts_ms=[1.0, 2.0, 3.0, 4.0])
    assert stats.rtt_summary_ms() == pytest.approx((1.0, 2.5, 4.0, 1.25**0.5))
    assert stats.summary() == (
        "5 transmitted, 4 received, 20% lost; rtt min/avg/max/mdev = 1.000/2.500/4.000/1.118 ms"
    )
    assert PingStats(transmitted=3).summary() == "3 transmitted, 0 received, 100% lost"
    assert (
        PingStats(transmitted=3, rtts_ms=[1.0])
        .summary()
        .startswith("3 transmitted, 1 received, 66.67% lost")
    )


def test_generated_payloads_have_the_asked_size_and_their_number() -> None:
    assert [len(probe_payload([], size, 7)[0]) for size in (0, 5, 56, 1400)] == [0, 5, 56, 1400]
    assert probe_payload([], None, 12)[0].startswith(b"udpxfer echo seq=12 ")
    assert probe_payload([b"a", b"b"], 999, 1) == [b"a", b"b"]


def test_server_logs_each_datagram_and_echoes_it() -> None:
    with running(run_udp_echo_server) as server:
        stats, events = run_client(
            server.address, [b"hello ", "wörld".encode(), b"\x00\x1b"], timeout_s=5.0
        )
        served = server.stop()
    assert stats.received == 1
    assert events[0].data == "hello wörld\x00\x1b".encode()  # type: ignore[union-attr]
    assert server.logs[0].startswith("UDP echo server listening on 127.0.0.1:")
    assert server.logs[0].endswith("(IPv4)")
    assert re.fullmatch(
        r"Received 14 bytes from 127\.0\.0\.1:\d+: hello wörld\\x00\\x1b", server.logs[1]
    )
    assert (served.clients, served.requests, served.bytes_in, served.bytes_out) == (1, 1, 14, 14)


def test_server_closes_by_itself_when_asked() -> None:
    with running(run_udp_echo_server, close_after_s=0.2) as server:
        server.thread.join(WAIT_S)
        assert not server.thread.is_alive()
    assert server.logs[-1] == "Closing after 0.2 s, as asked"


def test_cli_client_prints_echoes_and_the_summary() -> None:
    with running(run_udp_echo_server) as server:
        done = run_cli(
            "udp", "echo-client", "--to", str(server.control.port), "-W", "5", "hello", "world"
        )
        both = run_cli("udp", "echo-client", "--to", str(server.control.port), "x", "--size", "9")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(
        r"10 bytes from 127\.0\.0\.1:\d+: seq=1 time=\d+\.\d{3} ms: helloworld", lines[0]
    )
    assert lines[1].startswith("--- 127.0.0.1:")
    assert lines[2].startswith("1 transmitted, 1 received, 0% lost; rtt min/avg/max/mdev = ")
    assert both.returncode == 2
    assert both.stderr.count("\n") == 1


def test_cli_client_exits_1_when_every_echo_is_lost() -> None:
    with scripted_udp_server(lambda _, __: []) as (address, arrivals):
        done = run_cli(
            "udp", "echo-client", "--to", str(address), "-c", "2", "-i", "0", "-W", "0.1"
        )
    assert done.returncode == 1
    assert len(arrivals) == 2
    assert done.stdout.splitlines()[-1] == "2 transmitted, 0 received, 100% lost"


def test_cli_server_stops_on_sigterm_with_a_summary() -> None:
    with background("udp", "echo-server", "--bind", "127.0.0.1:0") as server:
        address = Address("127.0.0.1", server.port())
        stats, _ = run_client(address, [b"ping"], timeout_s=5.0)
        server.expect("Received 4 bytes from 127.0.0.1:")
        server.signal(signal.SIGTERM)
        assert server.finish() == 0, server.stderr
    assert stats.received == 1
    assert server.lines[-1].endswith(
        "UDP echo server stopped: 1 client served, 1 datagram echoed, "
        "4 bytes received, 4 bytes sent"
    )


def test_cli_server_close_after() -> None:
    with background("udp", "echo-server", "--bind", "[::1]:0", "--close-after", "0.3") as server:
        assert server.finish() == 0, server.stderr
    assert server.lines[0].endswith("(IPv6)")
    assert server.lines[-2].endswith("Closing after 0.3 s, as asked")
