"""The plots of a comparison (``compare.json`` in, PNG bytes out; matplotlib's object API).

Axes as a network engineer reads them: goodput in Mbit/s on a log scale, loss as a
percentage on a log scale (loss 0 drawn a decade left of the smallest), RTT in ms, every
transport with its spread over runs, and the Mathis model of TCP as a labelled dashed curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogLocator

from udpxfer.lab.compare.plan import mathis_bps
from udpxfer.reports.plots import Plot, _figure, _png

COLOURS: Final = {"stream": "#1f5fa8", "reliable": "#2a9d4b", "blast": "#e07b00"}
MARKERS: Final = {"stream": "o", "reliable": "s", "blast": "^"}
MATHIS_COLOUR: Final = "#555555"


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
