"""Keyless DATA runs built in one buffer with numpy equal the runs built piece by piece."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from helpers import Link, receiver, run_pair, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from udpxfer.net import sending
from udpxfer.net.offload import OFFLOAD_ENV
from udpxfer.net.sending import send_file
from udpxfer.net.transport import UdpTransport
from udpxfer.protocol.datarun import build_run
from udpxfer.protocol.framing import parse_header_untrusted
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.wire import Flags, Mode
from udpxfer.units import Address


def _wire(
    data: bytes, config: SenderConfig, seed: int, loss: float, one_buffer: bool
) -> list[bytes]:
    sent: list[bytes] = []

    def record(datagram: bytes) -> bool:
        sent.append(datagram)
        return False

    result = run_pair(
        data,
        sender_config=config,
        forward=Link(random.Random(seed), loss=loss, jitter_s=0.002, drop=record),
        reverse=Link(random.Random(seed + 1), loss=loss),
        one_buffer_runs=one_buffer,
    )
    if config.mode is Mode.RELIABLE or not loss:
        assert bytes(result.stored[: len(data)]) == data
    return sent


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 120_000),
    chunk_size=st.sampled_from([1, 7, 100, 1000, 1400, 8800]),
    mode=st.sampled_from([Mode.RELIABLE, Mode.BLAST]),
    loss=st.sampled_from([0.0, 0.05, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_one_buffer_runs_put_the_same_bytes_on_the_wire(
    size: int, chunk_size: int, mode: Mode, loss: float, seed: int
) -> None:
    # Same seeded links, same fake clock: every datagram of the whole exchange (first pass,
    # ACK requests, repairs, the short last chunk) must be byte for byte the same.
    data = random.Random(seed).randbytes(size)
    config = SenderConfig(chunk_size=chunk_size, mode=mode)
    pieces = _wire(data, config, seed, loss, one_buffer=False)
    one_buffer = _wire(data, config, seed, loss, one_buffer=True)
    assert one_buffer == pieces


def test_a_run_is_one_buffer_of_checked_datagrams_that_ask_for_answers_by_the_rule() -> None:
    data = bytes(range(256)) * 40
    datagrams, asking = build_run(
        data, 100, 3, 1000, 20, session=7, flags=int(Flags.RESENT),
        ack_flag=int(Flags.ACK_REQUESTED),
        ack_every=8, acked=1005, window=12, pass_no=2, sent_ns=123_456_789,
    )  # fmt: skip
    assert len(datagrams) == 20 * (40 + 100 + 4)
    # Multiples of 8, and every number at or beyond acked + window (1017..1019).
    assert asking == [1000, 1008, 1016, 1017, 1018, 1019]
    for row in range(20):
        header = parse_header_untrusted(bytes(datagrams[row * 144 : (row + 1) * 144]))
        assert (header.seq, header.pn, header.session) == (3 + row, 1000 + row, 7)
        assert (header.pass_no, header.sent_ns) == (2, 123_456_789)
        assert bytes(header.body) == data[(3 + row) * 100 : (4 + row) * 100]
        assert bool(header.flags & Flags.ACK_REQUESTED) == (1000 + row in asking)
        assert header.flags & Flags.RESENT


@pytest.mark.parametrize(
    ("keyed", "mode", "offload"),
    [
        (False, Mode.RELIABLE, True),
        (False, Mode.BLAST, True),
        (False, Mode.RELIABLE, False),
        (True, Mode.RELIABLE, True),
        (True, Mode.BLAST, True),
    ],
)
def test_the_driver_sends_one_buffer_runs_and_the_file_arrives_byte_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyed: bool, mode: Mode, offload: bool
) -> None:
    # The threshold down to 0: this small file takes the large files' path (numpy preloaded
    # beside the hash), its short last chunk included; a keyed session keeps sealing pieces.
    # Without offload the one buffer goes out a datagram at a time.
    monkeypatch.setattr(sending, "PRELOAD_BYTES", 0)
    if not offload:
        monkeypatch.setenv(OFFLOAD_ENV, "1")
    gathered: list[int] = []
    send_gathered = UdpTransport.send_gathered

    def counting(self: UdpTransport, pieces: Any, count: int, *args: Any) -> None:
        gathered.append(len(pieces) // count)
        send_gathered(self, pieces, count, *args)

    monkeypatch.setattr(UdpTransport, "send_gathered", counting)
    data = random.Random(5).randbytes(3_000_001)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    key = bytes(range(32)) if keyed else None
    with receiver(tmp_path, key=key) as (server, results):
        session = send_file(source, Address(*server.address), SenderConfig(mode=mode), key=key)
        wait_for(lambda: len(results) == 1, timeout_s=20, what="the receiver's report")
    assert session.outcome is not None
    assert session.outcome.outcome == "complete"
    assert results[0].file_path is not None
    assert results[0].file_path.read_bytes() == data
    if keyed:
        assert gathered
        assert all(per > 1 for per in gathered)  # pieces per datagram
    else:
        assert 0 in gathered  # one buffer for many datagrams
        assert gathered[-1] == 3  # the run with the short last chunk, built as pieces
