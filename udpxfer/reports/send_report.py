"""The sender's JSON report (schema ``udpxfer.send-report/1``).

Kept apart from ``reports.report`` (the receiver's report, numpy and the loss analysis) so that
``udpxfer send --report`` starts as fast as a plain send.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.wire import Verdict

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
            "sha256_expected": meta.sha256.hex(),
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
