"""Transport: GSO run planning and GRO splitting as tables, then real sockets on loopback.

Socket tests never sleep to synchronise: they poll with ``select`` under a deadline.
"""

from __future__ import annotations

import random
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from udpxfer.errors import UsageError
from udpxfer.net.offload import (
    _SO_TIMESTAMPNS,
    SOL_UDP,
    UDP_GRO,
    BufferSizes,
    _set_buffer,
    gso_runs,
    split_segments,
)
from udpxfer.net.sockets import SockAddr
from udpxfer.net.transport import RECV_BUFFER_BYTES, SEND_BUFFER_BYTES, UdpTransport
from udpxfer.protocol.wire import GSO_MAX_BYTES, GSO_MAX_SEGMENTS
from udpxfer.units import Address

DEADLINE_S = 5.0
LINUX = sys.platform.startswith("linux")


def sized(*sizes: int) -> list[bytes]:
    return [bytes(size) for size in sizes]


# (datagram sizes, expected (start, end, segment) runs)
GSO_RUN_CASES = [
    pytest.param([], [], id="empty list"),
    pytest.param([1400], [(0, 1, 1400)], id="single datagram"),
    pytest.param([100] * 5, [(0, 5, 100)], id="equal sizes"),
    pytest.param([100, 100, 40], [(0, 3, 100)], id="shorter last closes the run"),
    pytest.param([100, 100, 40, 40], [(0, 3, 100), (3, 4, 40)], id="only one shorter closes"),
    pytest.param([100, 40, 100], [(0, 2, 100), (2, 3, 100)], id="run after a shorter one"),
    pytest.param([100, 100, 200], [(0, 2, 100), (2, 3, 200)], id="longer starts a new run"),
    pytest.param([200, 100, 200, 200], [(0, 2, 200), (2, 4, 200)], id="alternating"),
    pytest.param([7, 8, 9], [(0, 1, 7), (1, 2, 8), (2, 3, 9)], id="growing sizes"),
    pytest.param(
        [10] * (GSO_MAX_SEGMENTS * 2 + 1),
        [(0, 64, 10), (64, 128, 10), (128, 129, 10)],
        id="64-segment limit",
    ),
    pytest.param([10] * 64 + [5], [(0, 64, 10), (64, 65, 5)], id="full run takes no tail"),
    pytest.param([10] * 63 + [5], [(0, 64, 10)], id="tail fits the 64th slot"),
    pytest.param(
        [1400] * 100,
        [(0, 46, 1400), (46, 92, 1400), (92, 100, 1400)],
        id="65000-byte limit",
    ),
    pytest.param([1400] * 45 + [700], [(0, 46, 1400)], id="tail fits under the byte limit"),
    pytest.param([32500] * 3, [(0, 2, 32500), (2, 3, 32500)], id="exactly 65000 bytes"),
    pytest.param([40000, 40000, 100], [(0, 1, 40000), (1, 2, 40000), (2, 3, 100)], id="big"),
    pytest.param([65507, 65507], [(0, 1, 65507), (1, 2, 65507)], id="over the byte limit"),
]


@pytest.mark.parametrize(("sizes", "expected"), GSO_RUN_CASES)
def test_gso_runs(sizes: list[int], expected: list[tuple[int, int, int]]) -> None:
    assert gso_runs(sized(*sizes)) == expected


@pytest.mark.parametrize("seed", range(20))
def test_gso_runs_cover_the_list_within_the_limits(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([1, 99, 100, 1200, 1400, 9000, 40000]) for _ in range(300)]
    runs = gso_runs(sized(*sizes))
    assert [start for start, _, _ in runs] == [0] + [end for _, end, _ in runs[:-1]]
    assert runs[-1][1] == len(sizes)
    for start, end, segment in runs:
        run = sizes[start:end]
        assert run[0] == segment
        assert all(size == segment for size in run[:-1])
        assert run[-1] <= segment
        assert len(run) == 1 or (len(run) <= GSO_MAX_SEGMENTS and sum(run) <= GSO_MAX_BYTES)


# (total bytes, segment size, expected lengths of the pieces)
SPLIT_CASES = [
    pytest.param(300, 100, [100, 100, 100], id="exact multiple"),
    pytest.param(250, 100, [100, 100, 50], id="short tail"),
    pytest.param(101, 100, [100, 1], id="one-byte tail"),
    pytest.param(300, 0, [300], id="segment 0: one datagram"),
    pytest.param(300, -1, [300], id="negative segment: one datagram"),
    pytest.param(300, 300, [300], id="segment == length: one datagram"),
    pytest.param(300, 1000, [300], id="segment > length: one datagram"),
    pytest.param(0, 0, [0], id="empty datagram"),
    pytest.param(5, 1, [1, 1, 1, 1, 1], id="one-byte segments"),
]


@pytest.mark.parametrize(("total", "segment", "lengths"), SPLIT_CASES)
def test_split_segments(total: int, segment: int, lengths: list[int]) -> None:
    data = bytes(i % 251 for i in range(total))
    pieces = split_segments(memoryview(data), segment)
    assert [len(piece) for piece in pieces] == lengths
    assert b"".join(pieces) == data


def test_buffer_sizes_capped() -> None:
    assert BufferSizes(100, 50, 10, 10).capped
    assert not BufferSizes(100, 100, 10, 5).capped


# --- real sockets on loopback ---------------------------------------------------------------


@pytest.fixture
def opened() -> Iterator[list[UdpTransport]]:
    """Transports a test opens; all closed afterwards."""
    transports: list[UdpTransport] = []
    yield transports
    for transport in transports:
        transport.close()


def make_pair(
    opened: list[UdpTransport], host: str = "127.0.0.1"
) -> tuple[UdpTransport, UdpTransport]:
    """(sender connected to receiver, receiver bound on ``host``)."""
    receiver = UdpTransport.bind(Address(host, 0))
    opened.append(receiver)
    sender = UdpTransport.connect(Address(host, receiver.local_address[1]))
    opened.append(sender)
    return sender, receiver


def receive(
    transport: UdpTransport, count: int
) -> tuple[list[bytes], list[int], list[float], set[SockAddr]]:
    """Up to ``count`` datagrams (copied), the batch sizes, queue times and senders.

    Polls with select until ``count`` arrived or the deadline passed.
    """
    datagrams: list[bytes] = []
    batches: list[int] = []
    queued: list[float] = []
    senders: set[SockAddr] = set()
    deadline = time.monotonic() + DEADLINE_S
    while len(datagrams) < count and transport.wait(deadline - time.monotonic()):
        while (batch := transport.recv_batch()) is not None:
            segments, addr, queued_s = batch
            datagrams.extend(bytes(segment) for segment in segments)
            batches.append(len(segments))
            queued.append(queued_s)
            senders.add(addr)
    return datagrams, batches, queued, senders


def mixed_datagrams(rng: random.Random) -> list[bytes]:
    """200 datagrams of mixed sizes with long runs, shorter tails and lone big ones."""
    sizes = [100] * 70 + [60]  # crosses the 64-segment limit, then a shorter tail
    sizes += [1400] * 50  # crosses the 65,000-byte limit
    sizes += [65000, 9000, 9000, 8999, 1, 1, 3]
    while len(sizes) < 200:
        size = rng.choice([1, 17, 512, 1200, 1472])
        sizes += [size] * min(rng.randint(1, 8), 200 - len(sizes))
        if len(sizes) < 200 and rng.random() < 0.5:
            sizes.append(rng.randint(1, size))
    return [rng.randbytes(size) for size in sizes]


def set_gro(transport: UdpTransport, on: bool) -> None:
    """With ``on`` False, turn coalesced receives off in the socket, not only the flag."""
    if transport.gro and not on:
        transport.sock.setsockopt(SOL_UDP, UDP_GRO, 0)
        transport.gro = False


def set_timestamps(transport: UdpTransport, on: bool) -> None:
    """With ``on`` False, turn receive timestamps off in the socket, not only the flag."""
    if transport.timestamps and not on:
        transport.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 0)
        transport.timestamps = False


@pytest.mark.parametrize("timestamps", [True, False], ids=["timestamps", "no-timestamps"])
@pytest.mark.parametrize("gro", [True, False], ids=["gro", "no-gro"])
@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
def test_send_many_keeps_every_boundary_and_byte(
    opened: list[UdpTransport], gso: bool, gro: bool, timestamps: bool
) -> None:
    sender, receiver = make_pair(opened)
    sender.gso = sender.gso and gso
    set_gro(receiver, gro)
    set_timestamps(receiver, timestamps)
    sent = mixed_datagrams(random.Random(0))
    assert len(sent) == 200

    sender.send_many(sent)
    got, batches, queued, senders = receive(receiver, len(sent))

    assert [len(d) for d in got] == [len(d) for d in sent]
    assert got == sent
    assert receiver.recv_batch() is None
    assert senders == {sender.local_address}
    assert sender.refused == receiver.refused == 0
    if not receiver.gro:
        assert set(batches) == {1}
    elif sender.gso:  # each GSO send arrives as one coalesced receive
        assert batches == [end - start for start, end, _ in gso_runs(sent)]
    if receiver.timestamps:
        assert all(0.0 <= q < DEADLINE_S for q in queued)
    else:
        assert set(queued) == {0.0}


def test_send_many_with_an_address_replies_to_the_sender(opened: list[UdpTransport]) -> None:
    sender, receiver = make_pair(opened)
    sender.send(b"hello")
    got, _, _, senders = receive(receiver, 1)
    assert got == [b"hello"]
    (peer,) = senders
    replies = [bytes([n]) * 300 for n in range(10)] + [b"end"]
    receiver.send_many(replies, peer)
    assert receive(sender, len(replies))[0] == replies


def test_send_many_keeps_empty_datagrams(opened: list[UdpTransport]) -> None:
    """An empty datagram is a datagram: GSO with segment size 0 must not swallow any."""
    sender, receiver = make_pair(opened)
    sent = [b"", b"", b"", b"x" * 100, b"y" * 100, b""]
    sender.send_many(sent)
    assert receive(receiver, len(sent))[0] == sent


def test_ipv6_loopback(opened: list[UdpTransport]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sender, receiver = make_pair(opened, "::1")
    except (UsageError, OSError) as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    sent = [bytes([n % 256]) * 1200 for n in range(100)] + [b"tail"]
    sender.send_many(sent)
    assert receive(receiver, len(sent))[0] == sent


def test_recv_returns_the_datagram_and_none_when_empty(opened: list[UdpTransport]) -> None:
    sender, receiver = make_pair(opened)
    assert receiver.recv() is None
    assert not receiver.wait(0)
    assert not receiver.wait(-1.0)
    sender.send(b"one")
    assert receiver.wait(DEADLINE_S)
    got = receiver.recv()
    assert got is not None
    assert bytes(got[0]) == b"one"
    assert got[1] == sender.local_address
    assert receiver.recv() is None


def test_queued_s_counts_time_waiting_in_the_socket(opened: list[UdpTransport]) -> None:
    sender, receiver = make_pair(opened)
    if not receiver.timestamps:
        pytest.skip("the kernel gives no receive timestamps")
    sender.send(b"x")
    assert receiver.wait(DEADLINE_S)
    time.sleep(0.05)  # the quantity under test, not synchronisation
    batch = receiver.recv_batch()
    assert batch is not None
    assert 0.04 <= batch[2] < DEADLINE_S


def test_buffer_sizes_report_what_the_kernel_granted(opened: list[UdpTransport]) -> None:
    sender, receiver = make_pair(opened)
    for transport in (sender, receiver):
        sizes = transport.buffers
        assert (sizes.recv_asked, sizes.send_asked) == (RECV_BUFFER_BYTES, SEND_BUFFER_BYTES)
        halve = 2 if LINUX else 1
        sock = transport.sock
        assert sizes.recv_granted == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // halve
        assert sizes.send_granted == sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // halve
        assert 0 < sizes.recv_granted <= RECV_BUFFER_BYTES
        assert 0 < sizes.send_granted <= SEND_BUFFER_BYTES
        assert sizes.capped == (sizes.recv_granted < RECV_BUFFER_BYTES)


@pytest.mark.skipif(not LINUX, reason="Linux reports doubled buffer sizes")
def test_set_buffer_falls_back_when_forcing_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        bogus_option = 0x7FFF  # refused like SO_RCVBUFFORCE without CAP_NET_ADMIN
        assert _set_buffer(sock, bogus_option, socket.SO_RCVBUF, 64 << 10) == 64 << 10


@pytest.fixture
def refusing(opened: list[UdpTransport]) -> UdpTransport:
    """A transport connected to a loopback port nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = UdpTransport.connect(Address("127.0.0.1", port))
    opened.append(transport)
    return transport


def await_refusal(transport: UdpTransport) -> None:
    """Send, then wait (bounded) until the ICMP port-unreachable is pending on the socket."""
    transport.send(b"anyone?")
    assert transport.wait(DEADLINE_S), "no ICMP port-unreachable came back"


def test_refused_counts_on_receive(refusing: UdpTransport) -> None:
    await_refusal(refusing)
    assert refusing.recv_batch() is None
    assert refusing.refused == 1


def test_refused_counts_on_send(refusing: UdpTransport) -> None:
    await_refusal(refusing)
    refusing.send(b"again")
    assert refusing.refused == 1
    await_refusal(refusing)
    assert refusing.recv() is None
    assert refusing.refused == 2


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
def test_refused_counts_on_send_many(refusing: UdpTransport, gso: bool) -> None:
    refusing.gso = refusing.gso and gso
    await_refusal(refusing)
    refusing.send_many([b"z" * 100] * 3)
    if refusing.gso:
        assert refusing.refused == 1  # the one GSO send reported the pending error
    else:
        assert 1 <= refusing.refused <= 3  # each plain send may draw its own refusal


def test_oversized_datagram_is_a_usage_error(opened: list[UdpTransport]) -> None:
    sender, _ = make_pair(opened)
    with pytest.raises(UsageError, match=r"datagram of 70000 bytes .* smaller --chunk-size"):
        sender.send(bytes(70000))


@pytest.mark.parametrize("value", ["1", "yes"])
def test_no_offload_environment_turns_gso_and_gro_off(
    opened: list[UdpTransport], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("UDPXFER_NO_OFFLOAD", value)
    sender, receiver = make_pair(opened)
    assert not sender.gso
    assert not receiver.gro
    sent = mixed_datagrams(random.Random(1))
    sender.send_many(sent)
    got, batches, _, _ = receive(receiver, len(sent))
    assert got == sent
    assert set(batches) == {1}  # one datagram per receive


@pytest.mark.skipif(not LINUX, reason="GSO/GRO are Linux's")
def test_offload_stays_on_with_the_variable_at_zero(
    opened: list[UdpTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UDPXFER_NO_OFFLOAD", "0")
    sender, receiver = make_pair(opened)
    monkeypatch.delenv("UDPXFER_NO_OFFLOAD")
    unset = UdpTransport.bind(Address("127.0.0.1", 0))
    opened.append(unset)
    assert (sender.gso, receiver.gro) == (unset.gso, unset.gro)


def test_send_run_sends_views_of_one_buffer_without_joining(opened: list[UdpTransport]) -> None:
    """A relay's run: slices of one receive buffer, the last one shorter."""
    sender, receiver = make_pair(opened)
    buffer = bytearray(random.Random(2).randbytes(10 * 1000 + 300))
    view = memoryview(buffer)
    run = [view[start : start + 1000] for start in range(0, len(buffer), 1000)]
    sender.send_run(run)
    got, batches, _, _ = receive(receiver, len(run))
    assert got == [bytes(piece) for piece in run]
    if sender.gso and receiver.gro:
        assert batches == [len(run)]  # one system call each way


def test_a_relay_transport_counts_what_it_cannot_send(refusing: UdpTransport) -> None:
    relay = UdpTransport(refusing.sock, refusing.peer, send_wait_s=0.1)
    relay.send(bytes(70000))  # too large for UDP: lost as on a wire, not an error
    assert relay.unsent == 1
    await_refusal(relay)
    relay.send(b"again")  # the refusal is counted and the send retried once
    assert relay.refused == 1
    assert relay.unsent == 1
