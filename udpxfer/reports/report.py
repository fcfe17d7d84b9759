"""Transfer statistics -> the JSON report (schema ``udpxfer.report/1``) and its text summary.

The keys listed in DESIGN.md are a contract other tools rely on: add keys, never rename them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from udpxfer.analysis import online_report
from udpxfer.paths import unique_path
from udpxfer.protocol.events import Outcome
from udpxfer.protocol.ranges import as_lists
from udpxfer.protocol.receiver import ReceiverSession
from udpxfer.protocol.wire import Mode
from udpxfer.reports.output import is_stream
from udpxfer.reports.output import write_report as write_report  # the receiver writes through here
from udpxfer.units import format_rate, format_size, format_sockaddr, plural

SCHEMA = "udpxfer.report/1"


@dataclass(frozen=True, slots=True)
class FileSection:
    """What the report says about the file itself."""

    name: str
    size: int
    path: str
    sha256_expected: str | None
    sha256_actual: str | None
    complete: bool
    verified: bool


@dataclass(frozen=True, slots=True)
class ChunkSection:
    """Chunk counters of one transfer."""

    size: int
    total: int
    received: int
    missing: int
    duplicates: int = 0
    out_of_order: int = 0
    corrupt: int = 0
    retransmitted: int = 0


@dataclass(slots=True)
class TransferReport:
    """Everything one transfer's report holds; ``to_dict`` gives the JSON document."""

    transport: str
    mode: str
    file: FileSection
    chunks: ChunkSection
    gaps: list[list[int]]
    first_pass_gaps: list[list[int]]
    duration_s: float
    datagrams_received: int = 0
    datagrams_rejected: int = 0
    peer: str | None = None
    session_id: str | None = None
    outcome: str = "complete"
    started_unix_s: float = field(default_factory=time.time)
    first_pass_sent: int | None = None  # chunks the first pass sent (None: all of them)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, core keys first, then any analysis sections in ``extra``."""
        total = self.chunks.total if self.first_pass_sent is None else self.first_pass_sent
        first_pass_missing = sum(last - first + 1 for first, last in self.first_pass_gaps)
        received_bytes = self.file.size if self.file.complete else self._received_bytes()
        duration = max(self.duration_s, 0.0)
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "transport": self.transport,
            "mode": self.mode,
            "outcome": self.outcome,
            "peer": self.peer,
            "session_id": self.session_id,
            "started_unix_s": round(self.started_unix_s, 6),
            "file": asdict(self.file),
            "chunks": asdict(self.chunks),
            "gaps": self.gaps,
            "first_pass_gaps": self.first_pass_gaps,
            "loss": {
                "rate": first_pass_missing / total if total else 0.0,
                "first_pass_missing": first_pass_missing,
                "final_missing": self.chunks.missing,
            },
            "timing": {
                "duration_s": duration,
                "goodput_bps": received_bytes * 8 / duration if duration > 0 else 0.0,
            },
            "datagrams": {
                "received": self.datagrams_received,
                "rejected": self.datagrams_rejected,
            },
        }
        for key, value in self.extra.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key].update(value)
            else:
                doc[key] = value
        return doc

    def _received_bytes(self) -> int:
        size, chunk = self.file.size, self.chunks.size
        if not chunk:
            return 0
        missing_bytes = 0
        for first, last in self.gaps:
            end = min((last + 1) * chunk, size)
            missing_bytes += max(0, end - first * chunk)
        return size - missing_bytes


def default_report_path(directory: Path, file_name: str, started_unix_s: float) -> Path:
    """A fresh ``reports/<UTC time>-<name>.json`` path that no earlier report occupies."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started_unix_s))
    return unique_path(directory, f"{stamp}-{file_name}.json")


def report_path(
    target: Path | None,
    reports_dir: Path,
    file_name: str,
    started_unix_s: float,
    *,
    first: bool,
) -> Path:
    """Where a receiver writes a transfer's report.

    ``--report`` (``target``) as given for the receiver's first transfer, then a fresh
    ``stem-N.json`` beside it (never overwriting an earlier transfer's report); a directory,
    or no ``--report``, gets a timestamped name in it; a stream (``-``, a FIFO) gets them all.
    """
    if target is None or target.is_dir():
        return default_report_path(target or reports_dir, file_name, started_unix_s)
    if first or is_stream(target):
        return target  # a stream takes every report; a file is never replaced (write_report)
    return unique_path(target.parent, target.name)


SUMMARY_COLUMNS = 80
_INDENT = " " * 10  # the width of "chunks    ": continuation lines line up under the values


def _format_ranges(ranges: list[list[int]], width: int) -> str:
    """``22-23, 43-48, 80`` cut to ``width`` characters with ``... (N more)``."""
    if not ranges:
        return "none"
    # No more than ``width`` ranges can fit: never join all of a long list (quadratic).
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[: max(width, 1)]]
    for shown in range(len(parts), 0, -1):
        tail = "" if shown == len(ranges) else f", ... ({len(ranges) - shown} more)"
        text = ", ".join(parts[:shown]) + tail
        if len(text) <= width:
            return text
    return f"{len(ranges)} ranges"


def _fill(head: str, pieces: list[str], sep: str = ", ") -> list[str]:
    """``head`` and ``pieces`` joined into lines of at most ``SUMMARY_COLUMNS``, the later
    lines indented under the first one's values."""
    lines, line = [], head + pieces[0]
    for piece in pieces[1:]:
        if len(line) + len(sep) + len(piece) > SUMMARY_COLUMNS:
            lines.append(line + sep.rstrip())
            line = _INDENT + piece
        else:
            line += sep + piece
    return [*lines, line]


def verdict_text(doc: Mapping[str, Any]) -> str:
    """``complete, SHA-256 verified``, ``INCOMPLETE (timeout: ...)``: a report's verdict."""
    file = doc.get("file") or {}
    if file.get("verified"):
        return "complete, SHA-256 verified"
    if file.get("complete"):
        return "complete, SHA-256 MISMATCH"
    outcome = doc.get("outcome") or "incomplete"
    reason = doc.get("reason") or ""
    # "INCOMPLETE (incomplete)" says nothing twice: the outcome only where it adds to it.
    said = [part for part in (outcome, reason) if part and part != "incomplete"]
    return f"INCOMPLETE ({': '.join(said)})" if said else "INCOMPLETE"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """A short human summary of a report, in lines of at most 80 columns (the file's path
    aside): file, verdict, chunks, gaps, loss, bursts, timing, delay."""
    file, chunks, timing = doc["file"], doc["chunks"], doc["timing"]
    verdict = verdict_text(doc)
    lines = [
        f"file      {file['name']} ({format_size(file['size'])}) -> {file['path']}",
        f"verdict   {verdict}",
        *_fill(
            "chunks    ",
            [
                f"{chunks['received']}/{chunks['total']} received",
                f"{chunks['missing']} missing",
                f"{chunks['retransmitted']} resent",
                f"{chunks['duplicates']} duplicate",
                f"{chunks['out_of_order']} out of order",
                f"{chunks['corrupt']} corrupt",
            ],
        ),
    ]
    room = SUMMARY_COLUMNS - len(_INDENT)
    if doc["transport"] == "udp":
        lines.append(f"gaps      {_format_ranges(doc['gaps'], room)}")
        first = f"loss      {doc['loss']['rate'] * 100:.3f}% on the first pass"
        if doc["first_pass_gaps"] != doc["gaps"]:
            first += (
                f" ({_format_ranges(doc['first_pass_gaps'], SUMMARY_COLUMNS - len(first) - 3)})"
            )
        lines.append(first)
    not_sent = chunks.get("not_sent", 0)
    if not_sent:
        lines.append(
            f"sent      interrupted: {plural(not_sent, 'chunk')} never sent (not counted as lost)"
        )
    loss = doc.get("loss", {})
    bursts, gilbert, ci = loss.get("bursts"), loss.get("gilbert"), loss.get("ci95")
    if isinstance(bursts, dict) and bursts.get("count"):
        pieces = [
            f"{bursts['count']} (mean {bursts['mean_length']:.2f}, "
            f"max {plural(bursts['max_length'], 'chunk')})"
        ]
        if isinstance(gilbert, dict) and gilbert.get("p") is not None and gilbert.get("r"):
            pieces.append(f"Gilbert-Elliott p={gilbert['p']:.4f} r={gilbert['r']:.4f}")
        if isinstance(ci, list) and len(ci) == 2:
            pieces.append(f"loss 95% CI {ci[0] * 100:.2f}-{ci[1] * 100:.2f}%")
        lines += _fill("bursts    ", pieces, "; ")
    span = "first chunk to verified hash" if file["verified"] else "first to last chunk"
    lines.append(
        f"timing    {timing['duration_s']:.3f} s ({span}), "
        f"goodput {format_rate(timing['goodput_bps'])}"
    )
    pdv = timing.get("pdv_ms")
    if timing.get("jitter_ms") is not None and isinstance(pdv, dict) and pdv.get("p99") is not None:
        lines += _fill(
            "delay     ",
            [
                f"jitter {timing['jitter_ms']:.3f} ms (RFC 3550)",
                f"PDV p50/p95/p99 {pdv['p50']:.3f}/{pdv['p95']:.3f}/{pdv['p99']:.3f} ms",
            ],
            "; ",
        )
    return lines


def session_sections(session: ReceiverSession) -> dict[str, Any]:
    """The analysis sections of a session's report, from its online statistics (empty when
    the receiver keeps none)."""
    online = session.online_stats()
    stats = session.stats()
    if online is None or stats.meta is None:
        return {}
    return online_report.sections(
        online,
        held_before=session.resumed_bits(),
        chunks_sent=stats.sent_upto if session.not_sent else -1,
        tx_sent=stats.tx_sent,
    )


def udp_report(
    session: ReceiverSession,
    file_path: Path | None,
    *,
    datagrams_received: int,
    datagrams_rejected: int,
    datagrams_unauthenticated: int = 0,
) -> dict[str, Any]:
    """The JSON report of one UDP transfer, with the loss analysis when the session kept its
    statistics (``ReceiverConfig.record_trace``)."""
    stats = session.stats()
    meta = stats.meta
    assert meta is not None
    outcome = stats.outcome.outcome if stats.outcome else Outcome.INCOMPLETE
    complete = stats.complete
    verified = outcome is Outcome.COMPLETE
    gaps = session.gaps()
    first_pass = session.first_pass_gaps()
    not_sent = session.not_sent
    sent_upto = stats.sent_upto
    if meta.mode is Mode.BLAST:
        first_pass = [(a, min(b, sent_upto - 1)) for a, b in gaps if a < sent_upto]
    # Loss is counted over what the first pass sent: not over chunks never sent (an
    # interrupted transfer) nor over chunks already on disk (a resumed one).
    sent_first = None
    if not_sent or stats.resumed:
        sent_first = sent_upto - session.resumed_below(sent_upto)
    # Goodput counts until verification for a verified file, else until the last new chunk
    # (not the blast grace period or an idle timeout that followed it).
    end = stats.finished_at if stats.finished_at is not None else stats.last_heard
    if outcome is not Outcome.COMPLETE and stats.last_data_at is not None:
        end = stats.last_data_at
    report = TransferReport(
        transport="udp",
        mode=meta.mode.label,
        file=FileSection(
            name=meta.name,
            size=meta.size,
            path=str(file_path) if file_path is not None else "",
            sha256_expected=meta.sha256.hex() if any(meta.sha256) else None,  # still to come
            sha256_actual=stats.sha256_actual.hex() if complete and stats.sha256_actual else None,
            complete=complete,
            verified=verified,
        ),
        chunks=ChunkSection(
            size=meta.chunk_size,
            total=meta.chunk_count,
            received=stats.held,
            missing=meta.chunk_count - stats.held,
            duplicates=stats.duplicates,
            out_of_order=stats.out_of_order,
            corrupt=stats.corrupt,
            retransmitted=stats.retransmitted,
        ),
        gaps=as_lists(gaps),
        first_pass_gaps=as_lists(first_pass),
        first_pass_sent=sent_first,
        duration_s=max(0.0, end - stats.started_at),
        datagrams_received=datagrams_received,
        datagrams_rejected=datagrams_rejected,
        peer=peer_text(stats.peer),
        session_id=f"{stats.session_id:016x}",
        outcome=outcome,
        extra={
            "chunks": {"not_sent": not_sent, "resumed": stats.resumed},
            "datagrams": {
                "session": stats.datagrams,
                "sender_data_sent": stats.tx_sent,
                "unauthenticated": datagrams_unauthenticated,
            },
            "repair": {
                "rounds": stats.rounds,
                "nacks_sent": stats.nacks_sent,
                "bad_blocks": stats.bad_blocks,
            },
            "reason": stats.outcome.reason if stats.outcome else "",
        },
    )
    report.extra.update(session_sections(session))  # extends the core loss and timing sections
    return report.to_dict()


def peer_text(peer: object) -> str:
    """A receiver session's peer as ``host:port`` text."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_sockaddr(peer)
    return str(peer)
