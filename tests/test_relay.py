"""The impairment relay on loopback, with plain UDP sockets, and the ``impair`` command."""

from __future__ import annotations

import collections
import csv
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from udpxfer.cli import app  # every command registered
from udpxfer.lab.impair.models import Direction, Impairment
from udpxfer.lab.impair.policy import flip_bit
from udpxfer.lab.impair.records import LOG_COLUMNS, DropCause, Record
from udpxfer.lab.relay import Relay, StopReason
from udpxfer.lab.relay_log import RecordLog
from udpxfer.net.sockets import kernel_drops
from udpxfer.net.transport import UdpTransport
from udpxfer.protocol import framing
from udpxfer.units import Address

pytestmark = pytest.mark.timeout(30)

TIMEOUT_S = 5.0


def udp_socket(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(TIMEOUT_S)
    return sock


@pytest.fixture
def server() -> Iterator[socket.socket]:
    sock = udp_socket()
    yield sock
    sock.close()


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = udp_socket()
    yield sock
    sock.close()


@pytest.fixture
def make_relay(server: socket.socket) -> Iterator[Callable[..., Relay]]:
    """Start relays towards ``server`` in background threads; stop and close them after."""
    relays: list[Relay] = []

    def make(**options: object) -> Relay:
        target = Address("127.0.0.1", server.getsockname()[1])
        relay = Relay(Address("127.0.0.1", 0), target, **options)  # type: ignore[arg-type]
        relays.append(relay)
        relay.start()
        return relay

    yield make
    for relay in relays:
        relay.stop()
        assert relay.join(TIMEOUT_S)
        relay.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Everything already waiting on ``sock``, without blocking."""
    got = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(65536))
    except BlockingIOError:
        return got
    finally:
        sock.settimeout(TIMEOUT_S)


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
    """Wait until ``condition()`` holds (another thread's progress), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the relay"
        tick.wait(0.002)


# --- forwarding ------------------------------------------------------------------------------


def test_forwards_both_ways(
    make_relay: Callable[..., Relay], server: socket.socket, client: socket.socket
) -> None:
    relay = make_relay()
    client.sendto(b"ping", relay.listen_address)
    data, upstream = server.recvfrom(100)
    assert data == b"ping"
    server.sendto(b"pong", upstream)
    data, source = client.recvfrom(100)
    assert (data, source) == (b"pong", relay.listen_address)
    largest = bytes(range(256)) * 255 + bytes(227)  # 65,507 bytes: the most UDP over IPv4 carries
    client.sendto(largest, relay.listen_address)
    assert server.recv(65536) == largest
    # The counters are updated once a batch is sent: wait for them.
    wait_for(lambda: relay.stats[Direction.FORWARD].delivered == 2)
    wait_for(lambda: relay.stats[Direction.REVERSE].delivered == 1)


def test_replies_go_back_to_the_right_client(
    make_relay: Callable[..., Relay], server: socket.socket
) -> None:
    relay = make_relay()
    clients = {name: udp_socket() for name in ("a", "b")}
    try:
        upstream_of: dict[bytes, tuple[str, int]] = {}
        for round_no in range(3):
            for name, sock in clients.items():
                sock.sendto(name.encode(), relay.listen_address)
                data, upstream = server.recvfrom(100)
                assert upstream_of.setdefault(data, upstream) == upstream  # stable mapping
            for name in clients:
                server.sendto(f"for {name} {round_no}".encode(), upstream_of[name.encode()])
            for name, sock in clients.items():
                assert sock.recvfrom(100) == (
                    f"for {name} {round_no}".encode(),
                    relay.listen_address,
                )
        assert upstream_of[b"a"] != upstream_of[b"b"]
        assert relay.relay_stats.clients == 2
        for sock in clients.values():
            assert drain(sock) == []
    finally:
        for sock in clients.values():
            sock.close()


def test_ipv6_loopback() -> None:
    try:
        server = udp_socket("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    with server, udp_socket("::1") as client:
        relay = Relay(Address("::1", 0), Address("::1", server.getsockname()[1]))
        with relay:
            relay.start()
            client.sendto(b"six", relay.listen_address)
            data, upstream = server.recvfrom(100)
            server.sendto(data.upper(), upstream)
            assert client.recv(100) == b"SIX"


# --- the ground truth -----------------------------------------------------------------------


def test_log_matches_what_the_receiver_got(
    make_relay: Callable[..., Relay], server: socket.socket, client: socket.socket
) -> None:
    count = 300
    sent = [framing.encode_data(0x5EED, i, i, bytes([i % 256]) * 100) for i in range(count)]
    records: list[Record] = []
    impairment = Impairment(loss=0.2, duplicate=0.1, corrupt=0.1)
    relay = make_relay(forward=impairment, seed=11, on_records=records.extend, count_limit=count)
    received: collections.Counter[bytes] = collections.Counter()
    for first in range(0, count, 50):
        # In batches, reading as we go, so that the server's socket buffer never overflows.
        for datagram in sent[first : first + 50]:
            client.sendto(datagram, relay.listen_address)
        settled = first + 50
        wait_for(lambda: len(records) >= settled)  # noqa: B023 (called before the next round)
        received.update(drain(server))
    assert relay.join(TIMEOUT_S)
    assert relay.stop_reason is StopReason.COUNT_LIMIT
    received.update(drain(server))

    assert sorted(r.seq for r in records) == list(range(count))
    expected: collections.Counter[bytes] = collections.Counter()
    for record in records:
        assert record.direction is Direction.FORWARD
        assert (record.packet_type, record.index) == ("DATA", record.seq)
        original = sent[record.seq]
        if record.delivered:
            arrived = original
            if record.corrupted:
                assert record.corrupt_bit is not None
                arrived = flip_bit(original, record.corrupt_bit)
            expected[arrived] += 1
            if record.duplicated:
                expected[original] += 1
        else:
            assert record.cause is DropCause.LOSS
    assert received == expected
    stats = relay.stats[Direction.FORWARD]
    assert 0 < stats.dropped_loss < count
    assert stats.duplicated > 0
    assert stats.corrupted > 0


@pytest.mark.parametrize("gso", [True, False])
def test_batches_keep_order_and_content(
    monkeypatch: pytest.MonkeyPatch,
    server: socket.socket,
    client: socket.socket,
    gso: bool,
) -> None:
    if not gso:
        monkeypatch.setenv("UDPXFER_NO_OFFLOAD", "1")
    sizes = [1400, 1400, 1400, 100, 0, 1400, 1400, 9000, 1400, 7]
    sent = [bytes([i % 256]) * sizes[i % len(sizes)] for i in range(400)]
    target = Address("127.0.0.1", server.getsockname()[1])
    with Relay(Address("127.0.0.1", 0), target) as relay:
        relay.start()
        received: list[bytes] = []
        for first in range(0, len(sent), 40):
            for datagram in sent[first : first + 40]:
                client.sendto(datagram, relay.listen_address)
            settled = first + 40
            wait_for(lambda: relay.forward.stats.delivered >= settled)  # noqa: B023
            received += drain(server)
    assert received == sent


def gso_client() -> UdpTransport:
    """A client sending runs with one system call each, so that the relay gets coalesced runs."""
    return UdpTransport.bind(Address("127.0.0.1", 0), timestamps=False)


@pytest.mark.parametrize("recorded", [False, True], ids=["passthrough", "recorded"])
def test_coalesced_runs_are_relayed_and_recorded_datagram_by_datagram(
    make_relay: Callable[..., Relay], server: socket.socket, recorded: bool
) -> None:
    records: list[Record] = []
    relay = make_relay(on_records=records.extend if recorded else None)
    # Two rounds, read as they come, so that the test server's small socket buffer never
    # overflows: crossing the 64-segment limit, shorter tails, empty and jumbo datagrams.
    rounds = [[1400] * 70 + [100, 0, 0], [8844] * 7 + [17]]
    sizes = rounds[0] + rounds[1]
    sent = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    received: list[bytes] = []
    client = gso_client()
    try:
        for settled in (len(rounds[0]), len(sizes)):
            client.send_many(sent[len(received) : settled], relay.listen_address)
            wait_for(lambda: relay.forward.stats.delivered >= settled)  # noqa: B023
            received += drain(server)
    finally:
        client.close()
    assert received == sent
    assert relay.forward.stats.datagrams_in == len(sent)
    if recorded:
        wait_for(lambda: len(records) == len(sent))
        assert [r.seq for r in records] == list(range(len(sent)))
        assert [r.size for r in records] == sizes
        assert all(r.delivered for r in records)


def test_count_limit_cuts_a_coalesced_run(
    make_relay: Callable[..., Relay], server: socket.socket
) -> None:
    relay = make_relay(count_limit=10)
    client = gso_client()
    try:
        client.send_many([bytes([i]) * 1000 for i in range(40)], relay.listen_address)
        assert relay.join(TIMEOUT_S)
    finally:
        client.close()
    assert relay.stop_reason is StopReason.COUNT_LIMIT
    assert drain(server) == [bytes([i]) * 1000 for i in range(10)]
    assert relay.forward.stats.datagrams_in == 10


def test_measured_delay_matches_the_setting(
    make_relay: Callable[..., Relay], server: socket.socket, client: socket.socket
) -> None:
    records: list[Record] = []
    relay = make_relay(forward=Impairment(delay_s=0.05), on_records=records.extend)
    measured = []
    for i in range(5):
        sent_at = time.monotonic()
        client.sendto(str(i).encode(), relay.listen_address)
        assert server.recv(100) == str(i).encode()
        measured.append(time.monotonic() - sent_at)
    assert all(0.049 <= delay < 0.08 for delay in measured), measured
    wait_for(lambda: len(records) == 5)
    assert all(r.delay_s == pytest.approx(0.05, abs=1e-6) for r in records)


def test_reverse_only_impairment(
    make_relay: Callable[..., Relay], server: socket.socket, client: socket.socket
) -> None:
    relay = make_relay(reverse=Impairment(loss=1.0), count_limit=2)
    client.sendto(b"there", relay.listen_address)
    _, upstream = server.recvfrom(100)
    server.sendto(b"and back", upstream)
    assert relay.join(TIMEOUT_S)
    assert drain(client) == []
    assert relay.stats[Direction.FORWARD].delivered == 1
    assert relay.stats[Direction.REVERSE].dropped_loss == 1


def test_count_limit_lets_delayed_datagrams_leave(
    make_relay: Callable[..., Relay], server: socket.socket, client: socket.socket
) -> None:
    relay = make_relay(forward=Impairment(delay_s=0.03, jitter_s=0.01), count_limit=5)
    for i in range(8):  # three more than the limit: never read
        client.sendto(bytes([i]), relay.listen_address)
    assert relay.join(TIMEOUT_S)
    assert relay.stop_reason is StopReason.COUNT_LIMIT
    assert drain(server) == [bytes([i]) for i in range(5)]
    assert relay.forward.stats.datagrams_in == 5


def test_stop_drops_what_is_still_held_as_shutdown(
    make_relay: Callable[..., Relay], server: socket.socket, client: socket.socket
) -> None:
    records: list[Record] = []
    relay = make_relay(forward=Impairment(delay_s=60.0), on_records=records.extend)
    for i in range(3):
        client.sendto(bytes([i]), relay.listen_address)
    wait_for(lambda: relay.forward.stats.datagrams_in == 3)
    relay.stop()
    assert relay.join(TIMEOUT_S)
    assert relay.stop_reason is StopReason.STOPPED
    assert drain(server) == []
    assert [r.cause for r in records] == [DropCause.SHUTDOWN] * 3
    assert relay.stats[Direction.FORWARD].dropped_shutdown == 3


def test_duration_stops_the_relay(make_relay: Callable[..., Relay]) -> None:
    relay = make_relay(duration_s=0.1)
    assert relay.join(TIMEOUT_S)
    assert relay.stop_reason is StopReason.DURATION


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/udp")
def test_kernel_drops_count_what_never_reached_the_relay(client: socket.socket) -> None:
    with udp_socket() as full:
        full.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert kernel_drops([full]) == 0
        for _ in range(200):
            client.sendto(bytes(1000), full.getsockname())
        queued = len(drain(full))
        assert kernel_drops([full]) == 200 - queued > 0


# --- the log file --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["truth.jsonl", "truth.csv"])
def test_record_log_formats(tmp_path: Path, name: str) -> None:
    records = [
        Record(Direction.FORWARD, 0, 10.5, 1444, "DATA", 1, 7, False, delay_s=0.02),
        Record(Direction.REVERSE, 0, 10.75, 60, delivered=False, cause=DropCause.GILBERT),
    ]
    log = RecordLog(tmp_path / name, epoch=10.0)
    log.write(records)
    log.close()
    text = (tmp_path / name).read_text(encoding="utf-8")
    if name.endswith(".csv"):
        rows = list(csv.DictReader(text.splitlines()))
        assert tuple(rows[0]) == LOG_COLUMNS
        assert rows[0]["index"] == "7"
        assert rows[1]["cause"] == "gilbert"
        assert rows[1]["t_s"] == "0.75"
    else:
        rows = [json.loads(line) for line in text.splitlines()]
        assert rows == [r.as_row(10.0) for r in records]
        assert rows[0]["delay_ms"] == 20.0


# --- the command ---------------------------------------------------------------------------


def read_line(stream: object, timeout: float = TIMEOUT_S) -> str:
    """One line of a subprocess's stdout, waiting at most ``timeout``."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
        assert selector.select(timeout), "no output from udpxfer impair"
    return stream.readline()  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_command_stops_cleanly_on_a_signal(
    tmp_path: Path, server: socket.socket, client: socket.socket, stop_signal: signal.Signals
) -> None:
    log = tmp_path / "truth.jsonl"
    command = [
        sys.executable,
        "-m",
        "udpxfer",
        "impair",
        "--listen",
        "127.0.0.1:0",
        "--to",
        str(server.getsockname()[1]),
        "--delay",
        "1ms",
        "--seed",
        "3",
        "--log",
        str(log),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            banner = read_line(proc.stdout)
            assert banner.startswith("impair: relaying 127.0.0.1:"), banner
            port = int(banner.split()[2].rsplit(":", 1)[1])
            for i in range(3):
                client.sendto(bytes([i]), ("127.0.0.1", port))
                assert server.recv(100) == bytes([i])
            proc.send_signal(stop_signal)
            out, err = proc.communicate(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert err == ""
    assert f"stopped (by {stop_signal.name})" in out
    assert "forward: 3 in, 3 delivered" in out
    assert "seed 3" in out
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [row["seq"] for row in rows] == [0, 1, 2]
    assert all(row["delay_ms"] == 1.0 for row in rows)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--loss", "1.5"], "--loss: bad probability '1.5'"),
        (["--gilbert", "0.1"], "--gilbert: bad Gilbert-Elliott model"),
        (["--delay", "soon"], "--delay: bad duration"),
        (["--rate", "fast"], "--rate: bad rate"),
        (["--rate", "1M", "--queue", "1Q"], "--queue: bad size"),
        (["--queue", "100"], "--queue is the bottleneck's buffer: it needs --rate"),
    ],
)
def test_command_rejects_bad_options_in_one_line(options: list[str], message: str) -> None:
    result = CliRunner().invoke(
        app, ["impair", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", *options]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(f"udpxfer: error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_command_help_teaches_with_an_example() -> None:
    result = CliRunner().invoke(app, ["impair", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "udpxfer impair --listen 9000 --to 9001" in result.stdout
    assert "--gilbert" in result.stdout


@pytest.mark.parametrize("quiet", [False, True])
def test_command_runs_for_a_duration(server: socket.socket, quiet: bool) -> None:
    result = CliRunner().invoke(
        app,
        ["impair", "--listen", "127.0.0.1:0", "--to", str(server.getsockname()[1])]
        + ["--duration", "0.05", "--loss", "5%", "--gilbert", "1%,25%"]
        + (["--quiet"] if quiet else []),
    )
    assert result.exit_code == 0, result.output
    if quiet:
        assert result.stdout == ""
    else:
        assert "forward: loss 0.05, gilbert p=0.01 r=0.25 1-h=1 1-k=0" in result.stdout
        assert "reverse: none" in result.stdout
        assert "stopped (duration elapsed)" in result.stdout
        assert "forward: 0 in, 0 delivered" in result.stdout
