"""The sender's JSON report (schema ``udpxfer.send-report/1``).

Kept apart from ``reports.report`` (the receiver's report, numpy and the loss analysis) so that
``udpxfer send --report`` starts as fast as a plain send.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from udpxfer.protocol.events import Outcome
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.wire import Mode, Verdict
from udpxfer.units import format_rate, format_size, plural

SEND_SCHEMA = "udpxfer.send-report/1"


def send_report(
    session: SenderSession,
    *,
    source: Path,
    peer: str,
    started_unix_s: float,
) -> dict[str, Any]:
    """The sender's JSON report (schema ``udpxfer.send-report/1``) of a finished session.

    ``file.verified`` and ``file.complete`` are what the receiver's verdict said; without a
    verdict (a blast run whose DONE was lost, a reliable run that gave up) both are false.
    """
    stats = session.stats()
    meta = session.meta
    outcome = stats.outcome
    verdict = outcome.verdict if outcome is not None and outcome.verdict is not None else None
    if verdict is None:
        verdict = stats.verdict
    verified = verdict is Verdict.VERIFIED
    duration = stats.duration_s
    send_s = stats.send_duration_s
    srtt = stats.srtt_s
    return {
        "schema": SEND_SCHEMA,
        "transport": "udp",
        "mode": meta.mode.label,
        "outcome": outcome.outcome if outcome is not None else "unfinished",
        "reason": outcome.reason if outcome is not None else "",
        "peer": peer,
        "session_id": f"{meta.session:016x}",
        "started_unix_s": round(started_unix_s, 6),
        "file": {
            "name": meta.name,
            "size": meta.size,
            "path": str(source),
            "sha256_expected": meta.sha256.hex() if any(meta.sha256) else None,  # not hashed yet
            "sha256_actual": meta.sha256.hex() if verified else None,
            "complete": verdict in (Verdict.VERIFIED, Verdict.MISMATCH),
            "verified": verified,
        },
        "verdict": verdict.name.lower() if verdict is not None else None,
        "chunks": {
            "size": meta.chunk_size,
            "total": meta.chunk_count,
            "sent": stats.first_pass_sent,
            "resent": stats.chunks_resent,
            "acknowledged": stats.acknowledged,
            # Chunks an earlier, interrupted run left verified at the receiver: not sent again.
            "resumed": stats.resumed,
        },
        # Every datagram the sender sent (META, DATA, END...), headers included.
        "datagrams": {"sent": stats.datagrams_sent, "bytes_sent": stats.bytes_sent},
        "repair": {"rounds": stats.repair_rounds},
        "timing": {
            # From the first datagram to the receiver's verdict (or giving up).
            "duration_s": duration,
            # From the first datagram until the whole first pass was sent.
            "send_duration_s": send_s,
            # File bytes over duration_s: what the receiver's goodput measures too, but
            # ending when the verdict reached the sender (one path delay later).
            # Null unless the receiver verified the file.
            "goodput_bps": meta.size * 8 / duration if duration > 0 and verified else None,
            # File bytes over send_duration_s: how fast the first pass went out.
            "first_pass_rate_bps": meta.size * 8 / send_s if send_s > 0 else None,
            "rtt_ms": srtt * 1000 if srtt is not None else None,
        },
    }


# What a blast sender can say of its receiver's verdict (it does not wait for one to succeed).
_BLAST_VERDICTS = {
    Outcome.COMPLETE: "the receiver verified the SHA-256",
    Outcome.INCOMPLETE: "the receiver reports chunks missing",
    Outcome.SENT: "no verdict from the receiver",
}


def send_summary(session: SenderSession, doc: dict[str, Any]) -> tuple[bool, str]:
    """The one line ``udpxfer send`` ends with, from the session and its ``send_report``.

    Returns ``(True, line)`` for a success: a verified reliable transfer, or a blast run that
    sent everything (whatever the receiver says); ``(False, reason)`` otherwise.
    """
    outcome = session.outcome
    stats = session.stats()
    timing = doc["timing"]
    head = f"{session.meta.name} ({format_size(session.size)}) -> {doc['peer']}"
    chunks = plural(session.chunk_count, "chunk")
    if outcome is None:
        return False, f"{head}: the transfer did not finish"
    if session.mode is Mode.BLAST:
        # Blast: the time to send everything, not the wait for the receiver's verdict.
        rate = timing["first_pass_rate_bps"] or 0.0
        detail = f"{chunks} in {timing['send_duration_s']:.3f} s, sent at {format_rate(rate)}"
        verdict = _BLAST_VERDICTS.get(outcome.outcome, str(outcome.outcome))
        return True, f"sent {head}: {detail}; {verdict}"
    if outcome.outcome is Outcome.COMPLETE:
        rate = timing["goodput_bps"] or 0.0
        rounds = plural(stats.repair_rounds, "repair round")
        resumed = f"; {plural(stats.resumed, 'chunk')} already there" if stats.resumed else ""
        return True, (
            f"sent {head}: verified by the receiver; {chunks}, {stats.chunks_resent} resent "
            f"in {rounds}; {timing['duration_s']:.3f} s until the verdict, "
            f"goodput {format_rate(rate)}{resumed}"
        )
    return False, f"{head}: {outcome.reason or outcome.outcome}"
