"""The sans-IO sessions against each other on a fake clock over seeded terrible networks."""

from __future__ import annotations

import hashlib
import random
from dataclasses import FrozenInstanceError, replace

import pytest
from helpers import PEER, Link, connect, drive, drop_first_copies, drop_types, run_pair

from udpxfer.protocol.codec import decode_untrusted, encode
from udpxfer.protocol.endpoint import ReceiverEndpoint
from udpxfer.protocol.events import (
    ChunkReceived,
    Outcome,
    TransferEnded,
    TransferStarted,
    VerifyRequested,
)
from udpxfer.protocol.receiver import ReceiverConfig
from udpxfer.protocol.receiver_state import ReceiverState
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.sender_core import SenderCore
from udpxfer.protocol.sender_data import DataRun
from udpxfer.protocol.sender_state import TRANSITIONS, SenderState
from udpxfer.protocol.wire import (
    Abort,
    AbortCode,
    Data,
    End,
    Have,
    Hello,
    HelloFlags,
    Meta,
    Mode,
    Nack,
    PacketType,
    Status,
    Verdict,
)

CHUNK = 1000
BLAST = SenderConfig(chunk_size=CHUNK, mode=Mode.BLAST)
RELIABLE = SenderConfig(chunk_size=CHUNK)


def reliable_sender(data: bytes, session_id: int, name: str = "f") -> SenderSession:
    """A reliable sender of ``data`` started at time 1.0."""
    return SenderSession(
        data,
        name=name,
        sha256=hashlib.sha256(data).digest(),
        session_id=session_id,
        now=1.0,
        config=RELIABLE,
    )


def payload(n_bytes: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n_bytes)


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK * 50, CHUNK * 50 + 1, CHUNK * 50 - 1])
@pytest.mark.parametrize("config", [BLAST, RELIABLE], ids=["blast", "reliable"])
def test_clean_transfer_is_byte_exact(size: int, config: SenderConfig) -> None:
    data = payload(size)
    result = run_pair(data, sender_config=config)
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == "complete"
    assert [e.outcome for e in result.ended] == ["complete"]
    assert bytes(result.stored[:size]) == data
    assert result.session is not None
    assert result.session.gaps() == []
    assert result.sender.stats().chunks_resent == 0


def test_blast_gaps_are_exactly_the_dropped_chunks() -> None:
    data = payload(CHUNK * 300 + 7)
    lost = {0, 1, 2, 50, 51, 199, 300}
    result = run_pair(
        data,
        sender_config=BLAST,
        forward=Link(random.Random(5), drop=drop_first_copies(lost)),
    )
    session = result.session
    assert session is not None
    assert session.gaps() == [(0, 2), (50, 51), (199, 199), (300, 300)]
    assert session.first_pass_gaps() == session.gaps()
    assert [e.outcome for e in result.ended] == ["incomplete"]
    assert result.sender.stats().verdict is Verdict.INCOMPLETE
    for index in range(301):
        if index not in lost:
            chunk = slice(index * CHUNK, (index + 1) * CHUNK)
            assert result.stored[chunk] == data[chunk]


def test_stats_are_one_frozen_view_of_the_counters() -> None:
    """``stats()`` says what the session's counters say, and does not change with them."""
    data = payload(CHUNK * 200)
    result = run_pair(data, sender_config=RELIABLE, forward=Link(random.Random(2), loss=0.1))
    session = result.session
    assert session is not None
    stats = session.stats()
    assert stats.outcome is not None
    assert stats.outcome.outcome is Outcome.COMPLETE
    assert (stats.held, stats.complete, stats.chunk_size) == (200, True, CHUNK)
    assert stats.retransmitted == session.retransmitted > 0
    assert stats.nacks_sent == session.nacks_sent > 0
    assert stats.data_received == session.data_received
    assert stats.finished_at == session.finished_at
    with pytest.raises(FrozenInstanceError):
        stats.held = 0  # type: ignore[misc]


@pytest.mark.parametrize("seed", range(4))
def test_reliable_survives_20_percent_loss_both_ways(seed: int) -> None:
    data = payload(CHUNK * 400 + 3, seed)
    result = run_pair(
        data,
        sender_config=RELIABLE,
        forward=Link(random.Random(seed), loss=0.2),
        reverse=Link(random.Random(seed + 100), loss=0.2),
    )
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == "complete"
    assert bytes(result.stored[: len(data)]) == data
    assert result.session is not None
    first_pass_lost = sum(b - a + 1 for a, b in result.session.first_pass_gaps())
    assert 40 < first_pass_lost < 130  # about 20% of 401 first copies were lost
    assert result.session.retransmitted >= first_pass_lost


@pytest.mark.parametrize(
    "lost",
    [set(range(100, 300)), {0, 499}, {0}, {499}, set(range(500))],
    ids=["burst-200", "first-and-last", "first", "last", "everything"],
)
def test_reliable_repairs_bursts_and_edges(lost: set[int]) -> None:
    data = payload(CHUNK * 500)
    result = run_pair(
        data, sender_config=RELIABLE, forward=Link(random.Random(1), drop=drop_first_copies(lost))
    )
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == "complete"
    assert bytes(result.stored) == data
    assert result.session is not None
    gaps = result.session.first_pass_gaps()
    assert {i for a, b in gaps for i in range(a, b + 1)} == lost
    assert result.sender.stats().chunks_resent == len(lost)


@pytest.mark.parametrize(
    ("forward_drop", "reverse_drop"),
    [
        ((PacketType.META,), ()),  # every first META copy lost: data waits for a later one
        ((PacketType.END,), ()),  # END lost twice
        ((), (PacketType.NACK,)),
        ((), (PacketType.DONE,)),
        ((), (PacketType.STATUS,)),
    ],
    ids=["meta", "end", "nack", "done", "status"],
)
def test_reliable_survives_losing_control_datagrams(
    forward_drop: tuple[PacketType, ...], reverse_drop: tuple[PacketType, ...]
) -> None:
    data = payload(CHUNK * 1000)
    lost = {3, 500}
    forward_rules = [drop_first_copies(lost), drop_types(*forward_drop, times=3)]
    reverse_rule = drop_types(*reverse_drop, times=2)
    result = run_pair(
        data,
        sender_config=RELIABLE,
        forward=Link(random.Random(2), drop=lambda d: any(rule(d) for rule in forward_rules)),
        reverse=Link(random.Random(3), drop=reverse_rule),
    )
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == "complete"
    assert bytes(result.stored) == data


def test_reliable_with_duplicates_and_reordering() -> None:
    data = payload(CHUNK * 600)
    result = run_pair(
        data,
        sender_config=RELIABLE,
        forward=Link(random.Random(8), loss=0.05, duplicate=0.1, jitter_s=0.01),
        reverse=Link(random.Random(9), loss=0.05, duplicate=0.1, jitter_s=0.01),
    )
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == "complete"
    assert bytes(result.stored) == data
    assert result.session is not None
    assert result.session.duplicates > 0
    assert result.session.out_of_order > 0


@pytest.mark.parametrize("seed", range(3))
def test_reliable_meets_the_five_percent_bar(seed: int) -> None:
    """First copies of 5% of chunks dropped, plus 5% of every datagram both ways."""
    data = payload(CHUNK * 2000, seed)
    rng = random.Random(seed)
    lost = set(rng.sample(range(2000), 100))
    forward_rule = drop_first_copies(lost)
    result = run_pair(
        data,
        sender_config=RELIABLE,
        forward=Link(random.Random(seed + 1), loss=0.05, drop=forward_rule),
        reverse=Link(random.Random(seed + 2), loss=0.05),
    )
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == "complete"
    assert bytes(result.stored) == data
    assert result.session is not None
    first_pass = {i for a, b in result.session.first_pass_gaps() for i in range(a, b + 1)}
    assert lost <= first_pass


def test_sender_gives_up_when_the_receiver_is_silent() -> None:
    data = payload(CHUNK * 20)
    config = SenderConfig(chunk_size=CHUNK, give_up_s=3.0)
    result = run_pair(data, sender_config=config, reverse=Link(random.Random(0), loss=1.0))
    assert result.sender.state is SenderState.FAILED
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == "timeout"
    stats = result.sender.stats()
    assert stats.finished_at is not None
    assert 3.0 <= stats.finished_at - stats.started_at <= 3.1


def test_receiver_times_out_when_the_sender_vanishes() -> None:
    endpoint = ReceiverEndpoint(ReceiverConfig(idle_timeout_s=2.0))
    sender = SenderSession(
        payload(CHUNK * 10), name="x", sha256=bytes(32), session_id=9, now=0.0,
        config=RELIABLE,
    )  # fmt: skip
    connect(sender, endpoint, 0.0)
    for datagram in sender.datagrams_to_send(0.0)[:2]:  # two chunks only
        endpoint.receive_datagram(datagram, PEER, 0.0)
    assert endpoint.get_timer() == pytest.approx(2.0)
    endpoint.handle_timer(2.0)
    events = []
    while (item := endpoint.next_event()) is not None:
        events.append(item[1])
    ended = [e for e in events if isinstance(e, TransferEnded)]
    assert [e.outcome for e in ended] == ["timeout"]
    aborts = [decode_untrusted(d) for d, _ in endpoint.datagrams_to_send()]
    assert any(getattr(p, "reason", "") == "receiver timed out" for p in aborts)


def test_every_sender_move_is_in_its_transition_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over lossy runs of both modes, each state change the sender makes is one the table
    allows (none refused), and together they walk the whole machine but for the failures."""
    moves: list[tuple[SenderState, SenderState, bool]] = []
    move = SenderCore._move

    def watched(self: SenderCore, state: SenderState) -> bool:
        before = self.state
        moved = move(self, state)
        moves.append((before, state, moved))
        return moved

    monkeypatch.setattr(SenderCore, "_move", watched)
    data = payload(CHUNK * 300)
    for config in (RELIABLE, BLAST):
        lossy = Link(random.Random(2), loss=0.1, duplicate=0.05, jitter_s=0.002)
        result = run_pair(data, sender_config=config, forward=lossy)
        assert result.sender.state is SenderState.DONE
    assert all(moved for _, _, moved in moves)
    assert {(before, after) for before, after, _ in moves} == {
        (SenderState.HANDSHAKE, SenderState.SENDING),
        (SenderState.SENDING, SenderState.WAITING),
        (SenderState.WAITING, SenderState.REPAIRING),
        (SenderState.REPAIRING, SenderState.WAITING),
        (SenderState.WAITING, SenderState.DONE),
        (SenderState.SENDING, SenderState.CLOSING),
        (SenderState.CLOSING, SenderState.DONE),
    }
    assert set(TRANSITIONS) == set(SenderState)
    assert TRANSITIONS[SenderState.DONE] == TRANSITIONS[SenderState.FAILED] == frozenset()


def test_blast_sender_finishes_without_any_reverse_path() -> None:
    data = payload(CHUNK * 300)
    result = run_pair(data, sender_config=BLAST, reverse=Link(random.Random(0), loss=1.0))
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == "sent"
    assert result.sender.state is SenderState.DONE
    assert bytes(result.stored) == data


def test_pacing_follows_the_rate() -> None:
    data = payload(CHUNK * 500)
    rate = 8_000_000  # 1 MB/s
    result = run_pair(data, sender_config=SenderConfig(chunk_size=CHUNK, rate_bps=rate))
    stats = result.sender.stats()
    sent_bytes = stats.bytes_sent
    assert stats.finished_at is not None
    duration = stats.finished_at - stats.started_at
    assert duration == pytest.approx(sent_bytes * 8 / rate, rel=0.05)


def test_sender_abort_reaches_the_receiver() -> None:
    endpoint = ReceiverEndpoint()
    sender = SenderSession(
        payload(CHUNK * 10), name="x", sha256=bytes(32), session_id=9, now=0.0, config=RELIABLE
    )
    connect(sender, endpoint, 0.0)
    for datagram in sender.datagrams_to_send(0.0)[:4]:
        endpoint.receive_datagram(datagram, PEER, 0.0)
    sender.abort("user pressed Ctrl-C", 0.1)
    for datagram in sender.datagrams_to_send(0.1):
        endpoint.receive_datagram(datagram, PEER, 0.1)
    events = []
    while (item := endpoint.next_event()) is not None:
        events.append(item[1])
    ended = [e for e in events if isinstance(e, TransferEnded)]
    assert len(ended) == 1
    assert ended[0].outcome == "aborted"
    assert "Ctrl-C" in ended[0].reason


def test_an_abort_counts_only_the_data_that_left() -> None:
    """Runs built but never sent (the driver was interrupted first) do not count as sent: the
    ABORT's first-pass mark and the send counters stop at the last run that left."""
    endpoint = ReceiverEndpoint()
    sender = SenderSession(
        payload(CHUNK * 400), name="x", sha256=bytes(32), session_id=9, now=0.0, config=RELIABLE
    )
    connect(sender, endpoint, 0.0)
    sent = [item for item in sender.transmit(0.1) if isinstance(item, DataRun)]
    for run in sent:  # these left: the receiver's answers open the window for more
        for datagram in run.datagrams():
            endpoint.receive_datagram(datagram, PEER, 0.1)
    for datagram, _peer in endpoint.datagrams_to_send(0.1):
        sender.receive_datagram(datagram, 0.1)
    unsent = [item for item in sender.transmit(0.11) if isinstance(item, DataRun)]
    assert sent
    assert unsent
    before = sender.stats()
    sender.abort("interrupted", 0.2, unsent=unsent)
    aborts = [decode_untrusted(d) for d in sender.datagrams_to_send(0.2)]
    left = sent[-1].first + sent[-1].count
    assert unsent[0].first == left
    assert {a.chunks_sent for a in aborts if isinstance(a, Abort)} == {left}
    after = sender.stats()
    assert after.first_pass_sent == left
    assert before.datagrams_sent - after.datagrams_sent == sum(r.count for r in unsent) - 2


def test_data_before_meta_is_kept_and_replayed() -> None:
    data = payload(CHUNK * 3)
    sender = SenderSession(
        data, name="x", sha256=hashlib.sha256(data).digest(), session_id=5, now=0.0,
        config=BLAST,
    )  # fmt: skip
    datagrams = sender.datagrams_to_send(0.0)
    metas = [d for d in datagrams if isinstance(decode_untrusted(d), Meta)]
    others = [d for d in datagrams if not isinstance(decode_untrusted(d), Meta)]
    endpoint = ReceiverEndpoint()
    for datagram in others:
        endpoint.receive_datagram(datagram, PEER, 0.0)
    assert endpoint.next_event() is None
    endpoint.receive_datagram(metas[0], PEER, 0.01)
    kinds = []
    while (item := endpoint.next_event()) is not None:
        kinds.append(type(item[1]))
    assert kinds[0] is TransferStarted
    assert kinds.count(ChunkReceived) == 3
    assert kinds[-1] is VerifyRequested
    assert endpoint.rejected == 0


def test_foreign_and_forged_datagrams_are_counted_not_fatal() -> None:
    endpoint = ReceiverEndpoint(ReceiverConfig(max_pending_sessions=4))
    rng = random.Random(0)
    for _ in range(500):
        endpoint.receive_datagram(rng.randbytes(rng.randrange(0, 200)), PEER, 0.0)
    for session in range(100):  # valid-looking data of sessions that never send META
        endpoint.receive_datagram(encode(Data(session, 0, 0, b"x")), PEER, 0.0)
    endpoint.receive_datagram(encode(Status(1, 0, 0, 0, 0)), PEER, 0.0)  # wrong direction
    endpoint.receive_datagram(encode(Nack(1, 0, 0, ((0, 1),))), PEER, 0.0)
    assert endpoint.received == 602
    assert endpoint.rejected == 500 + 96 + 2
    endpoint.handle_timer(100.0)  # the four kept sessions expire: their datagrams were junk
    assert endpoint.rejected == 602
    assert endpoint.sessions == {}


def test_data_that_does_not_fit_the_file_is_rejected() -> None:
    data = payload(CHUNK * 2 + 10)
    sender = SenderSession(
        data, name="x", sha256=hashlib.sha256(data).digest(), session_id=5, now=0.0,
        config=RELIABLE,
    )  # fmt: skip
    endpoint = ReceiverEndpoint()
    connect(sender, endpoint, 0.0)
    for bad in (
        Data(5, 3, 0, b"x" * CHUNK),  # past the last chunk
        Data(5, 0, 0, b"x" * (CHUNK - 1)),  # short
        Data(5, 2, 0, b"x" * CHUNK),  # the last chunk is 10 bytes
        End(6, 0, 0, 0),  # a different session: an unknown one, kept until META
    ):
        endpoint.receive_datagram(encode(bad), PEER, 0.0)
    assert endpoint.rejected == 3
    (session,) = [s for s in endpoint.sessions.values() if s.session_id == 5]
    assert session.held_count == 0
    assert session.state is ReceiverState.RECEIVING


@pytest.mark.parametrize("seed", range(40))
def test_terrible_networks_never_corrupt_the_file(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([0, 1, CHUNK - 1, CHUNK, rng.randrange(1, CHUNK * 300)])
    data = payload(size, seed)

    def link(s: int) -> Link:
        return Link(
            random.Random(s),
            loss=rng.uniform(0, 0.3),
            duplicate=rng.uniform(0, 0.2),
            delay_s=rng.uniform(0.0001, 0.05),
            jitter_s=rng.uniform(0, 0.02),
        )

    mode = rng.choice([Mode.BLAST, Mode.RELIABLE])
    result = run_pair(
        data,
        sender_config=SenderConfig(chunk_size=CHUNK, mode=mode, give_up_s=60.0),
        forward=link(seed),
        reverse=link(seed + 1000),
    )
    outcome = result.sender.outcome
    assert outcome is not None
    session = result.session
    if mode is Mode.RELIABLE:
        assert outcome.outcome == "complete"
        assert bytes(result.stored[:size]) == data
    elif session is not None and session.meta is not None:
        for index in range(session.meta.chunk_count):  # whatever arrived is byte-exact
            if session.held[index]:
                chunk = slice(index * CHUNK, min((index + 1) * CHUNK, size))
                assert result.stored[chunk] == data[chunk]


@pytest.mark.parametrize(
    ("config", "size", "chunk"),
    [
        (ReceiverConfig(max_file_bytes=1000), 5000, 100),
        (ReceiverConfig(max_chunks=10), 5000, 100),
    ],
    ids=["too-large", "too-many-chunks"],
)
def test_receiver_refuses_what_exceeds_its_limits(
    config: ReceiverConfig, size: int, chunk: int
) -> None:
    endpoint = ReceiverEndpoint(config)
    meta = Meta(9, "big", size, chunk, -(-size // chunk), bytes(32), Mode.RELIABLE)
    endpoint.receive_datagram(encode(meta), PEER, 0.0)
    (hello,) = [decode_untrusted(d) for d, _ in endpoint.datagrams_to_send()]
    assert isinstance(hello, Hello)
    assert not endpoint.sessions  # a META without the token creates nothing
    endpoint.receive_datagram(encode(replace(meta, token=hello.token)), PEER, 0.0)
    (session,) = endpoint.sessions.values()
    assert session.held.size == 0  # no per-chunk state allocated
    assert "limit" in session.refusal
    replies = [decode_untrusted(d) for d, _ in endpoint.datagrams_to_send()]
    assert [type(r).__name__ for r in replies] == ["Abort"]
    assert endpoint.next_event() is None  # nothing to create or report
    endpoint.receive_datagram(encode(Data(9, 0, 0, b"x" * chunk)), PEER, 0.1)
    endpoint.handle_timer(0.2)
    assert endpoint.rejected == 1  # the DATA that followed the refusal


def test_receiver_refuses_transfers_beyond_its_concurrency_limit() -> None:
    endpoint = ReceiverEndpoint(ReceiverConfig(max_transfers=2))
    for session in range(3):
        meta = Meta(session, "f", 10, 5, 2, bytes(32), Mode.BLAST)
        endpoint.receive_datagram(encode(meta), PEER, 0.0)
        endpoint.receive_datagram(encode(Data(session, 0, 0, b"12345")), PEER, 0.0)
    replies = [decode_untrusted(d) for d, _ in endpoint.datagrams_to_send()]
    for reply in replies:  # every blast sender echoes its token: validated, it asks for room
        if isinstance(reply, Hello) and reply.flags & HelloFlags.RETRY:
            meta = Meta(reply.session, "f", 10, 5, 2, bytes(32), Mode.BLAST, token=reply.token)
            endpoint.receive_datagram(encode(meta), PEER, 0.0)
    assert endpoint.active_transfers == 2
    replies = [decode_untrusted(d) for d, _ in endpoint.datagrams_to_send()]
    assert any(getattr(r, "reason", "").startswith("receiver busy") for r in replies)


def test_a_meta_nobody_follows_up_creates_nothing() -> None:
    endpoint = ReceiverEndpoint(ReceiverConfig(idle_timeout_s=2.0))
    for session in range(10):
        meta = Meta(session, f"forged-{session}", 1000, 100, 10, bytes(32), Mode.BLAST)
        endpoint.receive_datagram(encode(meta), PEER, 0.0)
    assert endpoint.next_event() is None  # no file, no report: not a transfer yet
    assert endpoint.active_transfers == 0
    answers = [decode_untrusted(d) for d, _ in endpoint.datagrams_to_send(0.0)]
    assert sum(isinstance(a, Hello) for a in answers) == 10  # each META gets its token
    endpoint.receive_datagram(encode(Data(3, 0, 0, b"y" * 100)), PEER, 0.5)  # session 3 goes on
    item = endpoint.next_event()
    assert item is not None
    assert isinstance(item[1], TransferStarted)
    assert item[0].session_id == 3
    endpoint.handle_timer(2.0)
    assert sorted(s.session_id for s in endpoint.sessions.values()) == [3]
    assert endpoint.rejected == 9  # the nine METAs nobody followed up were junk


def test_junk_sessions_cannot_lock_out_a_real_sender() -> None:
    endpoint = ReceiverEndpoint(ReceiverConfig(max_pending_sessions=8))
    for session in range(1000):  # a flood of forged METAs, each a new session
        meta = Meta(session, "x", 1000, 100, 10, bytes(32), Mode.BLAST)
        endpoint.receive_datagram(encode(meta), PEER, 0.0)
    data = payload(CHUNK * 3)
    real = SenderSession(
        data, name="real", sha256=hashlib.sha256(data).digest(), session_id=1 << 40,
        now=0.01, config=RELIABLE,
    )  # fmt: skip
    connect(real, endpoint, 0.01)
    started = []
    while (item := endpoint.next_event()) is not None:
        if isinstance(item[1], TransferStarted):
            started.append(item[0].session_id)
    assert started == [1 << 40]
    assert len(endpoint.sessions) <= 9  # eight kept on probation, and the real one


def test_a_receiver_busy_verifying_still_answers_the_sender() -> None:
    data = payload(CHUNK * 4)
    sender = reliable_sender(data, 5, "x")
    endpoint = ReceiverEndpoint()
    connect(sender, endpoint, 1.0)
    for datagram in sender.datagrams_to_send(1.0):
        endpoint.receive_datagram(datagram, PEER, 1.0)
    kinds = []
    while (item := endpoint.next_event()) is not None:
        kinds.append(type(item[1]))
    assert VerifyRequested in kinds  # every chunk held; the driver is hashing (slowly)
    endpoint.datagrams_to_send(1.0)
    for second in (2.0, 5.0, 9.0):  # the sender's END retransmissions while the hash runs
        endpoint.receive_datagram(encode(End(5, 0, 4, 4, int(second * 1e9))), PEER, second)
        replies = [decode_untrusted(d) for d, _ in endpoint.datagrams_to_send(second)]
        assert [type(r) for r in replies] == [Status]
        sender.receive_datagram(encode(replies[0]), second)
    sender.handle_timer(12.0)  # 11 s after it started, 3 s after the last answer
    assert not sender.finished  # alive: no give-up while the receiver answers


def test_sender_says_closed_after_the_verdict_and_the_receiver_stops_lingering() -> None:
    result = run_pair(payload(CHUNK * 20), sender_config=RELIABLE)
    assert result.sender.outcome is not None
    assert result.sender.outcome.outcome == "complete"
    # The simulation ends when the endpoint has forgotten the session: with the sender's
    # ABORT closed that is right after the verdict, not a whole linger later.
    assert result.session is not None
    finished = result.session.finished_at
    assert finished is not None
    assert result.elapsed_s < finished + ReceiverConfig().linger_s / 2


def test_closed_before_the_verdict_changes_nothing() -> None:
    """A forged ABORT closed in the middle of a transfer neither ends nor closes it."""
    data = payload(CHUNK * 10)
    sender = reliable_sender(data, 5, "f")
    endpoint = ReceiverEndpoint()
    session = connect(sender, endpoint, 1.0)
    forged = encode(Abort(5, AbortCode.CLOSED, "forged", 2, 0, 77))
    endpoint.receive_datagram(forged, PEER, 2.0)
    assert session.state is ReceiverState.RECEIVING
    assert not session.closed


@pytest.mark.parametrize("code", [AbortCode.CANCELLED, AbortCode.CLOSED, AbortCode.BUSY])
def test_an_abort_after_the_verdict_changes_nothing(code: AbortCode) -> None:
    """An ABORT read after the verdict (later in the same receive, or forged) neither turns a
    verified transfer into an aborted one nor ends the session a second time."""
    result = run_pair(payload(CHUNK * 20), sender_config=RELIABLE)
    sender = result.sender
    assert sender.outcome is not None
    assert sender.outcome.outcome is Outcome.COMPLETE
    while sender.next_event() is not None:
        pass
    late = encode(Abort(sender.session_id, code, "late", 2, 0, 10**6))
    sender.receive_datagram(late, result.elapsed_s + 0.01)
    assert sender.outcome.outcome is Outcome.COMPLETE
    assert sender.state is SenderState.DONE
    assert sender.next_event() is None


def test_a_blast_transfer_that_proves_its_address_when_the_receiver_is_busy_goes_on() -> None:
    """A blast sender's DATA starts its transfer before its token-echoing META arrives. If the
    validated transfers fill the receiver by then, the transfer keeps its place among the
    unvalidated ones: it is neither refused midway nor closed without a word."""
    endpoint = ReceiverEndpoint(ReceiverConfig(max_transfers=1))
    connect(reliable_sender(payload(CHUNK * 50), 1, "busy"), endpoint, 0.0)  # fills the pool
    other = ("192.0.2.2", 4000)
    blast = SenderSession(
        payload(CHUNK * 30, seed=1), name="b", sha256=bytes(32), session_id=2, now=0.0,
        config=BLAST,
    )  # fmt: skip
    answers: list[object] = []
    for step in range(6):
        now = 0.01 * step
        for datagram in blast.datagrams_to_send(now):
            endpoint.receive_datagram(datagram, other, now)
        for datagram, to in endpoint.datagrams_to_send(now):
            if to == other:
                answers.append(decode_untrusted(datagram))
                blast.receive_datagram(datagram, now)
    session = endpoint.sessions[(other, 2)]
    assert [a for a in answers if isinstance(a, Hello) and a.token]  # the token went out
    assert session.state in {ReceiverState.RECEIVING, ReceiverState.VERIFYING}
    assert not session.validated
    assert not [a for a in answers if isinstance(a, Abort)]
    ended = []
    while (item := endpoint.next_event()) is not None:
        if item[0] is session and isinstance(item[1], TransferEnded):
            ended.append(item[1])
    assert ended == []


def test_a_transfer_refused_midway_still_ends_with_its_reason() -> None:
    """Should limits ever turn away a session that is already a transfer, it ends as aborted
    (a report, its file closed), never silently."""
    endpoint = ReceiverEndpoint()
    session = connect(reliable_sender(payload(CHUNK * 10), 3, "f"), endpoint, 0.0)
    while endpoint.next_event() is not None:
        pass
    session.refuse("receiver busy: test", 1.0)
    events = []
    while (item := endpoint.next_event()) is not None:
        events.append(item[1])
    assert [(e.outcome, e.reason) for e in events if isinstance(e, TransferEnded)] == [
        (Outcome.ABORTED, "receiver busy: test")
    ]
    assert session.closed


def resuming_sender() -> SenderSession:
    """A sender whose receiver accepted it, resuming with 10 chunks held (its HAVE to come)."""
    data = payload(CHUNK * 30)
    sender = reliable_sender(data, 9, "f")
    sender.receive_datagram(encode(Hello(9, HelloFlags.RETRY, token=b"t" * 16, pn=1)), 1.0)
    sender.datagrams_to_send(1.0)
    accepted = Hello(9, HelloFlags.ACCEPTED | HelloFlags.RESUMING, held=10, window=64, pn=2)
    sender.receive_datagram(encode(accepted), 1.0)
    return sender


def test_resuming_sender_waits_for_the_have_before_sending_data() -> None:
    sender = resuming_sender()
    sent = [decode_untrusted(d) for d in sender.datagrams_to_send(1.0)]
    assert not [p for p in sent if isinstance(p, Data)]  # nothing until the HAVE
    sender.receive_datagram(encode(Have(9, ((0, 9),), 0, 0, 3)), 1.001)
    indexes = [p.index for p in map(decode_untrusted, sender.datagrams_to_send(1.001))
               if isinstance(p, Data)]  # fmt: skip
    assert indexes
    assert min(indexes) == 10
    assert sender.stats().resumed == 10


def test_resuming_sender_goes_on_when_the_have_is_lost() -> None:
    sender = resuming_sender()
    timer = sender.get_timer()
    assert timer is not None
    assert timer <= 2.0
    sender.handle_timer(timer)
    sent = [decode_untrusted(d) for d in sender.datagrams_to_send(timer)]
    assert [p.index for p in sent if isinstance(p, Data)][:1] == [0]


def test_a_receiver_restarted_after_the_first_pass_picks_the_transfer_up() -> None:
    """The receiver dies once the first pass is out and a new one (new secret, nothing of
    this transfer known) starts on the same address: the sender, waiting for the verdict of
    its END, hears nothing, re-announces its META, and the transfer completes."""
    data = payload(CHUNK * 40)
    sender = reliable_sender(data, 5, "x")
    old = ReceiverEndpoint(token_secret=bytes(32))
    connect(sender, old, 1.0)
    now = 1.0
    while sender.state is not SenderState.WAITING:  # the first pass goes into the old one
        for datagram in sender.datagrams_to_send(now):
            old.receive_datagram(datagram, PEER, now)
        for datagram, _peer in old.datagrams_to_send(now):
            sender.receive_datagram(datagram, now)
        now += 0.001
    # The old receiver is gone: its answer to the END never leaves. A new one starts.
    restarted = ReceiverEndpoint(token_secret=b"\x01" * 32)
    give_up_at = now + RELIABLE.give_up_s
    end = drive(sender, restarted, now, give_up_at + 1.0)
    assert sender.outcome is not None
    assert sender.outcome.outcome == "complete", sender.outcome.reason
    assert end < now + 5.0  # picked up within a few retransmission timeouts, not at give-up


def test_a_flood_of_forgeries_from_one_host_costs_it_a_few_sessions_and_answers() -> None:
    """Check-valid forgeries with random session ids: a host opens at most its share of
    sessions that are no transfer yet, and of answered METAs, each second; a real sender
    on another host meanwhile gets its transfer."""
    config = ReceiverConfig(pending_opened_per_source_s=16.0, handshakes_per_source_s=100.0)
    endpoint = ReceiverEndpoint(config)
    flooder = ("192.0.2.66", 5000)
    rng = random.Random(0)
    opened = set()
    hellos = 0
    now = 1.0
    for _ in range(4000):  # two seconds of a 2,000 datagrams/s flood
        sid = rng.getrandbits(64)
        forged = (
            Data(sid, 0, 0, b"x" * CHUNK)
            if rng.random() < 0.5
            else Meta(sid, "x", 10, 5, 2, bytes(32), rng.choice([Mode.RELIABLE, Mode.BLAST]))
        )
        endpoint.receive_datagram(encode(forged), flooder, now)
        opened.update(s.session_id for s in endpoint.sessions.values())
        replies = [decode_untrusted(d) for d, _ in endpoint.datagrams_to_send(now)]
        hellos += sum(isinstance(r, Hello) for r in replies)
        now += 0.0005
    assert len(opened) <= 16 + 16 * 2  # the burst, then 16 a second
    assert hellos <= 100 + 100 * 2
    data = payload(CHUNK * 20)
    real = SenderSession(
        data, name="real", sha256=hashlib.sha256(data).digest(), session_id=7, now=now,
        config=RELIABLE,
    )  # fmt: skip
    connect(real, endpoint, now)  # from PEER, another host
    assert drive(real, endpoint, now, now + 5.0) < now + 5.0
    assert real.outcome is not None
    assert real.outcome.outcome == "complete"
