"""Test helpers: a sans-IO session pair on a fake clock over a seeded, terrible network."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udpxfer.net.offload import gso_runs
from udpxfer.net.receiving import ReceiverServer, TransferResult
from udpxfer.net.transport import UdpTransport
from udpxfer.protocol.codec import decode_untrusted
from udpxfer.protocol.endpoint import ReceiverEndpoint
from udpxfer.protocol.events import ChunkReceived, TransferEnded, VerifyRequested
from udpxfer.protocol.receiver import ReceiverConfig, ReceiverSession
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.wire import (
    MAX_BLOCK_REPAIRS,
    NO_DIGEST,
    Data,
    PacketType,
    block_chunks_for,
    chunk_count_for,
)
from udpxfer.units import Address

PEER = ("192.0.2.1", 4000)  # a documentation address used as an opaque key, never contacted


@dataclass
class Link:
    """One direction of a seeded lossy link (as trio's test_handshake_over_terrible_network).

    ``drop`` decides per datagram (with its decoded packet) whether it is lost, on top of the
    random ``loss`` probability.
    """

    rng: random.Random
    loss: float = 0.0
    duplicate: float = 0.0
    delay_s: float = 0.001
    jitter_s: float = 0.0
    drop: Callable[[bytes], bool] | None = None
    dropped: list[bytes] = field(default_factory=list)

    def carry(self, datagram: bytes, now: float) -> list[tuple[float, bytes]]:
        """Deliveries (time, datagram) this datagram turns into."""
        if (self.drop is not None and self.drop(datagram)) or self.rng.random() < self.loss:
            self.dropped.append(datagram)
            return []
        copies = 2 if self.rng.random() < self.duplicate else 1
        return [
            (now + self.delay_s + self.rng.random() * self.jitter_s, datagram)
            for _ in range(copies)
        ]


def drop_first_copies(chunks: set[int]) -> Callable[[bytes], bool]:
    """A drop rule that loses the first transmission of each chunk in ``chunks``."""

    def rule(datagram: bytes) -> bool:
        packet = decode_untrusted(datagram)
        return isinstance(packet, Data) and not packet.resent and packet.index in chunks

    return rule


def drop_types(*types: PacketType, times: int = 1 << 30) -> Callable[[bytes], bool]:
    """A drop rule that loses the first ``times`` datagrams of the given packet types."""
    left = {t: times for t in types}

    def rule(datagram: bytes) -> bool:
        ptype = PacketType(datagram[5])
        if left.get(ptype, 0) > 0:
            left[ptype] -= 1
            return True
        return False

    return rule


@dataclass
class PairResult:
    """What a simulated transfer produced."""

    sender: SenderSession
    endpoint: ReceiverEndpoint
    session: ReceiverSession | None
    stored: bytearray
    ended: list[TransferEnded]
    elapsed_s: float


def run_pair(
    data: bytes,
    *,
    sender_config: SenderConfig | None = None,
    receiver_config: ReceiverConfig | None = None,
    forward: Link | None = None,
    reverse: Link | None = None,
    name: str = "file.bin",
    max_time_s: float = 600.0,
    max_steps: int = 5_000_000,
    batched: bool = True,
    one_buffer_runs: bool = False,
    late_digest_at: float | None = None,
) -> PairResult:
    """Run a sender and a receiver against each other on a fake clock until both are done.

    With ``batched`` (the driver's way), datagrams that arrive at the same moment reach the
    receiver as GRO-style buffers (``gro_buffers``) through ``receive_buffer``; without it,
    one by one through ``receive_datagram``. ``one_buffer_runs``: the sender builds its keyless
    runs with numpy (``build_runs_in_one_buffer``), as the driver does for large files.
    ``late_digest_at``: the sender starts without its digest and manifest, as the driver does
    for large reliable files; the digest is provided at that fake time, the manifest as soon
    as the sender wants it (``hashjobs.LateHashes``).
    """
    forward = forward or Link(random.Random(0))
    reverse = reverse or Link(random.Random(1))
    now = 1.0  # a real clock is never at zero (a zero echo means "none" on the wire)
    late = late_digest_at is not None
    sender = SenderSession(
        data,
        name=name,
        sha256=bytes(32) if late else hashlib.sha256(data).digest(),
        session_id=0x1234_5678_9ABC_DEF0,
        now=now,
        config=sender_config,
        manifest_later=late,
    )
    if one_buffer_runs:
        sender.build_runs_in_one_buffer()
    endpoint = ReceiverEndpoint(receiver_config)
    in_flight: list[tuple[float, int, str, bytes]] = []
    order = itertools.count()
    stored = bytearray()
    session: ReceiverSession | None = None
    ended: list[TransferEnded] = []
    for _ in range(max_steps):
        if late_digest_at is not None and now >= late_digest_at:
            sender.provide_digest(hashlib.sha256(data).digest(), now)
            late_digest_at = None
        if sender.manifest_wanted:
            sender.provide_manifest(block_hashes(data, sender.chunk_size), now)
        outgoing = sender.datagrams_to_send(now)
        for datagram in outgoing:
            for at, copy in forward.carry(datagram, now):
                heapq.heappush(in_flight, (at, next(order), "fwd", copy))
        while (item := endpoint.next_event()) is not None:
            session, event = item
            if isinstance(event, ChunkReceived):
                end = event.offset + len(event.payload)
                if len(stored) < end:
                    stored.extend(bytes(end - len(stored)))
                stored[event.offset : end] = event.payload
            elif isinstance(event, VerifyRequested):
                verify_stored(session, stored, now)
            elif isinstance(event, TransferEnded):
                ended.append(event)
        for datagram, _peer in endpoint.datagrams_to_send(now):
            for at, copy in reverse.carry(datagram, now):
                heapq.heappush(in_flight, (at, next(order), "rev", copy))
        if sender.finished and not endpoint.sessions and not in_flight:
            break
        if outgoing:
            continue  # an unpaced sender is infinitely fast on the fake clock
        timers = [t for t in (sender.get_timer(), endpoint.get_timer()) if t is not None]
        if in_flight:
            timers.append(in_flight[0][0])
        if not timers:
            break
        now = max(now, min(timers))
        if now > max_time_s:
            raise AssertionError(f"transfer did not finish within {max_time_s} s of fake time")
        arrived: list[bytes] = []
        while in_flight and in_flight[0][0] <= now:
            _, _, direction, datagram = heapq.heappop(in_flight)
            if direction == "fwd":
                arrived.append(datagram)
                continue
            deliver(endpoint, arrived, now, stored, batched)
            arrived = []
            sender.receive_datagram(datagram, now)
        deliver(endpoint, arrived, now, stored, batched)
        timer = sender.get_timer()
        if timer is not None and timer <= now:
            sender.handle_timer(now)
        timer = endpoint.get_timer()
        if timer is not None and timer <= now:
            endpoint.handle_timer(now)
    else:
        raise AssertionError("simulation did not settle")
    return PairResult(sender, endpoint, session, stored, ended, now)


def verify_stored(session: ReceiverSession, stored: bytearray, now: float) -> None:
    """What the driver does on ``VerifyRequested``: hash what is stored; when the digest is
    known and differs, and every block hash is here, name the bad blocks instead."""
    meta = session.meta
    assert meta is not None
    body = bytes(stored[: meta.size]).ljust(meta.size, b"\0")
    digest = hashlib.sha256(body).digest()
    if (
        meta.sha256 not in (digest, NO_DIGEST)
        and session.manifest_complete
        and session.block_repairs < MAX_BLOCK_REPAIRS
    ):
        step = meta.block_chunks * meta.chunk_size
        expected = list(session.manifest)
        bad = [
            i
            for i, want in enumerate(expected)
            if hashlib.sha256(body[i * step : (i + 1) * step]).digest() != want
        ]
        if bad:
            session.blocks_bad(bad, now)
            return
    session.hash_computed(digest, now)


def block_hashes(data: bytes, chunk_size: int) -> tuple[bytes, ...]:
    """The manifest of ``data``: SHA-256 of each block (``wire.block_chunks_for``)."""
    chunk_count = chunk_count_for(len(data), chunk_size)
    if not chunk_count:
        return ()
    step = block_chunks_for(chunk_count, chunk_size) * chunk_size
    return tuple(hashlib.sha256(data[i : i + step]).digest() for i in range(0, len(data), step))


def drive(
    sender: SenderSession,
    endpoint: ReceiverEndpoint,
    now: float,
    until: float,
    stop: Callable[[], bool] | None = None,
) -> float:
    """Run a sender against an endpoint on a fake clock over a clean instant link (every
    chunk kept, every hash computed as the driver does) until the sender finishes, ``stop``
    says so, or ``until``; return the time."""
    stored = bytearray(sender.size)
    while not sender.finished and now < until and not (stop is not None and stop()):
        sent = sender.datagrams_to_send(now)
        for datagram in sent:
            endpoint.receive_datagram(datagram, PEER, now)
        while (item := endpoint.next_event()) is not None:
            session, event = item
            if isinstance(event, ChunkReceived):
                stored[event.offset : event.offset + len(event.payload)] = event.payload
            elif isinstance(event, VerifyRequested):
                verify_stored(session, stored, now)
        answers = endpoint.datagrams_to_send(now)
        for datagram, _peer in answers:
            sender.receive_datagram(datagram, now)
        if sent or answers:
            continue  # what arrived may let more go out at once
        timers = [t for t in (sender.get_timer(), endpoint.get_timer()) if t is not None]
        now = max(now, min(timers, default=until))
        sender.handle_timer(now)  # each runs only what is due
        endpoint.handle_timer(now)
    return now


def gro_buffers(datagrams: list[bytes]) -> list[tuple[bytearray, int, int]]:
    """Datagrams in order as UDP GRO would coalesce them: the runs one GSO send would carry
    (``offload.gso_runs``: equal sizes, the last of a run may be shorter, within the GSO limits).

    Returns (buffer, length, segment size) triples; a run of one has segment size 0.
    """
    out: list[tuple[bytearray, int, int]] = []
    for start, end, size in gso_runs(datagrams):
        run = b"".join(datagrams[start:end])
        out.append((bytearray(run), len(run), size if end - start > 1 else 0))
    return out


def deliver(
    endpoint: ReceiverEndpoint, datagrams: list[bytes], now: float, stored: bytearray, batched: bool
) -> None:
    """Hand datagrams to the endpoint, batched or one by one; store the chunks it returns."""
    if not batched:
        for datagram in datagrams:
            endpoint.receive_datagram(datagram, PEER, now)
        return
    for buffer, length, segment in gro_buffers(datagrams):
        for run in endpoint.receive_buffer(buffer, length, segment, PEER, now):
            batch, size = run.batch, run.session.chunk_size
            for position in run.positions.tolist():
                start = batch.payload_start(position)
                offset = int(batch.index[position]) * size
                payload = buffer[start : start + int(batch.payload_bytes[position])]
                if len(stored) < offset + len(payload):
                    stored.extend(bytes(offset + len(payload) - len(stored)))
                stored[offset : offset + len(payload)] = payload


# -- real sockets on loopback -----------------------------------------------------------


@contextmanager
def receiver(
    tmp_path: Path,
    host: str = "127.0.0.1",
    *,
    trace_path: Path | None = None,
    key: bytes | None = None,
    **config: Any,
) -> Iterator[tuple[ReceiverServer, list[TransferResult]]]:
    """A ReceiverServer on an ephemeral loopback port, served in a thread.

    Files go to ``tmp_path/out``, reports to ``tmp_path/reports``; ``trace_path`` also saves
    each transfer's trace; ``config`` are ``ReceiverConfig`` fields.
    """
    server = ReceiverServer(
        Address(host, 0),
        tmp_path / "out",
        reports_dir=tmp_path / "reports",
        trace_path=trace_path,
        config=ReceiverConfig(**config),
        key=key,
    )
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield server, server.results
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()


def wait_for(predicate: Callable[[], object], timeout_s: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    tick = threading.Event()  # never set: its bounded wait paces the polls
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        tick.wait(0.005)


class LossyRelay:
    """A UDP relay on loopback for tests: forwards client <-> server, dropping by rule.

    ``drop(datagram, forward)`` returns True to lose a datagram; ``forward`` is True for
    client -> server. Runs in a thread; every wait is bounded. The sockets are udpxfer's own
    transport (coalesced receives, batched sends), so the rule sees every datagram on its own.
    """

    def __init__(self, server: tuple[str, int], drop: Callable[[bytes, bool], bool]) -> None:
        self.server = server
        self.drop = drop
        self.front = UdpTransport.bind(Address(server[0], 0), timestamps=False)
        self.back = UdpTransport.bind(Address(server[0], 0), timestamps=False)
        self.address = self.front.local_address[:2]
        self.client: tuple[str, int] | None = None
        self.forwarded = 0
        self.dropped: list[tuple[bool, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LossyRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.front.close()
        self.back.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.front.sock, self.back.sock], [], [], 0.05)
            for sock in readable:
                forward = sock is self.front.sock
                source, out = (self.front, self.back) if forward else (self.back, self.front)
                while (batch := source.recv_batch()) is not None:
                    datagrams, addr, _ = batch
                    if forward:
                        self.client = addr[:2]
                    target = self.server if forward else self.client
                    kept = []
                    for view in datagrams:
                        data = bytes(view)
                        if self.drop(data, forward):
                            self.dropped.append((forward, data))
                        else:
                            kept.append(data)
                    if target is not None and kept:
                        out.send_many(kept, target)
                        self.forwarded += len(kept)


def connect(
    sender: SenderSession, endpoint: ReceiverEndpoint, now: float = 0.0, peer: object = PEER
) -> ReceiverSession:
    """Run the handshake in memory (META, HELLO with a token, META echoing it, HELLO
    accepting it) and return the receiver's session; the sender's data starts after this."""
    for _ in range(4):
        for datagram in sender.datagrams_to_send(now):
            endpoint.receive_datagram(datagram, peer, now)
        for datagram, _peer in endpoint.datagrams_to_send(now):
            sender.receive_datagram(datagram, now)
        if sender.accepted:
            return endpoint.sessions[(peer, sender.session_id)]
    raise AssertionError("the handshake did not complete")
