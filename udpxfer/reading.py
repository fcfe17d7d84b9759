"""Reading reports and traces back for ``udpxfer report``: checked before anything uses them.

A report from disk is untrusted input: a hand-edited or truncated document ends in one
clear error naming what is missing, never in a ``KeyError`` deep in the renderer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from udpxfer.analysis import analyse, first_transmissions
from udpxfer.errors import UsageError
from udpxfer.ranges import as_lists, missing_ranges
from udpxfer.report import SCHEMA, ChunkSection, FileSection, TransferReport
from udpxfer.trace import DUPLICATE, RESENT, Trace

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
    problem = report_problem(doc)
    if problem:
        raise UsageError(f"{path} is a damaged report: {problem}")
    trace: Trace | None = None
    trace_path = doc.get("trace_path")
    if isinstance(trace_path, str):
        candidate = Path(trace_path)
        if not candidate.is_absolute() and not candidate.exists():
            candidate = path.parent / candidate.name
        if candidate.exists():
            trace = Trace.load(candidate)
    return doc, trace
