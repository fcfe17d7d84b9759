"""The sender's closing line (``reports.send_report.send_summary``) for each way a send ends."""

from __future__ import annotations

import random
from pathlib import Path

from helpers import Link, run_pair

from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.wire import Mode
from udpxfer.reports.send_report import send_report, send_summary

CHUNK = 1000
DATA = random.Random(3).randbytes(CHUNK * 40)


def summary(config: SenderConfig, **links: Link) -> tuple[bool, str]:
    result = run_pair(DATA, sender_config=config, **links)
    doc = send_report(result.sender, source=Path("f.bin"), peer="192.0.2.1:9000", started_unix_s=0)
    return send_summary(result.sender, doc)


def test_a_verified_reliable_send_says_so_with_its_figures() -> None:
    ok, line = summary(SenderConfig(chunk_size=CHUNK))
    assert ok
    assert line.startswith("sent file.bin (39.1 KiB) -> 192.0.2.1:9000: verified by the receiver; ")
    assert "40 chunks, 0 resent in 0 repair rounds" in line


def test_a_blast_send_succeeds_without_a_verdict_and_says_it_had_none() -> None:
    config = SenderConfig(chunk_size=CHUNK, mode=Mode.BLAST)
    ok, line = summary(config, reverse=Link(random.Random(0), loss=1.0))
    assert ok
    assert line.endswith("; no verdict from the receiver")


def test_a_reliable_send_with_no_answer_is_a_failure_with_its_reason() -> None:
    ok, line = summary(SenderConfig(chunk_size=CHUNK), reverse=Link(random.Random(0), loss=1.0))
    assert not ok
    head = "file.bin (39.1 KiB) -> 192.0.2.1:9000"
    assert line.startswith(f"{head}: no answer from the receiver for ")
