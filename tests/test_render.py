"""Markdown/HTML rendering of reports: files, embedded plots, figures that match the JSON."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_analysis import gilbert_elliott_losses, synthetic_trace

from udpxfer.analysis.bursts import runs
from udpxfer.analysis.loss import lost_chunks
from udpxfer.analysis.sections import analyse
from udpxfer.analysis.trace import RESENT, Trace
from udpxfer.errors import UsageError
from udpxfer.reports.render import (
    comparison_labels,
    key_figures,
    render_comparison,
    render_html,
    render_markdown,
    report_stem,
)
from udpxfer.reports.report import ChunkSection, FileSection, TransferReport

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_report(trace: Trace, *, name: str = "photo.jpg", analysed: bool = True) -> dict[str, Any]:
    """The JSON document a receiver would write for ``trace`` (core keys + analysis)."""
    lost = lost_chunks(trace)
    starts, lengths = runs(lost)
    first_pass_gaps = [[int(s), int(s + n - 1)] for s, n in zip(starts, lengths, strict=True)]
    gaps = first_pass_gaps if trace.mode == "blast" else []
    missing = sum(last - first + 1 for first, last in gaps)
    complete = not gaps
    span_ns = int(trace.arrival_ns.max() - trace.started_ns) if len(trace) else 0
    report = TransferReport(
        transport="udp",
        mode=trace.mode,
        file=FileSection(
            name=name,
            size=trace.file_size,
            path=f"/srv/in/{name}" + ("" if complete else ".partial"),
            sha256_expected="ab" * 32,
            sha256_actual="ab" * 32 if complete else None,
            complete=complete,
            verified=complete,
        ),
        chunks=ChunkSection(
            size=trace.chunk_size,
            total=trace.chunk_count,
            received=trace.chunk_count - missing,
            missing=missing,
            retransmitted=int(np.count_nonzero(trace.flags & RESENT)),
        ),
        gaps=gaps,
        first_pass_gaps=first_pass_gaps,
        duration_s=span_ns / 1e9,
        datagrams_received=len(trace),
        session_id="5e55",
        outcome="complete" if complete else "incomplete",
        extra=analyse(trace) if analysed else {},
    )
    # Through JSON and back: exactly what a reader of the report file gets.
    doc: dict[str, Any] = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    return doc


@pytest.fixture(scope="module")
def blast() -> tuple[dict[str, Any], Trace]:
    lost = gilbert_elliott_losses(20_000, p=0.01, r=0.25, seed=11)
    trace = synthetic_trace(lost, jitter_ns=20_000, duplicates=4, seed=11)
    return make_report(trace), trace


@pytest.fixture(scope="module")
def reliable() -> tuple[dict[str, Any], Trace]:
    lost = gilbert_elliott_losses(5_000, p=0.02, r=0.3, seed=12)
    trace = synthetic_trace(lost, mode="reliable", jitter_ns=5_000, seed=12)
    return make_report(trace), trace


def table(markdown: str) -> dict[str, str]:
    """The two-column Markdown table rows as ``{label: value}``."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def test_markdown_figures_match_the_report(
    tmp_path: Path, blast: tuple[dict[str, Any], Trace]
) -> None:
    doc, _ = blast
    path = render_markdown(doc, tmp_path)
    assert path == tmp_path / "photo.jpg-udp-blast-5e55.md"
    text = path.read_text(encoding="utf-8")
    rows = table(text)
    assert rows["Chunks received"] == f"{doc['chunks']['received']} / {doc['chunks']['total']}"
    assert rows["First-pass loss"] == f"{doc['loss']['rate'] * 100:.3f} %"
    low, high = doc["loss"]["ci95"]
    assert rows["First-pass loss, 95% CI (Wilson)"] == f"{low * 100:.3f} % to {high * 100:.3f} %"
    assert rows["Loss bursts"] == str(doc["loss"]["bursts"]["count"])
    assert rows["Longest burst (chunks)"] == str(doc["loss"]["bursts"]["max_length"])
    assert rows["Gilbert p (received → lost)"] == f"{doc['loss']['gilbert']['p']:.4g}"
    assert rows["Gilbert r (lost → received)"] == f"{doc['loss']['gilbert']['r']:.4g}"
    assert rows["Jitter (RFC 3550)"] == f"{doc['timing']['jitter_ms']:.3f} ms"
    pdv = doc["timing"]["pdv_ms"]
    assert rows["PDV p50 / p95 / p99 (RFC 5481)"] == " / ".join(
        f"{pdv[k]:.3f} ms" for k in ("p50", "p95", "p99")
    )
    assert rows["Reordered (RFC 4737)"].startswith(f"{doc['reorder']['ratio'] * 100:.3f} %")
    assert rows["Verdict"].startswith("INCOMPLETE")
    assert len(rows) == len(key_figures(doc)) + 1  # plus the header row


def test_markdown_links_plots_written_beside_it(
    tmp_path: Path, blast: tuple[dict[str, Any], Trace]
) -> None:
    doc, _ = blast
    text = render_markdown(doc, tmp_path).read_text(encoding="utf-8")
    links = re.findall(r"!\[[^]]+\]\(([^)]+)\)", text)
    assert len(links) == 5  # loss map, loss over time, bursts, goodput, delay
    for link in links:
        assert "/" not in link
        assert (tmp_path / link).read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*links, f"{report_stem(doc)}.md"])


def test_html_is_self_contained_with_embedded_plots_and_images(
    tmp_path: Path, reliable: tuple[dict[str, Any], Trace]
) -> None:
    doc, _ = reliable
    original = tmp_path / "in" / "cat.jpg"
    original.parent.mkdir()
    original.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    received = tmp_path / "in" / "cat.jpg.partial"
    received.write_bytes(b"\xff\xd8\xff\xe0" + bytes(1024))
    out = tmp_path / "out"
    path = render_html(doc, out, images=(original, received))
    assert path == out / "photo.jpg-udp-reliable-5e55.html"
    assert [p.name for p in out.iterdir()] == [path.name]
    page = path.read_text(encoding="utf-8")
    pngs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(pngs) == 5
    assert all(base64.b64decode(png).startswith(PNG_MAGIC) for png in pngs)
    jpegs = re.findall(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(j) for j in jpegs] == [original.read_bytes(), received.read_bytes()]
    assert "http://" not in page
    assert "https://" not in page
    assert "<style>" in page
    assert f"<td>First-pass loss</td><td>{doc['loss']['rate'] * 100:.3f} %</td>" in page
    assert "complete, SHA-256 verified" in page


def test_html_escapes_names_from_the_network(tmp_path: Path) -> None:
    trace = synthetic_trace(np.zeros(50, dtype=np.bool_))
    doc = make_report(trace, name="<script>alert(1)</script>.jpg")
    path = render_html(doc, tmp_path)
    page = path.read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in page
    assert path.parent == tmp_path


def test_stems_never_leave_the_output_directory(tmp_path: Path) -> None:
    trace = synthetic_trace(np.zeros(10, dtype=np.bool_))
    doc = make_report(trace, name="../../etc/passwd")
    path = render_markdown(doc, tmp_path / "out", stem="../../escape")
    assert path.parent == tmp_path / "out"
    assert {p.parent for p in (tmp_path / "out").iterdir()} == {tmp_path / "out"}


def test_report_without_analysis_or_trace_still_renders(tmp_path: Path) -> None:
    trace = synthetic_trace(gilbert_elliott_losses(300, p=0.05, r=0.5, seed=2))
    doc = make_report(trace, analysed=False)
    text = render_markdown(doc, tmp_path).read_text(encoding="utf-8")
    rows = table(text)
    assert rows["Jitter (RFC 3550)"] == "—"
    assert rows["Gilbert p (received → lost)"] == "—"
    assert rows["First-pass loss"] == f"{doc['loss']['rate'] * 100:.3f} %"
    # The loss map needs only the core report's gap lists.
    assert re.findall(r"\]\(([^)]+)\)", text) == [f"{report_stem(doc)}-loss-map.png"]


@pytest.mark.parametrize("chunks", [0, 3])
def test_empty_transfers_render(tmp_path: Path, chunks: int) -> None:
    trace = synthetic_trace(np.ones(chunks, dtype=np.bool_))
    doc = make_report(trace)
    assert render_markdown(doc, tmp_path).exists()
    assert "<table>" in render_html(doc, tmp_path).read_text(encoding="utf-8")


def test_comparison_tables_and_overlays(
    tmp_path: Path,
    blast: tuple[dict[str, Any], Trace],
    reliable: tuple[dict[str, Any], Trace],
) -> None:
    docs = [blast[0], reliable[0]]
    assert comparison_labels(docs) == ["udp/blast", "udp/reliable"]
    md = render_comparison(docs, tmp_path, "md")
    text = md.read_text(encoding="utf-8")
    assert "| Figure | udp/blast | udp/reliable |" in text
    loss_row = next(line for line in text.splitlines() if line.startswith("| First-pass loss |"))
    assert loss_row == (
        f"| First-pass loss | {docs[0]['loss']['rate'] * 100:.3f} % "
        f"| {docs[1]['loss']['rate'] * 100:.3f} % |"
    )
    links = re.findall(r"!\[[^]]+\]\(([^)]+)\)", text)
    assert len(links) == 4  # goodput, loss, bursts, delay overlays
    assert all((tmp_path / link).read_bytes().startswith(PNG_MAGIC) for link in links)
    page = render_comparison(docs, tmp_path, "html", labels=["A", "B"]).read_text("utf-8")
    assert "<th>A</th><th>B</th>" in page
    assert page.count("data:image/png;base64,") == 4


def test_comparison_numbers_duplicate_labels(blast: tuple[dict[str, Any], Trace]) -> None:
    assert comparison_labels([blast[0], blast[0]]) == ["udp/blast #1", "udp/blast #2"]


@pytest.mark.parametrize(
    ("count", "kwargs", "message"),
    [
        (1, {}, "at least two"),
        (2, {"fmt": "pdf"}, "unknown format"),
        (2, {"labels": ["only one"]}, "1 labels for 2 reports"),
    ],
)
def test_comparison_rejects_bad_requests(
    tmp_path: Path,
    blast: tuple[dict[str, Any], Trace],
    count: int,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(UsageError, match=message):
        render_comparison([blast[0]] * count, tmp_path, **kwargs)


def test_unwritable_output_is_a_usage_error(
    tmp_path: Path, blast: tuple[dict[str, Any], Trace]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(UsageError):
        render_markdown(blast[0], not_a_dir)


def test_missing_image_is_a_usage_error(
    tmp_path: Path, blast: tuple[dict[str, Any], Trace]
) -> None:
    with pytest.raises(UsageError, match="cannot read image"):
        render_html(blast[0], tmp_path, images=(tmp_path / "a.jpg", tmp_path / "b.jpg"))


def test_importing_the_package_does_not_load_matplotlib() -> None:
    code = (
        "import sys, udpxfer, udpxfer.reports.render, udpxfer.analysis.sections,"
        " udpxfer.analysis.trace, udpxfer.reports.report;"
        "sys.exit('matplotlib' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0
