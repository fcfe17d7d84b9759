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
    outcome = session.outcome
    verdict = outcome.verdict if outcome is not None and outcome.verdict is not None else None
    if verdict is None:
        verdict = session.verdict
    verified = verdict is Verdict.VERIFIED
    end = session.finished_at if session.finished_at is not None else session.started_at
    sent_at = session.sent_all_at if session.sent_all_at is not None else end
    duration = max(0.0, end - session.started_at)
    send_s = max(0.0, sent_at - session.started_at)
    srtt = session.rtt.srtt_s
    return {
        "schema": SEND_SCHEMA,
        "transport": "udp",
        "mode": session.mode.label,
        "outcome": outcome.outcome if outcome is not None else "unfinished",
        "reason": outcome.reason if outcome is not None else "",
        "peer": peer,
        "session_id": f"{session.session_id:016x}",
        "started_unix_s": round(started_unix_s, 6),
        "file": {
            "name": session.meta.name,
            "size": session.size,
            "path": str(source),
            "sha256_expected": session.meta.sha256.hex(),
            "sha256_actual": session.meta.sha256.hex() if verified else None,
            "complete": verdict in (Verdict.VERIFIED, Verdict.MISMATCH),
            "verified": verified,
        },
        "verdict": verdict.name.lower() if verdict is not None else None,
        "chunks": {
            "size": session.chunk_size,
            "total": session.chunk_count,
            "sent": session.first_pass_sent,
            "resent": session.chunks_resent,
            "acknowledged": min(session.acked_held, session.chunk_count),
            # Chunks an earlier, interrupted run left verified at the receiver: not sent again.
            "resumed": session.resumed,
        },
        # Every datagram the sender sent (META, DATA, END...), headers included.
        "datagrams": {"sent": session.datagrams_sent, "bytes_sent": session.bytes_sent},
        "repair": {"rounds": session.repair_rounds},
        "timing": {
            # From the first datagram to the receiver's verdict (or giving up).
            "duration_s": duration,
            # From the first datagram until the whole first pass was sent.
            "send_duration_s": send_s,
            # File bytes over duration_s: what the receiver's goodput measures too, but
            # ending when the verdict reached the sender (one path delay later).
            # Null unless the receiver verified the file.
            "goodput_bps": session.size * 8 / duration if duration > 0 and verified else None,
            # File bytes over send_duration_s: how fast the first pass went out.
            "first_pass_rate_bps": session.size * 8 / send_s if send_s > 0 else None,
            "rtt_ms": srtt * 1000 if srtt is not None else None,
        },
    }
