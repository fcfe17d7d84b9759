"""``compare.json``, ``compare.md`` and ``compare.html``: the document and its plots.

``build_document`` turns the runs into the ``udpxfer.compare/1`` document (DESIGN.md, "The
comparison"); everything after that reads only the document, so a saved ``compare.json``
can be rendered again. Plots use matplotlib's object API, as ``plots.py`` does.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogLocator

from udpxfer import __version__
from udpxfer.lab.compare import (
    TCP_HEADERS_BYTES,
    CompareConfig,
    Point,
    effective_loss,
    mathis_bps,
    summarise,
)
from udpxfer.plots import Plot, _figure, _png
from udpxfer.render import _data_uri, _html_page, _html_table, _md_table
from udpxfer.report import write_report
from udpxfer.units import format_rate

SCHEMA: Final = "udpxfer.compare/1"
COLOURS: Final = {"stream": "#1f5fa8", "reliable": "#2a9d4b", "blast": "#e07b00"}
MARKERS: Final = {"stream": "o", "reliable": "s", "blast": "^"}
MATHIS_COLOUR: Final = "#555555"


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


# ------------------------------------------------------------------------ plots


def _mbit(value: float | None) -> float:
    return math.nan if value is None else value / 1e6


def _goodput_bars(doc: dict[str, Any]) -> Plot | None:
    rows = [r for r in doc["summary"] if r["goodput_bps"]["median"] is not None]
    if not rows:
        return None
    fig = _figure((8.0, 3.6))
    ax = fig.add_subplot()
    xs = range(len(rows))
    med = [_mbit(r["goodput_bps"]["median"]) for r in rows]
    lo = [m - _mbit(r["goodput_bps"]["min"]) for m, r in zip(med, rows, strict=True)]
    hi = [_mbit(r["goodput_bps"]["max"]) - m for m, r in zip(med, rows, strict=True)]
    ax.bar(xs, med, color=[COLOURS[r["mode"]] for r in rows], width=0.6)
    ax.errorbar(xs, med, yerr=[lo, hi], fmt="none", ecolor="black", capsize=5, lw=1)
    for x, m in zip(xs, med, strict=True):
        ax.annotate(f"{m:.3g}", (x, m), textcoords="offset points", xytext=(10, 3), fontsize=9)
    mathis = doc["model"]["mathis_bps"]
    if mathis:
        ax.axhline(mathis / 1e6, color=MATHIS_COLOUR, ls="--", lw=1.2)
        ax.annotate(
            f"Mathis model for TCP: {mathis / 1e6:.3g} Mbit/s",
            (len(rows) - 0.5, mathis / 1e6),
            ha="right",
            va="bottom",
            fontsize=9,
            color=MATHIS_COLOUR,
        )
    ax.set_xticks(list(xs), [r["label"] for r in rows])
    ax.set_ylabel("goodput (Mbit/s)")
    ax.set_title(f"Goodput, median of {doc['runs_per_transport']} runs (bars: min-max)")
    ax.grid(axis="y", alpha=0.3)
    return Plot("goodput", "Goodput per transport", _png(fig))


def _cost_bars(doc: dict[str, Any]) -> Plot | None:
    rows = doc["summary"]
    if not any(r["duration_s"]["median"] for r in rows):
        return None
    fig = _figure((9.0, 3.2))
    left, right = fig.subplots(1, 2)
    labels = [r["label"] for r in rows]
    colours = [COLOURS[r["mode"]] for r in rows]
    times = [r["duration_s"]["median"] or math.nan for r in rows]
    wire = [r["wire_per_byte"]["median"] or math.nan for r in rows]
    left.bar(labels, times, color=colours, width=0.6)
    left.set_ylabel("completion time (s)")
    left.set_title("Completion time (median)")
    right.bar(labels, wire, color=colours, width=0.6)
    right.axhline(1.0, color=MATHIS_COLOUR, lw=1, ls=":")
    right.set_ylabel("bytes on the wire per byte delivered")
    right.set_title("Overhead (IP bytes both ways / file size)")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    return Plot("cost", "Completion time and bytes on the wire", _png(fig))


def _latency_plot(doc: dict[str, Any]) -> Plot | None:
    lat = doc.get("latency")
    if not lat or not (lat["udp_echo"]["received"] or lat["tcp_echo"]["received"]):
        return None
    fig = _figure((8.0, 2.6))
    ax = fig.add_subplot()
    for y, (key, label, colour) in enumerate(
        (("udp_echo", "UDP echo", COLOURS["reliable"]), ("tcp_echo", "TCP echo", COLOURS["stream"]))
    ):
        s = lat[key]
        if s["median_ms"] is None:
            continue
        ax.plot([s["min_ms"], s["max_ms"]], [y, y], color=colour, lw=2)
        ax.plot([s["median_ms"]], [y], "o", color=colour, ms=8, label=f"{label} median")
    ax.set_yticks([0, 1], ["UDP echo", "TCP echo"])
    ax.set_xlabel("round-trip time (ms); line: min-max, dot: median")
    ax.set_title("Echo round trips through the lab")
    ax.grid(axis="x", alpha=0.3)
    ax.margins(y=0.4)
    return Plot("latency", "Echo round trips: TCP vs UDP", _png(fig))


def _minor_label(value: float, _: object) -> str:
    """Label the 2x and 5x minor ticks of a log axis (plain numbers, no powers of ten)."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if round(lead) in (2, 5) and abs(lead - round(lead)) < 1e-6 else ""


def _percent(value: float, _: object) -> str:
    return "0" if value <= 0 else f"{value * 100:g}%"


def _sweep_plot(doc: dict[str, Any], param: str) -> Plot | None:
    """Goodput against the swept parameter, per transport, with the Mathis curve."""
    points = [
        p for p in doc["sweep"] if p["param"] == param and any(r["runs"] for r in p["summary"])
    ]  # an interrupted sweep: only the points measured
    if len(points) < 2:
        return None
    fig = _figure((8.0, 4.8))
    ax = fig.add_subplot()
    is_loss = param == "loss"
    x_of = _sweep_x(points, param)
    if x_of is None:
        return None
    xs = [x_of(p) for p in points]
    transports = [(r["mode"], r["label"]) for r in points[0]["summary"]]
    for i, (mode, label) in enumerate(transports):
        med, lo, hi, px = [], [], [], []
        for p, x in zip(points, xs, strict=True):
            g = p["summary"][i]["goodput_bps"]
            if g["median"] is None or g["median"] <= 0:
                continue
            px.append(x)
            med.append(g["median"] / 1e6)
            lo.append((g["median"] - g["min"]) / 1e6)
            hi.append((g["max"] - g["median"]) / 1e6)
        if med:
            ax.errorbar(px, med, yerr=[lo, hi], color=COLOURS[mode], marker=MARKERS[mode],
                        ms=7, capsize=4, lw=1.6, label=f"{label} (median, min-max)")  # fmt: skip
    _mathis_curve(ax, points, xs, is_loss)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_ylabel("goodput (Mbit/s, log scale)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
    if is_loss:
        ways = {"forward": "a->b", "reverse": "b->a", "both": "each way"}
        where_lost = ways.get(doc["impairment"]["direction"], "")
        ax.set_xlabel(f"packet loss probability, {where_lost} (log scale)")
        # Ticks at the swept values, labelled as typed; loss 0 sits a decade to the left.
        ordered = sorted(zip(xs, points, strict=True), key=lambda pair: pair[0])
        ax.set_xticks([x for x, _ in ordered], [_percent(p["value"], None) for _, p in ordered])
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    else:
        ax.set_xlabel("round-trip time measured through the lab (ms, log scale)")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    rtt, loss = doc["model"]["rtt_s"], points[0]["model"]["loss"]
    if is_loss:
        where = f"RTT {rtt * 1e3:.0f} ms" if rtt else ""
    else:
        where = f"packet loss {loss * 100:g}%" if loss else "no loss"
    ax.set_title(f"Goodput vs {param}" + (f" ({where})" if where else ""))
    ax.grid(which="major", alpha=0.35)
    ax.grid(which="minor", alpha=0.12)
    ax.legend(loc="best", fontsize="small")
    return Plot(f"sweep-{param}", f"Goodput against {param}, with the Mathis model", _png(fig))


def _sweep_x(points: Sequence[dict[str, Any]], param: str) -> Any:
    """The x position of each point: loss (0 drawn a decade below the smallest), or RTT ms."""
    if param == "loss":
        positive = [p["value"] for p in points if p["value"] > 0]
        if not positive:
            return None
        zero_at = min(positive) / 10
        return lambda p: p["value"] if p["value"] > 0 else zero_at
    if any(p["model"]["rtt_s"] is None for p in points):
        return None
    return lambda p: p["model"]["rtt_s"] * 1e3


def _mathis_curve(
    ax: Axes, points: Sequence[dict[str, Any]], xs: Sequence[float], is_loss: bool
) -> None:
    """The model as a smooth dashed curve over the swept range (where it is defined)."""
    models = [p["model"] for p in points]
    mss = models[0]["mss_bytes"]
    if is_loss:
        rtts = [m["rtt_s"] for m in models if m["rtt_s"]]
        losses = [p["value"] for p in points if p["value"] > 0]
        if not rtts or not losses:
            return
        rtt = float(np.median(rtts))
        grid = np.geomspace(min(losses), max(losses), 100)
        label = f"Mathis model, RTT {rtt * 1e3:.0f} ms, MSS {mss} B"
        values = [mathis_bps(mss, rtt, float(p)) for p in grid]
    else:
        loss = models[0]["loss"]
        if loss <= 0:
            ax.text(0.02, 0.02, "Mathis model undefined without loss", transform=ax.transAxes,
                    fontsize=9, color=MATHIS_COLOUR)  # fmt: skip
            return
        grid = np.geomspace(min(xs), max(xs), 100)
        label = f"Mathis model, p = {loss * 100:g}%, MSS {mss} B"
        values = [mathis_bps(mss, float(r) / 1e3, loss) for r in grid]
    ax.plot(grid, [(v or math.nan) / 1e6 for v in values], ls="--", color=MATHIS_COLOUR,
            lw=1.5, label=label)  # fmt: skip


def compare_plots(doc: dict[str, Any]) -> list[Plot]:
    """Every plot the document supports, sweeps first."""
    params = list(dict.fromkeys(p["param"] for p in doc["sweep"]))
    candidates = [_sweep_plot(doc, param) for param in params]
    candidates += [_goodput_bars(doc), _cost_bars(doc), _latency_plot(doc)]
    return [plot for plot in candidates if plot is not None]


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


def render_markdown(doc: dict[str, Any], out_dir: Path, plots: Sequence[Plot]) -> str:
    """``compare.md`` (plots written beside it as PNG)."""
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
        name = f"compare-{plot.slug}.png"
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
    """Write ``compare.json``, ``compare.md`` (+ PNGs) and ``compare.html``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = compare_plots(doc)
    json_path = write_report(doc, out_dir / "compare.json")
    md_path = out_dir / "compare.md"
    md_path.write_text(render_markdown(doc, out_dir, plots), encoding="utf-8")
    html_path = out_dir / "compare.html"
    html_path.write_text(render_html(doc, plots), encoding="utf-8")
    return [json_path, md_path, html_path]
