"""``compare.json``, ``compare.md`` and ``compare.html``: the document and its plots.

``build_document`` turns the runs into the ``udpxfer.compare/1`` document (DESIGN.md, "The
comparison"); everything after that reads only the document, so a saved ``compare.json``
can be rendered again. Plots use matplotlib's object API, as ``plots.py`` does.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import numpy as np

from udpxfer import __version__
from udpxfer.lab.compare.plan import (
    TCP_HEADERS_BYTES,
    Point,
    effective_loss,
    mathis_bps,
    summarise,
)
from udpxfer.lab.compare.plots import compare_plots
from udpxfer.lab.compare.run import CompareConfig
from udpxfer.paths import unique_path
from udpxfer.reports.output import write_report
from udpxfer.reports.plots import Plot
from udpxfer.reports.render import _data_uri, _html_page, _html_table, _md_table
from udpxfer.units import format_rate

SCHEMA: Final = "udpxfer.compare/1"


def _model(
    point: Point, latency: dict[str, Any] | None, runs: Sequence[dict[str, Any]], mtu: int
) -> dict[str, Any]:
    """The Mathis reference for one point: the lab's measured RTT and the set loss."""
    udp = (latency or {}).get("udp_echo") or {}
    rtt_ms = udp.get("median_ms")
    rtt_s = None if rtt_ms is None else rtt_ms / 1e3
    mss = next(
        (
            r["tcp_info"]["snd_mss"]
            for r in runs
            if r.get("tcp_info") and r["tcp_info"].get("snd_mss")
        ),
        mtu - TCP_HEADERS_BYTES,
    )
    loss = effective_loss(point.forward)
    srtts = [r["tcp_info"]["rtt_us"] / 1e6 for r in runs if (r.get("tcp_info") or {}).get("rtt_us")]
    srtt = float(np.median(srtts)) if srtts else None
    return {
        "mathis_bps": mathis_bps(mss, rtt_s, loss),
        "rtt_s": rtt_s,
        "rtt_source": "median UDP echo round trip through the lab",
        "loss": loss,
        "mss_bytes": mss,
        "formula": "MSS/RTT * sqrt(3/2)/sqrt(p) (Mathis et al. 1997)",
        # The same model at the RTT TCP itself measured (TCP_INFO smoothed RTT, median of runs).
        "tcp_srtt_s": srtt,
        "mathis_bps_at_tcp_srtt": mathis_bps(mss, srtt, loss),
    }


def build_document(
    config: CompareConfig,
    lab: dict[str, Any],
    direction: str,
    runs: Sequence[dict[str, Any]],
    latency: Sequence[dict[str, Any]],
    *,
    started_unix_s: float,
    interrupted: bool = False,
) -> dict[str, Any]:
    """The ``udpxfer.compare/1`` document."""
    points = config.points
    mtu = int(lab.get("mtu", 1500))
    per_point = []
    for point in points:
        mine = [r for r in runs if r["point"] == point.index]
        lat = next((entry for entry in latency if entry["point"] == point.index), None)
        per_point.append(
            {
                **point.as_dict(),
                "model": _model(point, lat, mine, mtu),
                "latency": lat,
                "summary": summarise(mine, config.transports),
            }
        )
    base = per_point[0]
    return {
        "schema": SCHEMA,
        "udpxfer": __version__,
        "created_unix_s": started_unix_s,
        "complete": not interrupted,
        "file": {"name": config.file.name, "size": config.file.stat().st_size},
        "impairment": {
            "direction": direction,
            "forward": asdict(points[0].forward),
            "reverse": asdict(points[0].reverse),
            "forward_text": points[0].forward.describe(),
            "reverse_text": points[0].reverse.describe(),
        },
        "lab": lab,
        "transports": [t.name for t in config.transports],
        "runs_per_transport": config.runs,
        "udp_rate": config.udp_rate,
        "runs": list(runs),
        "latency": base["latency"],
        "model": base["model"],
        "summary": base["summary"],
        "sweep": per_point if points[0].param is not None else [],
    }


# ------------------------------------------------------------------------ text


def _rate(value: float | None) -> str:
    return "-" if value is None else format_rate(value)


def _num(value: float | None, fmt: str = ".3g", unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.3g}%"


SUMMARY_HEADER = (
    "transport",
    "runs ok",
    "goodput median",
    "goodput min-max",
    "time (s)",
    "wire B / B",
    "loss seen",
    "retransmitted",
    "TCP / Mathis",
)


def summary_rows(point: dict[str, Any]) -> list[list[str]]:
    """One row per transport of a point's summary."""
    mathis = point["model"]["mathis_bps"]
    rows = []
    for row in point["summary"]:
        g = row["goodput_bps"]
        tcp = row["mode"] == "stream"
        ratio = None if not tcp or mathis is None or g["median"] is None else g["median"] / mathis
        rows.append(
            [
                row["label"],
                f"{row['verified'] if row['mode'] != 'blast' else row['complete']}/{row['runs']}",
                _rate(g["median"]),
                f"{_rate(g['min'])} - {_rate(g['max'])}",
                _num(row["duration_s"]["median"], ".2f"),
                _num(row["wire_per_byte"]["median"], ".3f"),
                _pct(row["loss_seen"]["median"]),
                _num(row["retransmitted"]["median"], ".0f"),
                _num(ratio, ".2f", "x"),
            ]
        )
    return rows


LATENCY_HEADER = ("echo", "probes", "received", "min ms", "median ms", "avg ms", "max ms")


def latency_rows(latency: dict[str, Any] | None) -> list[list[str]]:
    """TCP echo vs UDP echo round trips."""
    if not latency:
        return []
    rows = []
    for key, label in (("tcp_echo", "TCP echo"), ("udp_echo", "UDP echo")):
        s = latency[key]
        rows.append(
            [
                label,
                str(s["transmitted"]),
                str(s["received"]),
                *(_num(s[k], ".2f") for k in ("min_ms", "median_ms", "avg_ms", "max_ms")),
            ]
        )
    return rows


def model_line(model: dict[str, Any]) -> str:
    """``Mathis model: 3.4 Mbit/s for RTT 41.2 ms, p = 1%, MSS 1448 B``."""
    rtt = "-" if model["rtt_s"] is None else f"{model['rtt_s'] * 1e3:.1f} ms"
    value = _rate(model["mathis_bps"]) if model["mathis_bps"] else "undefined (no loss)"
    line = (
        f"Mathis model: {value} for RTT {rtt} (echo), p = {_pct(model['loss'])}, "
        f"MSS {model['mss_bytes']} B"
    )
    if model.get("mathis_bps_at_tcp_srtt"):
        line += (
            f"; {_rate(model['mathis_bps_at_tcp_srtt'])} at TCP's own smoothed RTT "
            f"{model['tcp_srtt_s'] * 1e3:.1f} ms"
        )
    return line


def sweep_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Sweep table: one row per point, median goodput per transport and the model."""
    labels = [row["label"] for row in doc["sweep"][0]["summary"]] if doc["sweep"] else []
    header = ["point", "RTT ms", *labels, "Mathis"]
    rows = []
    for point in doc["sweep"]:
        rtt = point["model"]["rtt_s"]
        rows.append(
            [
                point["label"],
                _num(None if rtt is None else rtt * 1e3, ".1f"),
                *(_rate(row["goodput_bps"]["median"]) for row in point["summary"]),
                _rate(point["model"]["mathis_bps"]),
            ]
        )
    return header, rows


# ------------------------------------------------------------------------ files


def _heading(doc: dict[str, Any]) -> list[str]:
    imp = doc["impairment"]
    lab = doc["lab"]
    return [
        f"File: {doc['file']['name']} ({doc['file']['size']} bytes); "
        f"{doc['runs_per_transport']} run(s) per transport",
        f"Impairment ({imp['direction']}): a->b {imp['forward_text']}; b->a {imp['reverse_text']}",
        f"Lab: {lab['backend']} backend, MTU {lab['mtu']}, TCP {lab.get('tcp_congestion')}, "
        f"seed {lab['seed']}",
    ]


def _summary_title(doc: dict[str, Any]) -> str:
    if doc["sweep"]:
        return f"Summary at the first point ({doc['sweep'][0]['label']}; the sweep follows)"
    return "Summary"


def render_markdown(
    doc: dict[str, Any], out_dir: Path, plots: Sequence[Plot], *, stem: str = "compare"
) -> str:
    """``compare.md`` (plots written beside it as PNG, named after its ``stem``)."""
    lines = ["# TCP vs UDP through one impairment", ""]
    lines += [f"- {line}" for line in _heading(doc)]
    if not doc["complete"]:
        lines += ["", "**Interrupted: the runs below are those that finished.**"]
    lines += ["", f"## {_summary_title(doc)}", "", model_line(doc["model"]), ""]
    lines += _md_table(SUMMARY_HEADER, summary_rows(doc["sweep"][0] if doc["sweep"] else doc))
    lines += ["", "## Latency (echo companions)", ""]
    lines += _md_table(LATENCY_HEADER, latency_rows(doc["latency"]))
    if doc["sweep"]:
        header, rows = sweep_rows(doc)
        lines += ["", "## Sweep", "", *_md_table(header, rows)]
    lines += ["", "## Plots", ""]
    for plot in plots:
        name = f"{stem}-{plot.slug}.png"
        (out_dir / name).write_bytes(plot.png)
        lines += [f"### {plot.title}", "", f"![{plot.title}]({name})", ""]
    return "\n".join(lines) + "\n"


def render_html(doc: dict[str, Any], plots: Sequence[Plot]) -> str:
    """``compare.html``: self-contained, the plots inline."""
    esc = html.escape
    body = ["<h1>TCP vs UDP through one impairment</h1>"]
    body += ["<ul>" + "".join(f"<li>{esc(line)}</li>" for line in _heading(doc)) + "</ul>"]
    if not doc["complete"]:
        body.append('<p class="verdict bad">Interrupted: only the finished runs are shown.</p>')
    body += [f"<h2>{esc(_summary_title(doc))}</h2>", f"<p>{esc(model_line(doc['model']))}</p>"]
    body.append(_html_table(SUMMARY_HEADER, summary_rows(doc["sweep"][0] if doc["sweep"] else doc)))
    body += ["<h2>Latency (echo companions)</h2>"]
    body.append(_html_table(LATENCY_HEADER, latency_rows(doc["latency"])))
    if doc["sweep"]:
        header, rows = sweep_rows(doc)
        body += ["<h2>Sweep</h2>", _html_table(header, rows)]
    body.append("<h2>Plots</h2>")
    body += [
        f'<figure><img src="{_data_uri(p.png, "image/png")}" alt="{esc(p.title)}">'
        f"<figcaption>{esc(p.title)}</figcaption></figure>"
        for p in plots
    ]
    return _html_page("udpxfer compare", "\n".join(body))


def write_outputs(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``compare.json``, ``compare.md`` (+ PNGs) and ``compare.html``; their paths.

    A directory that holds an earlier comparison keeps it: the new files share the first free
    ``compare-N`` stem (``compare-1.json``, ``compare-1.md``, ``compare-1-<plot>.png``...).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = compare_plots(doc)
    stem = unique_path(out_dir, "compare", also_free=(".json", ".md", ".html")).name
    json_path = write_report(doc, out_dir / f"{stem}.json")
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(render_markdown(doc, out_dir, plots, stem=stem), encoding="utf-8")
    html_path = out_dir / f"{stem}.html"
    html_path.write_text(render_html(doc, plots), encoding="utf-8")
    return [json_path, md_path, html_path]
