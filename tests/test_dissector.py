"""The Wireshark dissector (contrib/udpxfer.lua) run by tshark over pcap files: one datagram of
every packet type with known fields, captures of real loopback transfers (keyless and keyed), a
corrupted datagram, and a GSO super-datagram. Skipped when tshark is not installed."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import LossyRelay, receiver, wait_for

from udpxfer.net.keyfile import new_key
from udpxfer.net.sending import send_file
from udpxfer.protocol.codec import encode
from udpxfer.protocol.framing import encode_data
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.wire import (
    Abort,
    AbortCode,
    Data,
    Done,
    End,
    Have,
    Hello,
    HelloFlags,
    Manifest,
    Meta,
    Mode,
    Nack,
    PacketType,
    RangeKind,
    Status,
    Verdict,
)
from udpxfer.units import Address

TSHARK = shutil.which("tshark")
DISSECTOR = Path(__file__).resolve().parent.parent / "contrib" / "udpxfer.lua"
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

SENDER_PORT = 40001
SESSION = 0x0123_4567_89AB_CDEF
Datagram = tuple[float, int, int, bytes]  # time, source port, destination port, UDP payload


# -- a classic pcap writer (Ethernet, IPv4, UDP on 127.0.0.1) --------------------------------


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(src_port: int, dst_port: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
    loopback = bytes([127, 0, 0, 1])
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, loopback, loopback
    )
    ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
    return bytes(6) + bytes(6) + b"\x08\x00" + ip + udp


def write_pcap(path: Path, datagrams: list[Datagram]) -> None:
    """A classic (microsecond) pcap of ``datagrams`` over Ethernet."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for stamp, src, dst, payload in datagrams:
        frame = _frame(src, dst, payload)
        secs, usecs = divmod(round(stamp * 1e6), 1_000_000)
        out.append(struct.pack("<IIII", secs, usecs, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def tshark_fields(pcap: Path, fields: list[str]) -> list[dict[str, str]]:
    """One dict per frame: field name to its values joined by ``,`` ('' when absent)."""
    assert TSHARK is not None
    command = [TSHARK, "-n", "-X", f"lua_script:{DISSECTOR}", "-o", "udp.try_heuristic_first:TRUE"]
    command += ["-r", str(pcap), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a"]
    command += ["-E", "aggregator=,"]
    for field in fields:
        command += ["-e", field]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "Lua" not in done.stderr, done.stderr  # a script error is only a warning to tshark
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    return [dict(zip(fields, row, strict=True)) for row in rows]


PROBLEMS = ["_ws.expert.severity", "_ws.expert.message", "_ws.malformed", "_ws.lua.error"]


def errors_of(row: dict[str, str]) -> str:
    """The expert messages of a frame at warning severity or above, and any malformed mark."""
    # Expert severities are numbers in field output: chat 0x00200000, note 0x00400000,
    # warn 0x00600000, error 0x00800000.
    severities = [int(s, 0) for s in row["_ws.expert.severity"].split(",") if s]
    serious = any(s >= 0x00600000 for s in severities)
    return (
        (row["_ws.expert.message"] if serious else "") + row["_ws.malformed"] + row["_ws.lua.error"]
    )


def expect(row: dict[str, str], **want: str) -> None:
    """Check fields of a row by the last part of their names (``chunk`` for udpxfer.chunk)."""
    by_short = {name.rsplit(".", 1)[-1]: value for name, value in row.items()}
    assert len(by_short) == len(row), "two fields share a last name part"
    assert {k: by_short[k].replace(":", "") for k in want} == want, row["_ws.col.Info"]


# -- one datagram of each type, fields checked one by one -------------------------------------


def test_every_packet_type_and_field_decodes(tmp_path: Path) -> None:
    sha = hashlib.sha256(b"file").digest()
    nonce, token = bytes(range(16)), bytes(range(16, 32))
    hashes = tuple(hashlib.sha256(bytes([i])).digest() for i in range(3))
    packets = [
        Meta(
            SESSION,
            "café.bin",
            5000,
            1400,
            4,
            sha,
            Mode.BLAST,
            copy=2,
            sent_ns=11,
            block_chunks=749,
            mtime_ns=1_700_000_000_123_456_789,
            nonce=nonce,
            token=token,
            pn=3,
        ),
        End(SESSION, round=1, chunks_sent=4, tx_sent=6, sent_ns=12, pn=4),
        Status(
            SESSION,
            echo_ns=99,
            highest_tx=-1,
            held=3,
            window=512,
            sent_ns=13,
            received=5,
            queued_ns=7000,
            pn=5,
        ),
        Nack(SESSION, round=0, echo_ns=98, ranges=((1, 1), (3, 9), (20, 21)), sent_ns=14, pn=6),
        Nack(SESSION, round=2, echo_ns=0, ranges=((0, 39),), kind=RangeKind.BLOCKS, pn=7),
        Done(SESSION, Verdict.MISMATCH, held=4, sha256=sha, echo_ns=97, sent_ns=15, pn=8),
        Abort(SESSION, AbortCode.TIMEOUT, "peer went silent", sent_ns=16, chunks_sent=2, pn=9),
        Hello(
            SESSION,
            HelloFlags.ACCEPTED | HelloFlags.RESUMING,
            echo_ns=96,
            window=256,
            held=2,
            token=token,
            nonce=nonce,
            sent_ns=17,
            pn=10,
        ),
        Hello(SESSION, HelloFlags.RETRY, token=token, pn=11),
        Manifest(SESSION, first=40, hashes=hashes, sent_ns=18, pn=12),
        Have(SESSION, ranges=((0, 1),), echo_ns=95, sent_ns=19, pn=13),
    ]
    datagrams = [encode(packet) for packet in packets]
    datagrams.insert(1, encode(Data(SESSION, 12, 17, b"x" * 1400, pass_no=0, flags=0x02)))
    datagrams.insert(2, encode_data(SESSION, 3, 18, b"tail", pass_no=2, flags=0x01))
    corrupt = bytearray(encode_data(SESSION, 7, 19, b"y" * 100))
    corrupt[60] ^= 0x01
    datagrams.append(bytes(corrupt))
    pcap = tmp_path / "types.pcap"
    write_pcap(pcap, [(1.0 + i, SENDER_PORT, 9000, d) for i, d in enumerate(datagrams)])

    fields = [
        "udpxfer.type", "udpxfer.session", "udpxfer.pn", "udpxfer.sent_ns", "udpxfer.chunk",
        "udpxfer.round", "udpxfer.copy", "udpxfer.first_block", "udpxfer.pass",
        "udpxfer.flags.resent", "udpxfer.flags.ack_requested", "udpxfer.data.len",
        "udpxfer.meta.size", "udpxfer.meta.chunk_size", "udpxfer.meta.chunk_count",
        "udpxfer.meta.block_chunks", "udpxfer.meta.mtime_ns", "udpxfer.meta.mode",
        "udpxfer.meta.name", "udpxfer.sha256", "udpxfer.nonce", "udpxfer.token",
        "udpxfer.chunks_sent", "udpxfer.end.tx_sent", "udpxfer.echo_ns",
        "udpxfer.status.highest_tx", "udpxfer.held", "udpxfer.window",
        "udpxfer.status.received", "udpxfer.status.queued_ns", "udpxfer.protocol.ranges.kind",
        "udpxfer.protocol.ranges.count", "udpxfer.range.first", "udpxfer.range.last",
        "udpxfer.done.verdict", "udpxfer.abort.code", "udpxfer.abort.reason",
        "udpxfer.hello.flags", "udpxfer.hello.flags.retry", "udpxfer.hello.flags.accepted",
        "udpxfer.hello.flags.resuming", "udpxfer.manifest.block", "udpxfer.manifest.hash",
        "udpxfer.check.status", "_ws.col.Info", *PROBLEMS,
    ]  # fmt: skip
    rows = tshark_fields(pcap, fields)
    assert len(rows) == len(datagrams)
    meta, data, resent, end, status, nack, nack_blocks, done, abort, accepted, retry = rows[:11]
    manifest, have, bad = rows[11:]

    names = [PacketType(d[5]).name for d in datagrams]
    assert [int(r["udpxfer.type"]) for r in rows] == [d[5] for d in datagrams]
    assert all(int(r["udpxfer.session"], 16) == SESSION for r in rows)
    assert [r["udpxfer.check.status"] for r in rows] == ["1"] * (len(rows) - 1) + ["0"]
    for name, row in zip(names, rows[:-1], strict=False):
        assert errors_of(row) == "", (name, row)
        assert row["_ws.col.Info"].startswith(name), row["_ws.col.Info"]

    expect(
        meta,
        name="café.bin",
        copy="2",
        pn="3",
        sent_ns="11",
        size="5000",
        chunk_size="1400",
        chunk_count="4",
        block_chunks="749",
        mtime_ns="1700000000123456789",
        mode="1",
        sha256=sha.hex(),
        nonce=nonce.hex(),
        token=token.hex(),
    )
    expect(data, chunk="12", pn="17", len="1400", ack_requested="1", resent="0")
    assert data["_ws.col.Info"] == "DATA chunk 12 pn 17 ACK_REQ"
    expect(resent, chunk="3", pn="18", len="4", resent="1", ack_requested="0", **{"pass": "2"})
    assert resent["_ws.col.Info"] == "DATA chunk 3 pn 18 RESENT pass 2"
    expect(end, round="1", chunks_sent="4", tx_sent="6", sent_ns="12")
    expect(
        status,
        echo_ns="99",
        highest_tx="-1",
        held="3",
        window="512",
        received="5",
        queued_ns="7000",
    )
    assert nack["_ws.col.Info"] == "NACK round 0: 3 ranges, 10 chunks"
    expect(nack, round="0", echo_ns="98", kind="0", count="3", first="1,3,20", last="1,9,21")
    expect(nack_blocks, round="2", kind="1", count="1", first="0", last="39")
    expect(done, verdict="1", held="4", echo_ns="97", sha256=sha.hex())
    expect(abort, code="4", chunks_sent="2", reason="peer went silent")
    assert abort["_ws.col.Info"] == "ABORT TIMEOUT: peer went silent"
    expect(
        accepted,
        flags="0x06",
        accepted="1",
        resuming="1",
        retry="0",
        window="256",
        held="2",
        echo_ns="96",
        token=token.hex(),
        nonce=nonce.hex(),
    )
    assert retry["_ws.col.Info"] == "HELLO RETRY"
    expect(manifest, first_block="40", block="40,41,42", hash=",".join(h.hex() for h in hashes))
    expect(have, echo_ns="95", kind="0", first="0", last="1")

    assert bad["udpxfer.chunk"] == "7"
    assert "Bad CRC-32" in bad["_ws.expert.message"]
    assert "BAD CRC" in bad["_ws.col.Info"]


def test_gso_super_datagram_is_split_into_its_segments(tmp_path: Path) -> None:
    segments = [encode_data(SESSION, i, i, bytes([i]) * 1000) for i in range(3)]
    segments.append(encode_data(SESSION, 3, 3, b"end"))  # the last segment may be shorter
    pcap = tmp_path / "gso.pcap"
    write_pcap(pcap, [(1.0, SENDER_PORT, 9000, b"".join(segments))])
    fields = ["udpxfer.gso.segments", "udpxfer.gso.segment_bytes", "udpxfer.chunk",
              "udpxfer.check.status", "_ws.col.Info", *PROBLEMS]  # fmt: skip
    (row,) = tshark_fields(pcap, fields)
    assert (row["udpxfer.gso.segments"], row["udpxfer.gso.segment_bytes"]) == ("4", "1044")
    assert row["udpxfer.chunk"] == "0,1,2,3"
    assert row["udpxfer.check.status"] == "1,1,1,1"
    assert errors_of(row) == ""
    assert (
        row["_ws.col.Info"] == "DATA chunk 0 pn 0 ... chunk 3 pn 3 (GSO: 4 segments of 1044 bytes)"
    )


# -- captures of real transfers on loopback ---------------------------------------------------


class Recorder:
    """The drop rule of a relay that loses nothing but the first copy of some chunks, and
    records every datagram it sees (both ways) for a pcap."""

    def __init__(self, lose: set[int]) -> None:
        self.lose = set(lose)
        self.datagrams: list[tuple[float, bool, bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, datagram: bytes, forward: bool) -> bool:
        with self._lock:
            self.datagrams.append((time.time(), forward, datagram))
            if forward and datagram[5] == PacketType.DATA and not datagram[6] & 0x01:
                index = struct.unpack_from("!Q", datagram, 16)[0]
                if index in self.lose:
                    self.lose.discard(index)
                    return True
        return False


@pytest.mark.parametrize("keyed", [False, True], ids=["keyless", "keyed"])
def test_capture_of_a_transfer_decodes(tmp_path: Path, keyed: bool) -> None:
    key = new_key() if keyed else None
    chunk = 1000
    count = 40
    source = tmp_path / "sample.bin"
    source.write_bytes(bytes(i % 251 for i in range(chunk * count - 123)))
    recorder = Recorder({5, 6, 30})
    with (
        receiver(tmp_path, key=key) as (server, results),
        LossyRelay(server.address, recorder) as relay,
    ):
        port = server.address[1]
        config = SenderConfig(chunk_size=chunk, rate_bps=50_000_000)
        session = send_file(source, Address(*relay.address), config, key=key)
        wait_for(lambda: len(results) == 1, what="the receiver's result")
    assert session.outcome is not None
    assert session.outcome.outcome == "complete"

    pcap = tmp_path / "transfer.pcap"
    write_pcap(
        pcap,
        [
            (at, SENDER_PORT, port, d) if forward else (at, port, SENDER_PORT, d)
            for at, forward, d in recorder.datagrams
        ],
    )
    fields = ["udpxfer.type", "udpxfer.session", "udpxfer.chunk", "udpxfer.flags.resent",
              "udpxfer.flags.encrypted", "udpxfer.meta.name", "udpxfer.meta.chunk_count",
              "udpxfer.check.status", "udpxfer.encrypted", "udpxfer.tag", "_ws.col.Info",
              *PROBLEMS]  # fmt: skip
    rows = tshark_fields(pcap, fields)
    assert len(rows) == len(recorder.datagrams)
    for (_, _, datagram), row in zip(recorder.datagrams, rows, strict=True):
        assert row["udpxfer.type"] == str(datagram[5]), row
        assert int(row["udpxfer.session"], 16) == session.session_id
        assert errors_of(row) == "", row
        assert row["_ws.col.Info"].startswith(PacketType(datagram[5]).name)
        assert row["udpxfer.check.status"] == ("2" if keyed else "1")
        assert (row["udpxfer.tag"] != "") == keyed

    by_type: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_type.setdefault(PacketType(int(row["udpxfer.type"])).name, []).append(row)
    assert {"META", "HELLO", "MANIFEST", "DATA", "STATUS", "END", "NACK", "DONE"} <= set(by_type)
    # META is never encrypted: its name and counts read in clear, keyed or not.
    assert {r["udpxfer.meta.name"] for r in by_type["META"]} == {"sample.bin"}
    assert {r["udpxfer.meta.chunk_count"] for r in by_type["META"]} == {str(count)}
    data = by_type["DATA"]
    assert sorted({int(r["udpxfer.chunk"]) for r in data}) == list(range(count))
    resent = sorted(int(r["udpxfer.chunk"]) for r in data if r["udpxfer.flags.resent"] == "1")
    assert {5, 6, 30} <= set(resent)
    encrypted = {r["udpxfer.flags.encrypted"] for r in data + by_type["STATUS"] + by_type["NACK"]}
    assert encrypted == ({"1"} if keyed else {"0"})
    assert all((r["udpxfer.encrypted"] != "") == keyed for r in data)
    assert {r["udpxfer.flags.encrypted"] for r in by_type["HELLO"] + by_type["META"]} == {"0"}
