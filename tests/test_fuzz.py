"""Hostile input, sans-IO: a seeded mutation fuzz and one regression test per attack of issue 7.

The fuzz feeds 100,000 mutated datagrams (tests/fuzzing.py: bit flips, truncations, splices,
check-valid forgeries with fields at their bounds, hostile names and ranges) drawn from the
datagrams of real in-memory transfers to the decoder, a receiver endpoint and a sender session.
fuzz/run.py runs the same mutations for longer.
"""

from __future__ import annotations

import random
import tracemalloc
from dataclasses import dataclass

import pytest
from fuzzing import (
    KEYED_FLAG,
    OTHER_HOST,
    SENDER_PEER,
    SESSION_ID,
    ChunkStore,
    Harness,
    Mutator,
    Recorded,
    block_hashes,
    capture_corpus,
    frame,
    new_endpoint,
    new_sender,
    pump_events,
    transfer,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from udpxfer.errors import MalformedPacket
from udpxfer.protocol.bodies import MAX_RANGES
from udpxfer.protocol.codec import decode_untrusted, encode
from udpxfer.protocol.endpoint import ReceiverEndpoint
from udpxfer.protocol.endpoint_limits import AMPLIFICATION_FACTOR
from udpxfer.protocol.framing import encode_data, parse_header_untrusted
from udpxfer.protocol.receiver import ReceiverConfig, ReceiverSession
from udpxfer.protocol.receiver_core import Peer
from udpxfer.protocol.receiver_data import MAX_STAMP_SPREAD_NS
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.sender_state import SenderState
from udpxfer.protocol.wire import (
    DEFAULT_CHUNK_BYTES,
    MAX_PN,
    MAX_STAMP_NS,
    Abort,
    AbortCode,
    Data,
    End,
    Hello,
    HelloFlags,
    Meta,
    Mode,
    Nack,
    PacketType,
    RangeKind,
    chunk_count_for,
)
from udpxfer.reports.report import udp_report

FUZZ_CASES = [(1, False), (2, False), (3, False), (4, True)]  # (seed, keyed)
FUZZ_INPUTS_PER_SEED = 25_000  # 100,000 in all
MEMORY_WARMUP = 2_000
MEMORY_INPUTS = 2_000
MEMORY_BOUND_BYTES = 2 << 20  # allocated at peak by 2,000 more inputs (measured: 0.3 MiB)


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    datagrams = capture_corpus()
    # The corpus holds every packet type a real transfer exchanges, both ways.
    assert {d[5] for d in datagrams} == {int(t) for t in PacketType}
    return datagrams


@pytest.fixture(scope="module")
def keyed_corpus() -> list[bytes]:
    datagrams = capture_corpus(keyed=True)
    assert sum(1 for d in datagrams if d[6] & KEYED_FLAG) > 100  # from keyed transfers
    return datagrams


def data_file(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def assert_verified(
    result: tuple[SenderSession, ReceiverSession | None, float], store: ChunkStore, data: bytes
) -> ReceiverSession:
    """The transfer ``result`` (from ``transfer``) ended verified, its file byte-exact."""
    sender, session, _ = result
    assert sender.outcome is not None
    assert sender.outcome.outcome == "complete", sender.outcome.reason
    assert session is not None
    assert store.file(session) == data
    return session


# -- the fuzz ---------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("seed", "keyed"),
    FUZZ_CASES,
    ids=[f"seed{s}-{'keyed' if k else 'keyless'}" for s, k in FUZZ_CASES],
)
def test_fuzzed_datagrams_never_escape(
    corpus: list[bytes], keyed_corpus: list[bytes], seed: int, keyed: bool
) -> None:
    harness = Harness(keyed=keyed)
    mutator = Mutator(keyed_corpus if keyed else corpus, seed)
    harness.run(mutator, FUZZ_INPUTS_PER_SEED)
    assert not harness.escapes, "\n\n".join(str(e) for e in harness.escapes[:3])
    assert harness.inputs == FUZZ_INPUTS_PER_SEED
    # The fuzz reached past the decoder: many inputs decoded (keyless) or were refused as
    # unauthenticated (keyed), and senders were driven to an end.
    if keyed:
        assert harness.endpoint.unauthenticated > FUZZ_INPUTS_PER_SEED // 2
    else:
        assert harness.decoded > FUZZ_INPUTS_PER_SEED // 10
    assert harness.senders > 1
    # A sender never answers one datagram with more than a batch of data and its control.
    assert harness.max_sender_batch <= 2 * SenderConfig().batch
    # State stays within the endpoint's limits.
    config = harness.endpoint.config
    waiting = [s for s in harness.endpoint.sessions.values() if not s.is_transfer]
    assert len(waiting) <= config.max_pending_sessions
    assert all(s.pending_bytes <= config.max_pending_bytes for s in waiting)
    assert harness.endpoint.active_transfers <= config.max_transfers
    assert harness.real_transfer_problem() == ""


def test_fuzzed_state_stays_bounded_in_memory(corpus: list[bytes]) -> None:
    """After a warm-up fills the endpoint's tables, more hostile input allocates little."""
    harness = Harness()
    mutator = Mutator(corpus, 5)
    harness.run(mutator, MEMORY_WARMUP)
    tracemalloc.start()
    try:
        harness.run(mutator, MEMORY_INPUTS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not harness.escapes, str(harness.escapes[0])
    assert peak < MEMORY_BOUND_BYTES, f"peak of {peak} bytes"
    assert harness.real_transfer_problem() == ""


def test_the_mutator_is_seeded_and_uses_every_mutation(corpus: list[bytes]) -> None:
    a, b = Mutator(corpus, 9), Mutator(corpus, 9)
    drawn = [a.next() for _ in range(3000)]
    assert drawn == [b.next() for _ in range(3000)]
    assert drawn != [Mutator(corpus, 10).next() for _ in range(3000)]
    assert {kind for kind, _ in drawn} == set(a.kinds)


# -- attacks from issue 7, one regression test each -------------------------------------------


def handshake(
    endpoint: ReceiverEndpoint, data: bytes, chunk_size: int, now: float, peer: Peer = SENDER_PEER
) -> tuple[SenderSession, ReceiverSession]:
    """META -> HELLO(RETRY) -> META with token -> HELLO(ACCEPTED): a transfer with no DATA yet."""
    sender = new_sender(data, SESSION_ID, now, SenderConfig(chunk_size=chunk_size))
    for _ in range(2):
        for datagram in sender.datagrams_to_send(now):
            assert decode_untrusted(datagram).__class__ is Meta
            endpoint.receive_datagram(datagram, peer, now)
        for datagram, to in endpoint.datagrams_to_send(now):
            if to == peer:
                sender.receive_datagram(datagram, now)
    assert sender.accepted
    session = endpoint.sessions[(peer, SESSION_ID)]
    assert session.is_transfer
    return sender, session


NOW = 1.0


@dataclass
class Opened:
    """A keyless endpoint with one transfer through its handshake, no DATA yet."""

    store: ChunkStore
    endpoint: ReceiverEndpoint
    data: bytes
    sender: SenderSession
    session: ReceiverSession

    def finish(self) -> None:
        """Run the transfer to its end: it arrives verified and byte-exact."""
        result = transfer(self.endpoint, self.store, self.data, sender=self.sender, now=NOW)
        assert assert_verified(result, self.store, self.data) is self.session


def opened(size: int) -> Opened:
    store = ChunkStore()
    endpoint = ReceiverEndpoint()
    data = data_file(size)
    sender, session = handshake(endpoint, data, 1000, NOW)
    return Opened(store, endpoint, data, sender, session)


@pytest.mark.parametrize(
    ("pn", "sent_ns"),
    [
        (MAX_PN + 1, 5),
        ((1 << 63), 5),
        ((1 << 64) - 1, 5),
        (3, MAX_STAMP_NS + 1),
        (3, (1 << 64) - 1),
    ],
)
def test_data_with_out_of_range_counter_or_stamp_is_refused(pn: int, sent_ns: int) -> None:
    forged = frame(int(PacketType.DATA), SESSION_ID, bytes(1000), seq=0, pn=pn, sent_ns=sent_ns)
    with pytest.raises(MalformedPacket, match="out of range"):
        decode_untrusted(forged)
    case = opened(20_000)
    rejected = case.endpoint.rejected
    for _ in range(3):
        case.endpoint.receive_datagram(forged, SENDER_PEER, NOW)
    assert case.endpoint.rejected == rejected + 3
    assert case.session.held_count == 0
    case.finish()


def test_data_at_the_largest_counter_and_stamp_is_survived() -> None:
    """The largest values the decoder lets through: the transfer, its trace and its report
    survive them."""
    case = opened(3000)
    top_pn = encode_data(SESSION_ID, 0, MAX_PN, case.data[:1000], sent_ns=10**9)
    top_stamp = encode_data(SESSION_ID, 1, 5, case.data[1000:2000], sent_ns=MAX_STAMP_NS)
    for datagram in (top_pn, top_stamp):
        case.endpoint.receive_datagram(datagram, SENDER_PEER, NOW)
    report = udp_report(
        case.session,
        None,
        datagrams_received=2,
        datagrams_rejected=1,
    )
    assert report["chunks"]["received"] == 1  # the stamp is no clock of this transfer's sender
    case.finish()


def stamp_report(stamps: list[int]) -> dict[str, object]:
    """Three DATA (chunks 0, 1, 2) with these send stamps, then the transfer's report."""
    case = opened(3000)
    for index, stamp in enumerate(stamps):
        payload = case.data[index * 1000 : index * 1000 + 1000]
        datagram = encode_data(SESSION_ID, index, index, payload, sent_ns=stamp)
        case.endpoint.receive_datagram(datagram, SENDER_PEER, NOW + 0.001 * index)
        pump_events(case.endpoint, case.store, NOW)
    session = case.session
    return udp_report(session, None, datagrams_received=3, datagrams_rejected=0)


def test_far_apart_send_stamps_do_not_break_the_report() -> None:
    origin = int(1e9)  # the META's stamp: the sender's clock at 1 s
    spread = MAX_STAMP_SPREAD_NS
    report = stamp_report([origin, origin + spread, max(0, origin - spread)])
    assert report["chunks"]["received"] == 3  # type: ignore[index]
    report = stamp_report([0, 1 << 62, MAX_STAMP_NS])
    assert report["chunks"]["received"] < 3  # type: ignore[index]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, MAX_STAMP_NS), min_size=3, max_size=3))
def test_any_send_stamps_leave_the_report_buildable(stamps: list[int]) -> None:
    report = stamp_report(stamps)
    assert report["file"]["name"] == "corpus.bin"  # type: ignore[index]


def accept_and_send_all(sender: SenderSession, now: float) -> None:
    """Accept ``sender`` (a HELLO with a wide window) and take its first pass and END."""
    sender.datagrams_to_send(now)  # META
    hello = Hello(SESSION_ID, HelloFlags.ACCEPTED, window=16384, nonce=bytes(16), pn=1)
    sender.receive_datagram(encode(hello), now)
    for _ in range(sender.chunk_count):
        if sender.state is SenderState.WAITING:
            break
        sender.datagrams_to_send(now)
    assert sender.state is SenderState.WAITING


def sender_waiting(chunk_count: int, now: float) -> SenderSession:
    """A reliable sender that has sent every chunk once and its END for round 0."""
    data = data_file(chunk_count * 100)
    config = SenderConfig(chunk_size=100, congestion_control=False, initial_window=16384)
    sender = new_sender(data, SESSION_ID, now, config)
    accept_and_send_all(sender, now)
    return sender


def count_resends(sender: SenderSession, now: float, calls: int) -> tuple[int, int]:
    """Call ``datagrams_to_send`` up to ``calls`` times; (DATA datagrams, calls made)."""
    data = 0
    for call in range(1, calls + 1):
        out = sender.datagrams_to_send(now)
        data += sum(1 for d in out if d[5] == PacketType.DATA)
        if sender.state is SenderState.WAITING and not out:
            return data, call
    return data, calls


@pytest.mark.parametrize(
    "ranges",
    [
        ((0, (1 << 64) - 1),),
        ((0, (1 << 64) - 1),) * MAX_RANGES,
        tuple((i, (1 << 64) - 1 - i) for i in range(MAX_RANGES)),
        (((1 << 64) - 2, (1 << 64) - 1), (5, 1 << 63)),
    ],
)
def test_a_nack_for_everything_costs_at_most_the_file(ranges: tuple[tuple[int, int], ...]) -> None:
    now = 1.0
    chunk_count = 300
    sender = sender_waiting(chunk_count, now)
    nack = encode(Nack(SESSION_ID, 0, 0, ranges, pn=2))
    for _ in range(20):  # repeated: never more than the file per round
        sender.receive_datagram(nack, now)
    assert sender.state is SenderState.REPAIRING
    data, calls = count_resends(sender, now, chunk_count + 10)
    assert calls < chunk_count + 10, "the sender never finished its repair round"
    assert data <= chunk_count
    assert sender.state is SenderState.WAITING  # round 1's END is out
    in_file = min(chunk_count, max(last for _, last in ranges) + 1) - min(f for f, _ in ranges)
    assert data == max(0, min(chunk_count, in_file))


def test_a_block_nack_for_everything_costs_at_most_the_manifest() -> None:
    """NACKs of manifest blocks covering every index (86 ranges), repeated: each block's hash
    goes out at most once a round, as chunk repair costs at most the file."""
    data = data_file(4 << 20)
    sender = new_sender(
        data,
        SESSION_ID,
        NOW,
        SenderConfig(congestion_control=False, initial_window=16384),
        manifest=True,
    )
    blocks = len(block_hashes(data, DEFAULT_CHUNK_BYTES))
    accept_and_send_all(sender, NOW)
    everything = ((0, (1 << 64) - 1),) * MAX_RANGES
    nack = encode(Nack(SESSION_ID, 0, 0, everything, kind=RangeKind.BLOCKS, pn=2))
    manifests = 0
    for _ in range(20):
        sender.receive_datagram(nack, NOW)
        out = sender.datagrams_to_send(NOW)
        manifests += sum(1 for d in out if d[5] == PacketType.MANIFEST)
    assert manifests <= blocks, f"{manifests} MANIFEST datagrams for {blocks} blocks"


def forged_meta(
    session: int, mode: Mode, token: bytes = bytes(16), chunk_size: int = 1, size: int = 100_000
) -> bytes:
    meta = Meta(
        session,
        "junk.bin",
        size,
        chunk_size,
        chunk_count_for(size, chunk_size),
        bytes(32),
        mode,
        token=token,
        sent_ns=10**9,
        pn=1,
    )
    return encode(meta)


@pytest.mark.parametrize(
    ("mode", "require_token"),
    [(Mode.RELIABLE, True), (Mode.BLAST, True), (Mode.RELIABLE, False), (Mode.BLAST, False)],
    ids=["reliable", "blast", "reliable-tokenless-receiver", "blast-tokenless-receiver"],
)
def test_an_unvalidated_address_draws_at_most_three_times_its_bytes(
    mode: Mode, require_token: bool
) -> None:
    """A spoofed source: META, DATA with fragmented gaps, then many ENDs; what goes back to
    that address never passes 3x what came from it (RFC 9000 section 8)."""
    endpoint = ReceiverEndpoint(ReceiverConfig(require_token=require_token))
    victim = ("203.0.113.50", 7000)
    now = 1.0
    received = sent = 0
    drawn_by_ends = 0

    def send(datagram: bytes) -> None:
        nonlocal received
        received += len(datagram)
        endpoint.receive_datagram(datagram, victim, now)

    def flush() -> int:
        nonlocal sent
        pump_events(endpoint, ChunkStore(), now)
        endpoint.handle_timer(now)
        out = sum(len(d) for d, to in endpoint.datagrams_to_send(now) if to == victim)
        sent += out
        assert sent <= AMPLIFICATION_FACTOR * received, (sent, received)
        return out

    send(forged_meta(SESSION_ID, mode))
    flush()
    for index in range(0, 4000, 2):  # every other chunk: 2000 gaps
        send(encode_data(SESSION_ID, index, index // 2, b"x", sent_ns=10**9))
        if index % 200 == 0:
            flush()
    flush()
    for round_no in range(100):
        send(encode(End(SESSION_ID, round_no, 2000, 2000, 10**9, pn=2 + round_no)))
        drawn_by_ends += flush()
        now += 0.01
    assert sent <= AMPLIFICATION_FACTOR * received
    if mode is Mode.RELIABLE and not require_token:
        assert drawn_by_ends > 0  # the ENDs were answered with NACKs, within the budget


def token_for(endpoint: ReceiverEndpoint, peer: Peer, session: int, now: float) -> bytes:
    """Send a tokenless reliable META from ``peer`` and read the token the HELLO carries."""
    endpoint.receive_datagram(forged_meta(session, Mode.RELIABLE), peer, now)
    for datagram, to in endpoint.datagrams_to_send(now):
        packet = decode_untrusted(datagram)
        if to == peer and isinstance(packet, Hello) and packet.flags & HelloFlags.RETRY:
            return packet.token
    raise AssertionError("no HELLO(RETRY) came back")


@pytest.mark.parametrize("validated", [False, True], ids=["tokenless-blast", "tokens-echoed"])
def test_junk_metas_from_one_source_do_not_lock_out_another(validated: bool) -> None:
    """40 METAs from one host take at most that host's share, and a real sender from another
    host is still accepted: tokenless blast METAs each followed by one DATA (a transfer that
    starts from probation must pass the same limits), or reliable METAs echoing their tokens
    (that host receives at its addresses)."""
    store = ChunkStore()
    endpoint = ReceiverEndpoint()
    now = 1.0
    for i in range(40):
        peer = (OTHER_HOST, 6000 + i)
        session = 0x7777_0000_0000_0000 + i
        if validated:
            token = token_for(endpoint, peer, session, now)
            endpoint.receive_datagram(forged_meta(session, Mode.RELIABLE, token), peer, now)
        else:
            endpoint.receive_datagram(forged_meta(session, Mode.BLAST), peer, now)
            endpoint.receive_datagram(encode_data(session, 0, 0, b"x", sent_ns=10**9), peer, now)
        endpoint.datagrams_to_send(now)
        pump_events(endpoint, store, now)
    junk = [s for s in endpoint.sessions.values() if s.peer[0] == OTHER_HOST and s.is_transfer]
    assert len(junk) <= endpoint.config.max_transfers_per_source
    data = data_file(50_000, seed=3)
    result = transfer(endpoint, store, data, now=now, config=SenderConfig(chunk_size=1000))
    assert_verified(result, store, data)


def test_unvalidated_blast_transfers_stay_within_the_state_budget() -> None:
    """Tokenless blast METAs announcing 2^20 one-byte chunks, each followed by one DATA: the
    chunk maps they make stay within ``max_state_bytes``."""
    config = ReceiverConfig(max_state_bytes=1 << 20)
    endpoint = ReceiverEndpoint(config)
    now = 1.0
    for i in range(12):
        peer = (OTHER_HOST, 6000 + i)
        session = 0x7777_0000_0000_0000 + i
        endpoint.receive_datagram(forged_meta(session, Mode.BLAST, size=1 << 20), peer, now)
        endpoint.receive_datagram(encode_data(session, 0, 0, b"x", sent_ns=10**9), peer, now)
        endpoint.datagrams_to_send(now)
    assert sum(s.state_bytes for s in endpoint.sessions.values()) <= config.max_state_bytes


def test_a_refused_sender_is_never_accepted_by_its_closed_session() -> None:
    """A sender refused as busy repeats its META (its ABORT was lost) once there is room: it
    is either refused again or really accepted, never told ACCEPTED by a closed session."""
    endpoint = ReceiverEndpoint(ReceiverConfig(max_transfers=1))
    now = 1.0
    first, second = ("203.0.113.1", 1000), ("203.0.113.2", 2000)
    token = token_for(endpoint, first, 1, now)
    endpoint.receive_datagram(forged_meta(1, Mode.RELIABLE, token), first, now)
    meta = forged_meta(2, Mode.RELIABLE, token_for(endpoint, second, 2, now))
    endpoint.receive_datagram(meta, second, now)
    answers = [decode_untrusted(d) for d, to in endpoint.datagrams_to_send(now) if to == second]
    assert [type(a) for a in answers] == [Abort]  # busy: one transfer in progress
    endpoint.receive_datagram(encode(Abort(1, AbortCode.CANCELLED, "", pn=9)), first, now)
    endpoint.datagrams_to_send(now)
    endpoint.receive_datagram(meta, second, now + 0.1)  # the retry, with room now
    for datagram, to in endpoint.datagrams_to_send(now + 0.1):
        answer = decode_untrusted(datagram)
        if to == second and isinstance(answer, Hello) and answer.flags & HelloFlags.ACCEPTED:
            assert endpoint.sessions[(second, 2)].is_transfer, "ACCEPTED from a closed session"


def test_junk_between_meta_and_data_does_not_evict_a_transfer() -> None:
    """64+ junk datagrams from the sender's own host right after its handshake."""
    case = opened(20_000)
    rng = random.Random(0)
    for i in range(200):
        junk_peer = (SENDER_PEER[0], 30000 + i % 50)
        sid = rng.getrandbits(64)
        for junk in (forged_meta(sid, Mode.BLAST), encode_data(sid, 0, 0, b"x"), rng.randbytes(60)):
            case.endpoint.receive_datagram(junk, junk_peer, NOW)
    assert case.endpoint.sessions[(SENDER_PEER, SESSION_ID)] is case.session
    case.finish()


def keyed_hellos(
    endpoint: ReceiverEndpoint, store: ChunkStore, session_id: int
) -> tuple[SenderSession, list[int]]:
    """A keyed transfer through ``endpoint`` (storing into ``store``); the sender and the
    packet numbers of the HELLOs it got."""
    recorded = Recorded()
    data = data_file(5000)
    config = SenderConfig(chunk_size=1000)
    sender, _, _ = transfer(
        endpoint, store, data, session_id=session_id, config=config,
        keyed=True, record=recorded,
    )  # fmt: skip
    hellos = [d for d in recorded.reverse if d[5] == PacketType.HELLO]
    return sender, [parse_header_untrusted(d).pn for d in hellos]


def test_keyed_hellos_never_share_a_packet_number() -> None:
    """Every HELLO of one keyed session is sealed under the same handshake key, the stateless
    RETRY as well as the session's ACCEPTED: a packet number used twice is a repeated AES-GCM
    nonce (it gives away the GHASH key)."""
    store = ChunkStore()
    sender, pns = keyed_hellos(new_endpoint(keyed=True), store, SESSION_ID)
    assert sender.outcome is not None
    assert sender.outcome.outcome == "complete"
    assert len(pns) >= 2
    assert len(set(pns)) == len(pns), f"HELLO packet numbers {pns}"


def test_replayed_keyed_metas_do_not_block_later_handshakes() -> None:
    """An on-path attacker without the key replays one captured keyed META 4,200 times (each
    answered with a stateless HELLO to the attacker): later keyed senders still get in (their
    ACCEPTED must not look older than the RETRY they got, 4,096 numbers being the replay
    window)."""
    store = ChunkStore()
    endpoint = new_endpoint(keyed=True)
    recorded = Recorded()
    transfer(endpoint, store, data_file(5000), keyed=True, record=recorded)
    meta = next(d for d in recorded.forward if d[5] == PacketType.META)
    attacker = ("203.0.113.66", 9999)
    for _ in range(4200):
        endpoint.receive_datagram(meta, attacker, NOW)
        endpoint.datagrams_to_send(NOW)
    sender, _ = keyed_hellos(endpoint, store, 77)
    assert sender.outcome is not None
    assert sender.outcome.outcome == "complete", sender.outcome.reason


def test_data_of_the_transfer_decodes_as_captured(corpus: list[bytes]) -> None:
    """The corpus is real traffic: every datagram in it decodes."""
    packets = [decode_untrusted(d) for d in corpus]
    assert sum(isinstance(p, Data) for p in packets) >= 40
