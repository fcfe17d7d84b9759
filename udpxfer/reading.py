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
