"""Matplotlib figures of a transfer report (Agg backend, PNG bytes out).

Imported lazily by ``render.py`` so that ``import udpxfer`` never loads matplotlib. Figures are
built with the object API (``Figure`` + Agg canvas), never ``pyplot``: no global state, no GUI.
The numbers come from the report and, when given, its trace through ``analysis.py``; this module
only draws them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from udpxfer import analysis as an
from udpxfer.render import lookup
from udpxfer.trace import Trace

Report = Mapping[str, Any]
F64 = npt.NDArray[np.float64]

DPI: Final = 100
WIDE: Final = (9.0, 3.4)
MAP_CELLS: Final = 1 << 20  # the loss map shows at most this many cells (worst chunk wins)
STRIP_BINS: Final = 400  # loss strip columns: fewer than the axes' pixels, so none vanishes
SCATTER_POINTS: Final = 50_000  # delay scatter is thinned to about this many points
RECEIVED, REPAIRED, MISSING, EMPTY = "#cfe0ee", "#f4a261", "#c1121f", "#ffffff"


@dataclass(frozen=True, slots=True)
class Plot:
    """One rendered figure: a file-name slug, a title (also the alt text) and PNG bytes."""

    slug: str
    title: str
    png: bytes


def _figure(size: tuple[float, float] = WIDE) -> Figure:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _series(doc: Report, key: str) -> F64:
    """A ``series`` column as floats, ``None`` -> NaN (empty when absent)."""
    values = lookup(doc, f"series.{key}") or []
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")


# --------------------------------------------------------------------------------------------
# One report


def chunk_status(doc: Report, trace: Trace | None = None) -> npt.NDArray[np.int8] | None:
    """Per chunk: 0 received on the first pass, 1 lost then repaired, 2 still missing."""
    total = int(lookup(doc, "chunks.total") or 0)
    if total <= 0:
        return None
    if trace is not None and trace.chunk_count == total:
        lost = an.lost_chunks(trace)
    else:
        lost = an.ranges_to_mask(doc.get("first_pass_gaps") or [], total)
    status = lost.astype(np.int8)
    status[an.ranges_to_mask(doc.get("gaps") or [], total)] = 2
    return status


def loss_map(doc: Report, trace: Trace | None = None) -> Plot | None:
    """Raster of every chunk, row by row: received, lost on the first pass, still missing."""
    status = chunk_status(doc, trace)
    if status is None:
        return None
    total = status.size
    group = max(1, math.ceil(total / MAP_CELLS))
    cells = math.ceil(total / group)
    padded = np.full(cells * group, 0, dtype=np.int8)
    padded[:total] = status
    worst = padded.reshape(cells, group).max(axis=1)
    width = min(cells, max(1, math.ceil(math.sqrt(cells * 4))))
    rows = math.ceil(cells / width)
    row_chunks = width * group
    grid = np.full(rows * width, 3, dtype=np.int8)
    grid[:cells] = worst
    fig = _figure((9.0, 4.2))
    ax = fig.add_subplot()
    ax.imshow(
        grid.reshape(rows, width),
        cmap=ListedColormap([RECEIVED, REPAIRED, MISSING, EMPTY]),
        norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5, 3.5], 4),
        interpolation="nearest",
        aspect="auto",
        extent=(0, row_chunks, rows * row_chunks, 0),
    )
    counts = np.bincount(status, minlength=3)
    handles = [Patch(color=RECEIVED, label=f"received on first pass ({counts[0]})")]
    if counts[1] or doc.get("mode") == "reliable":
        handles.append(Patch(color=REPAIRED, label=f"lost, then repaired ({counts[1]})"))
    handles.append(Patch(color=MISSING, label=f"missing at the end ({counts[2]})"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3)
    per_cell = f", {group} chunks per cell (worst shown)" if group > 1 else ""
    ax.set_title(f"Loss map over chunk index: {total} chunks, {row_chunks} per row{per_cell}")
    ax.set_yticks(np.arange(0, rows, max(1, math.ceil(rows / 8))) * row_chunks)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("chunk index within the row")
    ax.set_ylabel("chunk index at row start")
    return Plot("loss-map", "Loss map over chunk index", _png(fig))


def loss_over_time(doc: Report, trace: Trace | None = None) -> Plot | None:
    """First-pass loss rate per time bin, with a fine strip of lost chunks when a trace is given."""
    t, rate = _series(doc, "time_s"), _series(doc, "loss_rate")
    if not t.size or np.all(np.isnan(rate)):
        return None
    send_ns = an.trace_send_times(trace) if trace is not None else None
    fig = _figure((9.0, 4.0) if send_ns is not None else WIDE)
    if send_ns is not None and trace is not None:
        ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=(4, 1))
        times = send_ns[:-1] / an.NS_PER_S
        lost = an.lost_chunks(trace).astype(np.float64)
        columns = min(STRIP_BINS, times.size)
        edges = np.linspace(float(times.min()), float(times.max()) + 1e-9, columns + 1)
        sent, _ = np.histogram(times, bins=edges)
        dropped, _ = np.histogram(times, bins=edges, weights=lost)
        fraction = np.full(columns, np.nan)
        np.divide(dropped, sent, out=fraction, where=sent > 0)
        strip.imshow(
            fraction[None, :] * 100,
            cmap="Reds",
            vmin=0,
            vmax=100,
            aspect="auto",
            interpolation="nearest",
            extent=(float(edges[0]), float(edges[-1]), 0, 1),
        )
        strip.set_yticks([])
        strip.set_ylabel("lost", rotation=0, ha="right", va="center")
        strip.set_xlabel("time since the first datagram (s), chunks at their send time")
    else:
        ax = fig.add_subplot()
        ax.set_xlabel("time since the first datagram (s), chunks at their send time")
    width = float(lookup(doc, "series.bin_s") or 0.0)
    ax.plot(t, rate * 100, drawstyle="steps-post", color=MISSING, label="first-pass loss per bin")
    overall = lookup(doc, "loss.rate")
    if overall is not None:
        ax.axhline(overall * 100, color="0.4", linestyle="--", label=f"overall {overall:.3%}")
    ax.set_ylabel("first-pass loss (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"First-pass loss over time ({width * 1000:g} ms bins)")
    _legend(ax)
    return Plot("loss-time", "First-pass loss over time", _png(fig))


def burst_histogram(doc: Report) -> Plot | None:
    """Loss-burst lengths against the geometric law of a Bernoulli channel with the same loss."""
    histogram = lookup(doc, "loss.bursts.histogram") or []
    rate = lookup(doc, "loss.rate")
    if not histogram or rate is None:
        return None
    lengths, counts = np.asarray(histogram, dtype=np.int64).T
    fig = _figure()
    ax = fig.add_subplot()
    ax.bar(lengths, counts, width=0.8, color=MISSING, alpha=0.8, label="observed bursts")
    span = np.arange(1, int(lengths.max()) + 1, dtype=np.int64)
    expected = int(counts.sum()) * an.geometric_run_pmf(float(rate), span)
    shown = expected >= 1e-3
    ax.plot(
        span[shown],
        expected[shown],
        "o-",
        color="0.2",
        markersize=3,
        label=f"Bernoulli channel at {rate:.3%}: (1-q)q^(l-1)",
    )
    ax.set_yscale("log")
    ax.set_xlabel("burst length (consecutive lost chunks)")
    ax.set_ylabel("bursts (count, log scale)")
    ax.set_title("Loss-burst lengths vs a memoryless channel with the same loss rate")
    _legend(ax)
    return Plot("bursts", "Burst-length histogram", _png(fig))


def goodput_over_time(doc: Report) -> Plot | None:
    """Goodput (new unique bytes per bin) over time, with the transfer's average."""
    t, goodput = _series(doc, "time_s"), _series(doc, "goodput_bps")
    if not t.size:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(t, goodput / 1e6, drawstyle="steps-post", label="goodput per bin")
    average = lookup(doc, "timing.goodput_bps")
    if average:
        ax.axhline(average / 1e6, color="0.4", linestyle="--", label=f"average {average / 1e6:.2f}")
    width = float(lookup(doc, "series.bin_s") or 0.0)
    ax.set_title(f"Goodput over time (new unique bytes, {width * 1000:g} ms bins)")
    ax.set_xlabel("time since the first datagram (s)")
    ax.set_ylabel("goodput (Mbit/s)")
    ax.set_ylim(bottom=0)
    _legend(ax)
    return Plot("goodput", "Goodput over time", _png(fig))


def delay_over_time(doc: Report, trace: Trace | None = None) -> Plot | None:
    """Packet delay variation (RFC 5481) and RFC 3550 jitter over time."""
    t = _series(doc, "time_s")
    if not t.size and (trace is None or len(trace) == 0):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    if trace is not None and len(trace):
        step = max(1, math.ceil(len(trace) / SCATTER_POINTS))
        pdv = an.delay_variation_ns(trace.sent_ns, trace.arrival_ns)[::step] / an.NS_PER_MS
        when = (trace.arrival_ns[::step] - trace.started_ns) / an.NS_PER_S
        thinned = f", 1 in {step}" if step > 1 else ""
        ax.plot(
            when,
            pdv,
            linestyle="none",
            marker=".",
            markersize=2,
            alpha=0.35,
            rasterized=True,
            label=f"PDV per datagram{thinned}",
        )
    if t.size:
        ax.plot(t, _series(doc, "pdv_max_ms"), drawstyle="steps-post", label="PDV max per bin")
        ax.plot(t, _series(doc, "jitter_ms"), color="0.1", label="RFC 3550 jitter")
    ax.set_title("Delay variation over time (PDV = delay - min delay, RFC 5481)")
    ax.set_xlabel("arrival time since the first datagram (s)")
    ax.set_ylabel("delay variation (ms)")
    ax.set_ylim(bottom=0)
    _legend(ax)
    return Plot("delay", "Delay variation over time", _png(fig))


def report_plots(doc: Report, trace: Trace | None = None) -> list[Plot]:
    """Every figure the report has data for, in reading order."""
    plots = (
        loss_map(doc, trace),
        loss_over_time(doc, trace),
        burst_histogram(doc),
        goodput_over_time(doc),
        delay_over_time(doc, trace),
    )
    return [plot for plot in plots if plot is not None]


# --------------------------------------------------------------------------------------------
# Several reports overlaid


def _overlay(
    reports: Sequence[tuple[str, Report]],
    column: str,
    scale: float,
    title: str,
    ylabel: str,
    slug: str,
) -> Plot | None:
    """One line per report of a ``series`` column against time."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, doc in reports:
        t, values = _series(doc, "time_s"), _series(doc, column)
        if t.size and not np.all(np.isnan(values)):
            ax.plot(t, values * scale, drawstyle="steps-post", label=label)
    if not ax.lines:
        return None
    ax.set_title(title)
    ax.set_xlabel("time since the first datagram (s)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    _legend(ax)
    return Plot(slug, title, _png(fig))


def _burst_overlay(reports: Sequence[tuple[str, Report]]) -> Plot | None:
    fig = _figure()
    ax = fig.add_subplot()
    for label, doc in reports:
        histogram = lookup(doc, "loss.bursts.histogram") or []
        if histogram:
            lengths, counts = np.asarray(histogram, dtype=np.int64).T
            ax.plot(lengths, counts / counts.sum(), "o-", markersize=3, label=label)
    if not ax.lines:
        return None
    ax.set_yscale("log")
    ax.set_title("Loss-burst length distributions")
    ax.set_xlabel("burst length (consecutive lost chunks)")
    ax.set_ylabel("fraction of bursts (log scale)")
    _legend(ax)
    return Plot("bursts", "Loss-burst length distributions", _png(fig))


def comparison_plots(reports: Sequence[tuple[str, Report]]) -> list[Plot]:
    """Overlaid figures of several labelled reports (only those some report has data for)."""
    plots = (
        _overlay(reports, "goodput_bps", 1e-6, "Goodput over time", "goodput (Mbit/s)", "goodput"),
        _overlay(
            reports, "loss_rate", 100, "First-pass loss over time", "first-pass loss (%)", "loss"
        ),
        _burst_overlay(reports),
        _overlay(
            reports, "pdv_max_ms", 1, "Delay variation over time (PDV max per bin)", "ms", "delay"
        ),
    )
    return [plot for plot in plots if plot is not None]
