"""A JSON report -> Markdown or self-contained HTML, with plots drawn from its own numbers.

Rendering only formats: the figures come from the report (``report.py`` core keys plus the
``analysis`` sections) and the plots from ``plots.py``, imported lazily so that importing
this module does not load matplotlib. Everything is written under ``out_dir``; file names come
from the report's file name, transport, mode and session, reduced to safe names.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from udpxfer import __version__
from udpxfer.errors import TransportError, UsageError, map_os_errors
from udpxfer.paths import ensure_writable_dir, safe_name
from udpxfer.reports.document import Report, lookup
from udpxfer.reports.report import summary_lines, verdict_text
from udpxfer.units import format_rate, format_size

if TYPE_CHECKING:
    from udpxfer.reports.plots import Plot

Format = Literal["md", "html"]
NA: Final = "—"
MAX_EMBED_BYTES: Final = 32 << 20  # larger images are named, not embedded
_MAGIC: Final = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)


# --------------------------------------------------------------------------------------------
# Key figures: one formatting for Markdown, HTML and comparisons


def _pct(value: Any) -> str:
    return NA if value is None else f"{value * 100:.3f} %"


def _ms(value: Any) -> str:
    return NA if value is None else f"{value:.3f} ms"


def _seconds(value: Any) -> str:
    return NA if value is None else f"{value:.3f} s"


def _real(value: Any) -> str:
    return NA if value is None else f"{value:.4g}"


def _count(value: Any) -> str:
    return NA if value is None else str(int(value))


def _pair(doc: Report, first: str, second: str, fmt: Callable[[Any], str]) -> str:
    a, b = lookup(doc, first), lookup(doc, second)
    return NA if a is None and b is None else f"{fmt(a)} / {fmt(b)}"


def _verdict(doc: Report) -> str:
    return verdict_text(doc)


def _ci(doc: Report) -> str:
    ci = lookup(doc, "loss.ci95")
    return NA if not ci else f"{_pct(ci[0])} to {_pct(ci[1])}"


def _mean_burst(doc: Report) -> str:
    mean = lookup(doc, "loss.bursts.mean_length")
    bernoulli = lookup(doc, "loss.bursts.bernoulli_mean_length")
    if mean is None:
        return NA
    return f"{mean:.3f} (memoryless channel: {_real(bernoulli)})"


def _reordered(doc: Report) -> str:
    ratio = lookup(doc, "reorder.ratio")
    if ratio is None:
        return NA
    return f"{_pct(ratio)}, max extent {_count(lookup(doc, 'reorder.max_extent'))}"


def _pdv(doc: Report) -> str:
    values = [lookup(doc, f"timing.pdv_ms.{key}") for key in ("p50", "p95", "p99")]
    return NA if values[0] is None else " / ".join(_ms(v) for v in values)


def _size(doc: Report) -> str:
    size = lookup(doc, "file.size")
    return NA if size is None else f"{format_size(size)} ({size} bytes)"


def _rate(value: Any) -> str:
    return NA if value is None else format_rate(value)


def _at(path: str, fmt: Callable[[Any], str]) -> Callable[[Report], str]:
    """A figure formatter: ``fmt`` applied to the value at ``path``."""
    return lambda doc: fmt(lookup(doc, path))


# (label, formatter). Percentages 3 decimals, times in ms 3 decimals, probabilities 4 digits.
FIGURES: Final[tuple[tuple[str, Callable[[Report], str]], ...]] = (
    ("File", lambda d: str(lookup(d, "file.name"))),
    ("Size", _size),
    ("Transport / mode", lambda d: f"{d.get('transport', NA)} / {d.get('mode', NA)}"),
    ("Verdict", _verdict),
    ("Chunks received", lambda d: _pair(d, "chunks.received", "chunks.total", _count)),
    ("First-pass loss", _at("loss.rate", _pct)),
    ("First-pass loss, 95% CI (Wilson)", _ci),
    ("Missing after the first pass", _at("loss.first_pass_missing", _count)),
    ("Missing at the end", _at("chunks.missing", _count)),
    ("Retransmitted", _at("chunks.retransmitted", _count)),
    ("Duplicates", _at("chunks.duplicates", _count)),
    ("Out of order", _at("chunks.out_of_order", _count)),
    ("Loss bursts", _at("loss.bursts.count", _count)),
    ("Mean burst length (chunks)", _mean_burst),
    ("Longest burst (chunks)", _at("loss.bursts.max_length", _count)),
    ("Gilbert p (received → lost)", _at("loss.gilbert.p", _real)),
    ("Gilbert r (lost → received)", _at("loss.gilbert.r", _real)),
    ("Gilbert steady-state loss", _at("loss.gilbert.steady_state_loss", _pct)),
    ("Gilbert-Elliott h / k", lambda d: _pair(d, "loss.gilbert.h", "loss.gilbert.k", _real)),
    (
        "RFC 3611 burst / gap density",
        lambda d: _pair(d, "loss.rfc3611.burst_density", "loss.rfc3611.gap_density", _pct),
    ),
    (
        "RFC 3611 burst / gap duration",
        lambda d: _pair(d, "loss.rfc3611.burst_duration_ms", "loss.rfc3611.gap_duration_ms", _ms),
    ),
    ("Reordered (RFC 4737)", _reordered),
    ("Jitter (RFC 3550)", _at("timing.jitter_ms", _ms)),
    ("PDV p50 / p95 / p99 (RFC 5481)", _pdv),
    ("Duration", _at("timing.duration_s", _seconds)),
    ("Goodput", _at("timing.goodput_bps", _rate)),
)


def key_figures(doc: Report) -> list[tuple[str, str]]:
    """The report's key figures as ``(label, formatted value)`` rows (``—`` where absent)."""
    return [(label, fmt(doc)) for label, fmt in FIGURES]


def report_stem(doc: Report) -> str:
    """A safe file stem for a report's renders: ``NAME-TRANSPORT-MODE[-SESSION]``."""
    parts = [str(lookup(doc, "file.name") or "transfer"), doc.get("transport"), doc.get("mode")]
    parts.append(doc.get("session_id"))
    return safe_name("-".join(str(p) for p in parts if p))


# --------------------------------------------------------------------------------------------
# Output helpers


def _write(path: Path, data: str | bytes) -> Path:
    with map_os_errors(TransportError, f"cannot write {path}"):
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
    return path


def _plots(doc: Report) -> list[Plot]:
    from udpxfer.reports import plots  # lazy: matplotlib only when something is drawn

    return plots.report_plots(doc)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)
    return lines


def _md_plots(plots: Sequence[Plot], out_dir: Path, stem: str) -> list[str]:
    """Write each plot as ``STEM-SLUG.png`` beside the Markdown; return the Markdown lines."""
    lines: list[str] = []
    for plot in plots:
        name = f"{stem}-{plot.slug}.png"
        _write(out_dir / name, plot.png)
        lines += [f"### {plot.title}", "", f"![{plot.title}]({name})", ""]
    return lines


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _html_plots(plots: Sequence[Plot]) -> str:
    return "\n".join(
        f'<figure><img src="{_data_uri(p.png, "image/png")}" alt="{html.escape(p.title)}">'
        f"<figcaption>{html.escape(p.title)}</figcaption></figure>"
        for p in plots
    )


_CSS: Final = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;
margin:0;background:#f6f7f9}
main{max-width:1000px;margin:0 auto;padding:1.5rem 1.25rem 3rem;background:#fff}
h1{font-size:1.5rem;margin:0 0 .5rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #dde2ea}
pre{background:#f1f3f6;padding:.75rem;overflow-x:auto;font-size:13px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{border:1px solid #dde2ea;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#eef1f5}td:not(:first-child){font-variant-numeric:tabular-nums}
figure{margin:1.25rem 0}figure img{max-width:100%;height:auto;border:1px solid #eef1f5}
figcaption{font-size:13px;color:#566}
.verdict{font-weight:600;padding:.4rem .6rem;display:inline-block;border-radius:4px}
.ok{background:#e3f4e8;color:#14532d}.bad{background:#fdecea;color:#8a1c12}
.images{display:flex;gap:1rem;flex-wrap:wrap}.images figure{flex:1 1 45%;margin:0}
footer{margin-top:2.5rem;font-size:12px;color:#788}
"""


def _html_page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n<footer>udpxfer {__version__}: self-contained page, no network needed."
        "</footer>\n</main>\n</body>\n</html>\n"
    )


def _image_panel(images: tuple[Path, Path]) -> str:
    """The original file beside what arrived (``.partial``), both embedded as data URIs."""
    blobs: list[bytes | None] = []
    for path in images:
        with map_os_errors(UsageError, f"cannot read image {path}"):
            size = path.stat().st_size
            blobs.append(path.read_bytes() if size <= MAX_EMBED_BYTES else None)
    original = blobs[0] or b""
    mime = next((m for magic, m in _MAGIC if original.startswith(magic)), "image/jpeg")
    figures = []
    for path, blob, caption in zip(images, blobs, ("original", "received"), strict=True):
        name = html.escape(path.name)
        if blob is None:
            inner = f"<p>{name} is larger than {format_size(MAX_EMBED_BYTES)}: not embedded.</p>"
        else:
            inner = f'<img src="{_data_uri(blob, mime)}" alt="{caption}: {name}">'
        figures.append(f"<figure>{inner}<figcaption>{caption}: {name}</figcaption></figure>")
    return (
        "<h2>Images</h2>\n<p>What was sent beside what arrived. A received file with holes may "
        "not decode: that is the point.</p>\n" + f'<div class="images">{"".join(figures)}</div>'
    )


# --------------------------------------------------------------------------------------------
# Public API


def render_markdown(report: Report, out_dir: Path, *, stem: str | None = None) -> Path:
    """Write ``STEM.md`` (summary, key-figure table) and its ``STEM-*.png`` plots to ``out_dir``.

    Raises:
        UsageError: ``out_dir`` cannot be created or written.
        TransportError: a file cannot be written.
    """
    ensure_writable_dir(out_dir)
    stem = safe_name(stem) if stem else report_stem(report)
    lines = [f"# udpxfer report: {lookup(report, 'file.name')}", "", f"**{_verdict(report)}**", ""]
    lines += ["```", *summary_lines(dict(report)), "```", "", "## Key figures", ""]
    lines += _md_table(("Figure", "Value"), key_figures(report))
    plots = _plots(report)
    if plots:
        lines += ["", "## Plots", ""]
        lines += _md_plots(plots, out_dir, stem)
    return _write(out_dir / f"{stem}.md", "\n".join(lines).rstrip() + "\n")


def render_html(
    report: Report,
    out_dir: Path,
    images: tuple[Path, Path] | None = None,
    *,
    stem: str | None = None,
) -> Path:
    """Write ``STEM.html``: one self-contained page, plots and images embedded as data URIs.

    Args:
        report: the JSON report document.
        out_dir: where the page goes (created if needed).
        images: ``(original file, received file)`` to show side by side, e.g. a JPEG and its
            ``.partial``.
        stem: file name stem (default: ``report_stem(report)``).

    Raises:
        UsageError: ``out_dir`` cannot be created or an image cannot be read.
        TransportError: the page cannot be written.
    """
    ensure_writable_dir(out_dir)
    stem = safe_name(stem) if stem else report_stem(report)
    panel = _image_panel(images) if images is not None else None  # read before drawing
    esc = html.escape
    ok = bool(lookup(report, "file.verified"))
    body = [
        f"<h1>udpxfer report: {esc(str(lookup(report, 'file.name')))}</h1>",
        f'<p class="verdict {"ok" if ok else "bad"}">{esc(_verdict(report))}</p>',
        f"<pre>{esc(chr(10).join(summary_lines(dict(report))))}</pre>",
        "<h2>Key figures</h2>",
        _html_table(("Figure", "Value"), key_figures(report)),
    ]
    plots = _plots(report)
    if plots:
        body += ["<h2>Plots</h2>", _html_plots(plots)]
    if panel is not None:
        body.append(panel)
    title = f"udpxfer report: {lookup(report, 'file.name')}"
    return _write(out_dir / f"{stem}.html", _html_page(title, "\n".join(body)))


def comparison_labels(reports: Sequence[Report]) -> list[str]:
    """Column labels ``TRANSPORT/MODE``, numbered where two reports would share one."""
    base = [f"{r.get('transport', '?')}/{r.get('mode', '?')}" for r in reports]
    return [f"{b} #{i + 1}" if base.count(b) > 1 else b for i, b in enumerate(base)]


def render_comparison(
    reports: Sequence[Report],
    out_dir: Path,
    fmt: Format = "html",
    *,
    labels: Sequence[str] | None = None,
    stem: str | None = None,
) -> Path:
    """Side-by-side comparison of reports: one key-figure column each, overlaid plots.

    Args:
        reports: two or more report documents (e.g. the same file over TCP and over UDP).
        out_dir: where the output goes; Markdown writes its PNGs beside it.
        fmt: ``"md"`` or ``"html"``.
        labels: column titles (default: ``comparison_labels``).
        stem: file name stem (default: ``compare-`` and the first report's stem).

    Raises:
        UsageError: fewer than two reports, mismatched labels, a bad format or ``out_dir``.
        TransportError: a file cannot be written.
    """
    if len(reports) < 2:
        raise UsageError("a comparison needs at least two reports")
    if fmt not in ("md", "html"):
        raise UsageError(f"unknown format {fmt!r}: expected md or html")
    names = list(labels) if labels is not None else comparison_labels(reports)
    if len(names) != len(reports):
        raise UsageError(f"{len(names)} labels for {len(reports)} reports")
    ensure_writable_dir(out_dir)
    stem = safe_name(stem or f"compare-{report_stem(reports[0])}")
    columns = [key_figures(r) for r in reports]
    rows = [[label, *(col[i][1] for col in columns)] for i, (label, _) in enumerate(FIGURES)]
    header = ["Figure", *names]

    from udpxfer.reports import plots as plotting  # lazy: matplotlib only when something is drawn

    plots = plotting.comparison_plots(list(zip(names, reports, strict=True)))
    title = f"udpxfer comparison: {' vs '.join(names)}"
    if fmt == "md":
        lines = [f"# {title}", "", *_md_table(header, rows)]
        if plots:
            lines += ["", "## Plots", "", *_md_plots(plots, out_dir, stem)]
        return _write(out_dir / f"{stem}.md", "\n".join(lines).rstrip() + "\n")
    body = [f"<h1>{html.escape(title)}</h1>", _html_table(header, rows)]
    if plots:
        body += ["<h2>Plots</h2>", _html_plots(plots)]
    return _write(out_dir / f"{stem}.html", _html_page(title, "\n".join(body)))
