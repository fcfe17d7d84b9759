"""Reading reports and traces back for ``udpxfer report``: checked before anything uses them.

A report from disk is untrusted input: a hand-edited or truncated document ends in one
clear error naming what is missing, never in a ``KeyError`` deep in the renderer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from udpxfer.analysis import online_report
from udpxfer.analysis.trace import MODES, Trace
from udpxfer.analysis.tracefile import COLUMNS, TraceReader, is_stream
from udpxfer.errors import UsageError, map_os_errors
from udpxfer.protocol.online import OnlineStats
from udpxfer.protocol.ranges import Bitmap, as_lists
from udpxfer.reports.report import SCHEMA, ChunkSection, FileSection, TransferReport

_NUMBER = (int, float)
# The keys a report must have for a summary or a page (DESIGN.md's contract; the JSON Schema in
# docs/schema/report.schema.json requires the same, which the tests check).
REQUIRED: dict[str, Any] = {
    "transport": str,
    "mode": str,
    "file": {
        "name": str,
        "size": int,
        "path": str,
        "complete": bool,
        "verified": bool,
        "sha256_expected": (str, type(None)),
        "sha256_actual": (str, type(None)),
    },
    "chunks": dict.fromkeys(
        (
            "size",
            "total",
            "received",
            "missing",
            "duplicates",
            "out_of_order",
            "corrupt",
            "retransmitted",
        ),
        int,
    ),
    "gaps": list,
    "first_pass_gaps": list,
    "loss": {"rate": _NUMBER},
    "timing": {"duration_s": _NUMBER, "goodput_bps": _NUMBER},
    "datagrams": {"received": int, "rejected": int},
}


def report_problem(
    doc: dict[str, Any], required: dict[str, Any] = REQUIRED, where: str = ""
) -> str:
    """What makes ``doc`` unusable as a report (a missing key, a wrong type), or ``""``."""
    for key, expected in required.items():
        name = f"{where}{key}"
        if key not in doc:
            return f"no {name!r} key"
        value = doc[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                return f"{name!r} is not an object"
            problem = report_problem(value, expected, f"{name}.")
            if problem:
                return problem
        elif isinstance(value, bool) and expected in (int, _NUMBER):
            return f"{name!r} is not a number"
        elif not isinstance(value, expected):
            return f"{name!r} has the wrong type ({type(value).__name__})"
    for key in ("gaps", "first_pass_gaps"):
        ranges = doc.get(key, [])
        if not where and not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(i, int) for i in r)
            for r in ranges
        ):
            return f"{key!r} is not a list of [first, last] pairs"
    return ""


def report_from_trace(path: Path) -> dict[str, Any]:
    """A report rebuilt from a trace file alone (no file name, path or hashes are known),
    read a chunk at a time: memory stays bounded whatever the trace's length.

    Raises:
        UsageError: the file is missing, unreadable, not a trace or inconsistent.
    """
    try:
        with map_os_errors(UsageError, f"cannot read trace {path}"), path.open("rb") as handle:
            if not is_stream(handle.read(8)):
                return _report(iter_trace(Trace.load(path)), path)  # an earlier .npz trace
            handle.seek(0)
            reader = TraceReader(handle)
            return _report(_stream(reader), path)
    except ValueError as exc:
        raise UsageError(f"bad trace file {path}: {exc}") from exc


def iter_trace(trace: Trace) -> Iterator[tuple[dict[str, Any], Any]]:
    """An in-memory trace as ``(scalars, chunk)`` pairs like a streamed one."""
    scalars = {**trace.header(), "tx_sent": trace.tx_sent, "chunks_sent": trace.chunks_sent}
    scalars["held_before"] = trace.held_before.tobytes()
    columns = {name: getattr(trace, name) for name in COLUMNS}
    yield scalars, columns
    yield scalars, None


def _stream(reader: TraceReader) -> Iterator[tuple[dict[str, Any], Any]]:
    scalars = dict(reader.header)
    for chunk in reader.chunks():
        yield scalars, chunk
    yield {**scalars, **reader.footer, "held_before": reader.held_before}, None


def _report(chunks: Iterator[tuple[dict[str, Any], Any]], source: Path) -> dict[str, Any]:
    scalars, chunk = next(chunks)
    count, mode = int(scalars["chunk_count"]), str(scalars["mode"])
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    stats = OnlineStats(count, scalars["chunk_size"], scalars["file_size"], scalars["started_ns"])
    held = Bitmap(count)
    end_ns = int(scalars["started_ns"])
    while chunk is not None:
        index = np.asarray(chunk["index"])
        if index.size:
            if int(index.min()) < 0 or int(index.max()) >= count:
                raise ValueError(f"chunk index outside 0..{count - 1}")
            bits = np.frombuffer(held.bits, dtype=np.uint8)
            np.bitwise_or.at(bits, index >> 3, np.left_shift(1, index & 7).astype(np.uint8))
            arrival = np.asarray(chunk["arrival_ns"])
            end_ns = max(end_ns, int(arrival.max()))
            stats.add(index, chunk["tx"], chunk["sent_ns"], arrival, chunk["pass_no"],
                      chunk["flags"])  # fmt: skip
        scalars, chunk = next(chunks)
    received = held.count()
    sections = online_report.sections(
        stats,
        held_before=scalars.get("held_before", b""),
        chunks_sent=int(scalars.get("chunks_sent", -1)),
        tx_sent=int(scalars.get("tx_sent", -1)),
    )
    report = TransferReport(
        transport="udp",
        mode=mode,
        file=FileSection(
            name=source.stem,
            size=int(scalars["file_size"]),
            path="",
            sha256_expected=None,
            sha256_actual=None,
            complete=received == count,
            verified=False,
        ),
        chunks=ChunkSection(
            size=int(scalars["chunk_size"]),
            total=count,
            received=received,
            missing=count - received,
            duplicates=stats.duplicates,
            retransmitted=stats.resent,
        ),
        gaps=as_lists(held.missing_ranges()),
        first_pass_gaps=as_lists(stats.first_pass.missing_ranges()),
        duration_s=(end_ns - int(scalars["started_ns"])) / 1e9,
        datagrams_received=stats.datagrams,
        outcome="trace",
        extra={"trace_path": str(source), **sections},
    )
    doc = report.to_dict()
    doc["chunks"]["out_of_order"] = doc.get("reorder", {}).get("count", 0)
    return doc


def load_report(path: Path) -> dict[str, Any]:
    """A report from a ``.json`` report or a trace (``recv --trace``: any other file).

    Raises:
        UsageError: the file is missing or is neither.
    """
    if path.suffix != ".json" and path.is_file():
        with path.open("rb") as handle:
            head = handle.read(8)
        if is_stream(head) or head.startswith(b"PK") or path.suffix in (".npz", ".trace"):
            return report_from_trace(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not a JSON report: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not a udpxfer report (schema {SCHEMA})")
    problem = report_problem(doc)
    if problem:
        raise UsageError(f"{path} is a damaged report: {problem}")
    return doc
