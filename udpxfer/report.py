"""Transfer statistics -> the JSON report (schema ``udpxfer.report/1``) and its text summary.

The keys listed in DESIGN.md are a contract other tools rely on: add keys, never rename them.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from udpxfer.analysis import analyse, first_transmissions
from udpxfer.errors import TransportError, UsageError
from udpxfer.files import unique_path
from udpxfer.ranges import as_lists, missing_ranges
from udpxfer.receiver import ReceiverSession
from udpxfer.sockets import format_sockaddr
from udpxfer.trace import DUPLICATE, RESENT, Trace
from udpxfer.units import format_rate, format_size
from udpxfer.wire import Mode

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


def write_report(doc: dict[str, Any], path: Path) -> Path:
    """Write ``doc`` as indented JSON to ``path`` (created atomically via a temporary file).

    A path that exists already (an earlier report, a symbolic link, a device, a FIFO) is never
    replaced: the report goes to ``stem-N.json`` beside it. Returns where it went.

    Raises:
        TransportError: the file cannot be written.
    """
    path = free_path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_json_safe(doc), indent=2, allow_nan=False)
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise TransportError(f"cannot write report {path}: {exc.strerror}") from exc
    return path


def free_path(path: Path) -> Path:
    """``path``, or ``stem-N.ext`` beside it when something (of any kind) is there already."""
    if os.path.lexists(path):
        return unique_path(path.parent, path.name)
    return path


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON has no such numbers) and numpy scalars
    as plain Python numbers."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    or no ``--report``, gets a timestamped name in it.
    """
    if target is None or target.is_dir():
        return default_report_path(target or reports_dir, file_name, started_unix_s)
    return target if first else unique_path(target.parent, target.name)


def _format_ranges(ranges: list[list[int]], limit: int = 8) -> str:
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"... ({len(ranges) - limit} more)")
    return ", ".join(parts) if parts else "none"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """A short human summary of a report: file, verdict, chunks, gaps, loss, goodput."""
    file, chunks, timing = doc["file"], doc["chunks"], doc["timing"]
    if file["verified"]:
        verdict = "complete, SHA-256 verified"
    elif file["complete"]:
        verdict = "complete, SHA-256 MISMATCH"
    else:
        verdict = f"INCOMPLETE ({doc.get('outcome', 'incomplete')})"
    lines = [
        f"file      {file['name']} ({format_size(file['size'])}) -> {file['path']}",
        f"verdict   {verdict}",
        f"chunks    {chunks['received']}/{chunks['total']} received, {chunks['missing']} missing, "
        f"{chunks['retransmitted']} resent, {chunks['duplicates']} duplicate, "
        f"{chunks['out_of_order']} out of order, {chunks['corrupt']} corrupt",
    ]
    if doc["transport"] == "udp":
        lines.append(f"gaps      {_format_ranges(doc['gaps'])}")
        lines.append(
            f"loss      {doc['loss']['rate'] * 100:.3f}% on the first pass "
            f"({_format_ranges(doc['first_pass_gaps'])})"
        )
    not_sent = chunks.get("not_sent", 0)
    if not_sent:
        lines.append(
            f"sent      interrupted: {not_sent} chunks were never sent (not counted as lost)"
        )
    loss = doc.get("loss", {})
    bursts, gilbert, ci = loss.get("bursts"), loss.get("gilbert"), loss.get("ci95")
    if isinstance(bursts, dict) and bursts.get("count"):
        text = (
            f"bursts    {bursts['count']} (mean {bursts['mean_length']:.2f}, "
            f"max {bursts['max_length']} chunks)"
        )
        if isinstance(gilbert, dict) and gilbert.get("p") is not None and gilbert.get("r"):
            text += f"; Gilbert-Elliott p={gilbert['p']:.4f} r={gilbert['r']:.4f}"
        if isinstance(ci, list) and len(ci) == 2:
            text += f"; loss 95% CI {ci[0] * 100:.2f}-{ci[1] * 100:.2f}%"
        lines.append(text)
    lines.append(
        f"timing    {timing['duration_s']:.3f} s, goodput {format_rate(timing['goodput_bps'])}"
    )
    pdv = timing.get("pdv_ms")
    if timing.get("jitter_ms") is not None and isinstance(pdv, dict) and pdv.get("p99") is not None:
        lines.append(
            f"delay     jitter {timing['jitter_ms']:.3f} ms (RFC 3550), delay variation "
            f"p50 {pdv['p50']:.3f} / p95 {pdv['p95']:.3f} / p99 {pdv['p99']:.3f} ms"
        )
    return lines


def report_from_trace(trace: Trace, *, source: Path) -> dict[str, Any]:
    """A report rebuilt from a trace alone (no file name, path or hashes are known)."""
    held = np.zeros(trace.chunk_count, dtype=np.uint8)
    held[trace.index] = 1
    first = np.zeros(trace.chunk_count, dtype=np.uint8)
    first[trace.index[first_transmissions(trace.pass_no, trace.flags)]] = 1
    received = int(held.sum())
    end_ns = int(trace.arrival_ns.max()) if len(trace) else trace.started_ns
    report = TransferReport(
        transport="udp",
        mode=trace.mode,
        file=FileSection(
            name=source.stem,
            size=trace.file_size,
            path="",
            sha256_expected=None,
            sha256_actual=None,
            complete=received == trace.chunk_count,
            verified=False,
        ),
        chunks=ChunkSection(
            size=trace.chunk_size,
            total=trace.chunk_count,
            received=received,
            missing=trace.chunk_count - received,
            duplicates=int(np.count_nonzero(trace.flags & DUPLICATE)),
            retransmitted=int(np.count_nonzero(trace.flags & RESENT)),
        ),
        gaps=as_lists(missing_ranges(held)),
        first_pass_gaps=as_lists(missing_ranges(first)),
        duration_s=(end_ns - trace.started_ns) / 1e9,
        datagrams_received=len(trace),
        outcome="trace",
        extra={"trace_path": str(source), **analyse(trace)},
    )
    doc = report.to_dict()
    doc["chunks"]["out_of_order"] = doc.get("reorder", {}).get("count", 0)
    return doc


def load_report(path: Path) -> tuple[dict[str, Any], Trace | None]:
    """A report and its trace from a ``.json`` report or a ``.npz`` trace.

    Raises:
        UsageError: the file is missing or is neither.
    """
    if path.suffix == ".npz":
        only = Trace.load(path)
        return report_from_trace(only, source=path), only
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not a JSON report: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not a udpxfer report (schema {SCHEMA})")
    trace: Trace | None = None
    trace_path = doc.get("trace_path")
    if isinstance(trace_path, str):
        candidate = Path(trace_path)
        if not candidate.is_absolute() and not candidate.exists():
            candidate = path.parent / candidate.name
        if candidate.exists():
            trace = Trace.load(candidate)
    return doc, trace


def session_trace(session: ReceiverSession) -> Trace | None:
    """The session's per-datagram record as a ``Trace`` (None when not recorded)."""
    meta = session.meta
    if session.trace is None or meta is None:
        return None
    return Trace.from_recorder(
        session.trace,
        chunk_count=meta.chunk_count,
        chunk_size=meta.chunk_size,
        file_size=meta.size,
        mode=meta.mode.label,
        started_ns=int(session.started_at * 1e9),
        tx_sent=session.tx_sent,
        chunks_sent=session.sent_upto if session.not_sent else -1,
        held_before=session.resumed_bits(),
    )


def udp_report(
    session: ReceiverSession,
    file_path: Path | None,
    *,
    datagrams_received: int,
    datagrams_rejected: int,
    trace: Trace | None = None,
    datagrams_unauthenticated: int = 0,
) -> dict[str, Any]:
    """The JSON report of one UDP transfer, with the loss analysis when a trace is given."""
    meta = session.meta
    assert meta is not None
    outcome = session.outcome.outcome if session.outcome else "incomplete"
    complete = session.complete
    verified = outcome == "complete"
    gaps = session.gaps()
    first_pass = session.first_pass_gaps()
    not_sent = session.not_sent
    if meta.mode is Mode.BLAST:
        first_pass = [(a, min(b, session.sent_upto - 1)) for a, b in gaps if a < session.sent_upto]
    # Loss is counted over what the first pass sent: not over chunks never sent (an
    # interrupted transfer) nor over chunks already on disk (a resumed one).
    sent_first = None
    if not_sent or session.resumed:
        sent_first = session.sent_upto - session.resumed_below(session.sent_upto)
    # Goodput counts until verification for a verified file, else until the last new chunk
    # (not the blast grace period or an idle timeout that followed it).
    end = session.finished_at if session.finished_at is not None else session.last_heard
    if outcome != "complete" and session.last_data_at is not None:
        end = session.last_data_at
    report = TransferReport(
        transport="udp",
        mode=meta.mode.label,
        file=FileSection(
            name=meta.name,
            size=meta.size,
            path=str(file_path) if file_path is not None else "",
            sha256_expected=meta.sha256.hex(),
            sha256_actual=session.sha256_actual.hex()
            if complete and session.sha256_actual
            else None,
            complete=complete,
            verified=verified,
        ),
        chunks=ChunkSection(
            size=meta.chunk_size,
            total=meta.chunk_count,
            received=session.held_count,
            missing=meta.chunk_count - session.held_count,
            duplicates=session.duplicates,
            out_of_order=session.out_of_order,
            corrupt=session.corrupt,
            retransmitted=session.retransmitted,
        ),
        gaps=as_lists(gaps),
        first_pass_gaps=as_lists(first_pass),
        first_pass_sent=sent_first,
        duration_s=max(0.0, end - session.started_at),
        datagrams_received=datagrams_received,
        datagrams_rejected=datagrams_rejected,
        peer=peer_text(session.peer),
        session_id=f"{session.session_id:016x}",
        outcome=outcome,
        extra={
            "chunks": {"not_sent": not_sent, "resumed": session.resumed},
            "datagrams": {
                "session": session.datagrams,
                "sender_data_sent": session.tx_sent,
                "unauthenticated": datagrams_unauthenticated,
            },
            "repair": {
                "rounds": session.rounds,
                "nacks_sent": session.nacks_sent,
                "bad_blocks": session.bad_blocks,
            },
            "reason": session.outcome.reason if session.outcome else "",
        },
    )
    if trace is not None:
        report.extra.update(analyse(trace))  # extends the core loss and timing sections
    return report.to_dict()


def peer_text(peer: object) -> str:
    """A receiver session's peer as ``host:port`` text."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_sockaddr(peer)
    return str(peer)
