"""The batch data path: decoding a receive buffer at once, and a session taking a batch, must
give exactly what the row path gives, datagram by datagram, on every input."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from helpers import PEER, gro_buffers
from hypothesis import given, settings
from hypothesis import strategies as st

from udpxfer.analysis import online_report
from udpxfer.errors import MalformedPacket
from udpxfer.protocol.batch import decode_batch_untrusted, payload_views, row_count
from udpxfer.protocol.codec import decode_untrusted, encode
from udpxfer.protocol.endpoint import ReceiverEndpoint
from udpxfer.protocol.events import ChunkReceived
from udpxfer.protocol.framing import encode_data
from udpxfer.protocol.receiver import ReceiverConfig, ReceiverSession
from udpxfer.protocol.receiver_core import EventSink
from udpxfer.protocol.receiver_state import ReceiverState
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.sender_data import DataRun
from udpxfer.protocol.wire import CRC_BYTES, HEADER_BYTES, MAX_PN, Data, End, Flags, Meta, Mode

CHUNK = 100
SESSION = 0x1234
ORIGIN_NS = 10**15
SPREAD_NS = 7 * 86400 * 10**9

# -- decoding ---------------------------------------------------------------------------------

field_values = st.one_of(
    st.integers(0, 40),
    st.sampled_from([0, 1, 2**31, MAX_PN, MAX_PN + 1, 2**63 - 1, 2**63, 2**64 - 1]),
)


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    """A DATA datagram, valid or damaged in one of the ways a network or a forger damages."""
    payload = draw(st.binary(min_size=0, max_size=CHUNK))
    flags = draw(st.sampled_from([0, 1, 2, 3, 4, 8, 0x10, 0x80]))
    try:
        datagram = bytearray(
            encode_data(
                draw(st.sampled_from([SESSION, SESSION + 1])),
                draw(field_values),
                draw(field_values),
                payload,
                pass_no=draw(st.integers(0, 255)),
                flags=flags & 3,
                sent_ns=draw(field_values),
            )
        )
    except Exception:  # a field out of range for the encoder: plain junk instead
        datagram = bytearray(draw(st.binary(min_size=0, max_size=CHUNK + 50)))
    kind = draw(st.sampled_from(["ok", "ok", "ok", "flip", "truncate", "flags", "control"]))
    if kind == "flip" and datagram:
        at = draw(st.integers(0, len(datagram) - 1))
        datagram[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        datagram = datagram[: draw(st.integers(0, len(datagram)))]
    elif kind == "flags" and len(datagram) > 6:
        datagram[6] = flags  # an unknown or keyed flag under a CRC made without it
    elif kind == "control":
        datagram = bytearray(encode(End(SESSION, 1, 2, 3, 4, 5)))
    return bytes(datagram)


def row_data(datagram: bytes) -> Data | None:
    """The row decoder's answer: a keyless DATA, or None for anything else."""
    try:
        packet = decode_untrusted(datagram)
    except MalformedPacket:
        return None
    return packet if isinstance(packet, Data) else None


@given(st.lists(datagrams(), min_size=1, max_size=70), st.integers(0, 3))
@settings(max_examples=400, deadline=None)
def test_batch_decode_equals_row_decode(items: list[bytes], pad: int) -> None:
    """Every buffer GRO could hand over (and junk cut into segments): the fast rows are
    exactly the rows the row decoder takes as DATA, with the same fields."""
    size = max(len(d) for d in items)
    rows = [d.ljust(size, b"\0") for d in items[:-1]] + [items[-1][:size]]
    buffer = bytearray(b"".join(rows)) + bytearray(pad)
    length = len(buffer) - pad
    segment = size if len(rows) > 1 else 0
    batch = decode_batch_untrusted(buffer, length, segment)
    n = row_count(length, segment)
    assert sorted([*batch.rows.tolist(), *batch.slow]) == list(range(n))
    step = batch.segment
    fast = dict(zip(batch.rows.tolist(), range(len(batch)), strict=True))
    for row in range(n):
        expected = row_data(bytes(buffer[row * step : min(row * step + step, length)]))
        if row not in fast:
            # Chunk indexes beyond 2^62 (no file has that many) take the row path too,
            # where the session refuses them.
            assert expected is None or expected.index > MAX_PN
            continue
        at = fast[row]
        assert expected is not None
        assert int(batch.session[at]) == expected.session
        assert int(batch.index[at]) == expected.index
        assert int(batch.tx[at]) == expected.tx
        assert int(batch.sent_ns[at]) == expected.sent_ns
        assert int(batch.pass_no[at]) == expected.pass_no
        assert int(batch.flags[at]) == expected.flags
        assert int(batch.payload_bytes[at]) == len(expected.payload)
        start = batch.payload_start(at)
        assert bytes(buffer[start : start + len(expected.payload)]) == bytes(expected.payload)


def test_partial_last_segment_and_empty_buffers() -> None:
    full = [encode_data(SESSION, i, i, bytes([i]) * CHUNK) for i in range(5)]
    short = encode_data(SESSION, 5, 5, b"x" * 7)
    buffer = bytearray(b"".join([*full, short]))
    batch = decode_batch_untrusted(buffer, len(buffer), len(full[0]))
    assert batch.rows.tolist() == [0, 1, 2, 3, 4, 5]
    assert batch.payload_bytes.tolist() == [CHUNK] * 5 + [7]
    # A last segment too short for a header: a slow row, the rest still fast.
    cut = bytearray(b"".join(full)) + b"UDPX"
    batch = decode_batch_untrusted(cut, len(cut), len(full[0]))
    assert batch.rows.tolist() == [0, 1, 2, 3, 4]
    assert batch.slow == [5]
    empty = decode_batch_untrusted(bytearray(10), 0, 0)
    assert len(empty) == 0
    assert empty.slow == [0]


def test_reused_buffer_is_decoded_afresh() -> None:
    """The decoder keeps views of a buffer it sees again: new contents, new answers."""
    view = memoryview(bytearray(4096))
    first = b"".join(encode_data(SESSION, i, i, b"a" * CHUNK) for i in range(3))
    view[: len(first)] = first
    assert decode_batch_untrusted(view, len(first), len(first) // 3).index.tolist() == [0, 1, 2]
    second = b"".join(encode_data(SESSION, i, i, b"b" * CHUNK) for i in (7, 8, 9))
    view[: len(second)] = second
    assert decode_batch_untrusted(view, len(second), len(second) // 3).index.tolist() == [7, 8, 9]
    view[5] ^= 0xFF  # damage the first header: only that row leaves the fast path
    batch = decode_batch_untrusted(view, len(second), len(second) // 3)
    assert batch.index.tolist() == [8, 9]
    assert batch.slow == [0]


# -- a session taking a batch -----------------------------------------------------------------

COUNT = 40
SIZE = COUNT * CHUNK - 30  # a short last chunk


def new_session() -> tuple[ReceiverSession, EventSink]:
    sink = EventSink()
    session = ReceiverSession(PEER, SESSION, 1.0, ReceiverConfig(stream_trace=True), sink)
    meta = Meta(SESSION, "f", SIZE, CHUNK, COUNT, bytes(32), Mode.RELIABLE, sent_ns=ORIGIN_NS)
    session.open_validated(meta, 1.0)
    return session, sink


def stored_chunks(sink: EventSink) -> list[tuple[int, bytes]]:
    """The chunks the session handed out to store (``ChunkReceived``), as (offset, bytes)."""
    return [(e.offset, bytes(e.payload)) for _, e in sink.queue if isinstance(e, ChunkReceived)]


def chunk_bytes(index: int) -> int:
    return CHUNK if index < COUNT - 1 else SIZE - (COUNT - 1) * CHUNK


@st.composite
def data_rows(draw: st.DrawFn) -> bytes:
    index = draw(st.one_of(st.integers(0, COUNT - 1), st.integers(0, COUNT + 3)))
    length = chunk_bytes(index) if index < COUNT else CHUNK
    if draw(st.integers(0, 9)) == 0:
        length = draw(st.integers(0, CHUNK))  # a length that does not fit the chunk
    stamp = ORIGIN_NS + draw(st.sampled_from([0, 5, -5, SPREAD_NS, SPREAD_NS + 1, -SPREAD_NS - 1]))
    return encode_data(
        SESSION,
        index,
        draw(st.integers(0, 60)),
        bytes([index % 256]) * length,
        pass_no=draw(st.integers(0, 3)),
        flags=draw(st.sampled_from([0, 0, 1, 2, 3])),
        sent_ns=stamp,
    )


def state_of(session: ReceiverSession) -> dict[str, object]:
    trace = session.trace
    assert trace is not None
    return {
        "state": session.state,
        "held": bytes(session.held.bits),
        "first_pass": bytes(session.first_pass.bits),
        "counts": (
            session.held_count,
            session.data_received,
            session.duplicates,
            session.out_of_order,
            session.retransmitted,
            session.contiguous,
            session.sent_upto,
            session.bytes_in_round,
        ),
        "status": session._status_wanted,
        "trace": [
            list(trace.index),
            list(trace.tx),
            list(trace.sent_ns),
            list(trace.pass_no),
            list(trace.flags),
        ],
        "stats": exact_sections(session),
    }


def exact_sections(session: ReceiverSession) -> dict[str, object]:
    """The online statistics that are exact (delay figures are floats summed in other orders
    on the two paths, durations come from send-time anchors; test_online bounds them)."""
    assert session.online is not None
    session.flush_online()
    doc = online_report.sections(session.online, tx_sent=50)
    for key in ("burst_duration_ms", "gap_duration_ms"):  # from send-time anchors: approximate
        del doc["loss"]["rfc3611"][key]
    return {key: doc[key] for key in ("loss", "reorder", "duplicates", "analysis")} | {
        "pdv_max": doc["timing"]["pdv_ms"]["max"]
    }


@given(st.lists(st.lists(data_rows(), min_size=1, max_size=20), min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_session_batch_equals_rows(buffers: list[list[bytes]]) -> None:
    """Loss, duplicates, reordering, repairs, bad lengths and stamps inside and across
    buffers: the session ends in the same state and stores the same chunks either way."""
    by_row, row_events = new_session()
    by_batch, _ = new_session()
    stored_batch: list[tuple[int, bytes]] = []
    for step, rows in enumerate(buffers):
        now = 2.0 + step
        rejected = 0
        for row in rows:
            packet = decode_untrusted(row)
            assert isinstance(packet, Data)
            accepted = by_row.on_data(
                packet.index, packet.tx, packet.payload, packet.pass_no, packet.flags,
                packet.sent_ns, now,
            )  # fmt: skip
            rejected += not accepted
        for buffer, length, segment in gro_buffers(rows):
            batch = decode_batch_untrusted(buffer, length, segment)
            assert len(batch) == row_count(length, segment)  # all valid DATA by the CRC
            positions = by_batch.on_data_batch(batch, now)
            rejected -= by_batch.rejected_rows
            for position in positions.tolist():
                start = batch.payload_start(position)
                payload = bytes(buffer[start : start + int(batch.payload_bytes[position])])
                stored_batch.append((int(batch.index[position]) * CHUNK, payload))
        assert rejected == 0
        assert state_of(by_batch) == state_of(by_row)
    assert stored_batch == stored_chunks(row_events)


def test_batch_after_completion_counts_duplicates() -> None:
    session, _ = new_session()
    rows = [
        encode_data(SESSION, i, i, b"z" * chunk_bytes(i), sent_ns=ORIGIN_NS) for i in range(COUNT)
    ]
    for buffer, length, segment in gro_buffers(rows + rows[:3]):
        session.on_data_batch(decode_batch_untrusted(buffer, length, segment), 2.0)
    assert session.state is ReceiverState.VERIFYING
    assert session.held_count == COUNT
    assert session.duplicates == 3


def blast_sender(data: bytes) -> SenderSession:
    return SenderSession(
        data,
        name="f",
        sha256=hashlib.sha256(data).digest(),
        session_id=SESSION,
        now=1.0,
        config=SenderConfig(chunk_size=CHUNK, mode=Mode.BLAST),
    )


# -- the endpoint and the sender's runs -------------------------------------------------------


def test_endpoint_buffer_mixes_fast_and_row_paths() -> None:
    """A buffer holding data of a transfer, a corrupt datagram and an END: the data are
    stored, the corrupt one is counted, the END is answered."""
    sender = blast_sender(random.Random(3).randbytes(CHUNK * 10))
    endpoint = ReceiverEndpoint(ReceiverConfig(require_token=False))
    for datagram in sender.datagrams_to_send(1.0):
        endpoint.receive_datagram(datagram, PEER, 1.0)  # META copies and the data
    session = next(iter(endpoint.sessions.values()))
    assert session.held_count == 10
    extra = [encode_data(SESSION, 3, 99, b"q" * CHUNK, sent_ns=2 * 10**9)]
    bad = bytearray(extra[0])
    bad[-1] ^= 1
    end = encode(End(SESSION, 0, 10, 11, 3 * 10**9, 9))
    buffers = gro_buffers([*extra, bytes(bad), end])
    corrupt_before = session.corrupt
    for buffer, length, segment in buffers:
        assert endpoint.receive_buffer(buffer, length, segment, PEER, 2.0) == []
    assert session.duplicates == 1
    assert session.corrupt == corrupt_before + 1


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK * 7 + 3])
def test_data_runs_are_the_datagrams_one_by_one(size: int) -> None:
    data = random.Random(size).randbytes(size)
    sender = blast_sender(data)
    runs = [item for item in sender.transmit(1.0) if isinstance(item, DataRun)]
    seen = bytearray()
    tx = 0
    for run in runs:
        datagrams = run.datagrams()
        assert len(datagrams) == run.count
        assert sum(map(len, datagrams)) == run.total_bytes
        assert all(len(d) == run.segment for d in datagrams[:-1])
        assert len(datagrams[-1]) == run.last_bytes
        for datagram in datagrams:
            packet = decode_untrusted(datagram)
            assert isinstance(packet, Data)
            assert packet.tx == tx
            tx += 1
            seen += packet.payload
    assert bytes(seen) == data


def test_flags_outside_data_take_the_row_path() -> None:
    """A keyed flag under a valid CRC is no keyless DATA: never the fast path."""
    datagram = bytearray(encode_data(SESSION, 0, 0, b"k" * CHUNK))
    datagram[6] |= int(Flags.KEYED)
    body = bytes(datagram[:-CRC_BYTES])
    from udpxfer.protocol.checksum import crc32

    datagram[-CRC_BYTES:] = crc32(body).to_bytes(4, "big")
    batch = decode_batch_untrusted(datagram, len(datagram), 0)
    assert len(batch) == 0
    assert batch.slow == [0]
    assert HEADER_BYTES == 40
    assert np.array_equal(batch.rows, np.empty(0, dtype=np.int64))


def test_payload_views_are_the_payloads_of_the_chosen_rows() -> None:
    rows = [encode_data(SESSION, i, i, bytes([i]) * CHUNK) for i in range(6)]
    rows.append(encode_data(SESSION, 6, 6, b"\x06" * 9))  # a shorter last datagram
    view = memoryview(bytearray(b"".join(rows)) + bytearray(100))
    length = sum(map(len, rows))
    batch = decode_batch_untrusted(view, length, len(rows[0]))
    for positions in ([0, 1, 2, 3, 4, 5, 6], [1, 3, 6], [0, 2], [6]):
        chosen = np.array(positions, dtype=np.int64)
        got = [bytes(p) for p in payload_views(view, batch, chosen)]
        assert got == [bytes([i]) * (CHUNK if i < 6 else 9) for i in positions]


@pytest.mark.parametrize("encrypt", [True, False], ids=["encrypted", "tag-only"])
def test_keyed_batch_opens_what_the_row_path_opens(encrypt: bool) -> None:
    """Keyed DATA decoded as a batch and opened by the seal: the same payloads as the row
    decoder; tampered rows fail both ways; a keyless datagram never takes the keyed path."""
    from udpxfer.protocol.keyed import AeadSeal
    from udpxfer.protocol.keys import Direction, PacketProtection

    protection = PacketProtection.session(b"k" * 32, SESSION, b"s" * 16, b"r" * 16)
    sealing = AeadSeal(protection, Direction.TO_RECEIVER, encrypt=encrypt)
    opening = AeadSeal(protection, Direction.TO_SENDER, encrypt=encrypt)
    rng = random.Random(11)
    rows = [
        bytearray(encode_data(SESSION, i, 100 + i, rng.randbytes(CHUNK), seal=sealing, flags=i % 4))
        for i in range(30)
    ]
    rows[3][50] ^= 1  # payload tampered
    rows[7][20] ^= 4  # header tampered (the pn): another nonce
    rows[9][-1] ^= 0x80  # tag tampered
    rows.append(bytearray(encode_data(SESSION, 30, 130, rng.randbytes(CHUNK - 5), seal=sealing)))
    failed = 0
    for buffer, length, segment in gro_buffers([bytes(r) for r in rows]):
        view = memoryview(buffer)
        batch = decode_batch_untrusted(view, length, segment, keyed=True)
        assert len(decode_batch_untrusted(view, length, segment)) == 0  # no CRC passes
        plain, authentic = opening.open_batch(view, batch)
        failed += int(np.count_nonzero(~authentic))
        step = batch.segment
        opened = dict(zip(batch.rows[authentic].tolist(), plain, strict=True))
        for row in range(row_count(length, segment)):
            datagram = bytes(buffer[row * step : min(row * step + step, length)])
            try:
                expected = decode_untrusted(datagram, opening)
            except MalformedPacket:
                assert row not in opened
                continue
            assert isinstance(expected, Data)
            assert bytes(opened[row]) == bytes(expected.payload)
    assert failed == 3
