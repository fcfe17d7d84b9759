"""Matplotlib figures of a transfer report (Agg backend, PNG bytes out).

Imported lazily by ``render.py`` so that ``import udpxfer`` never loads matplotlib. Figures are
built with the object API (``Figure`` + Agg canvas), never ``pyplot``: no global state, no GUI.
The numbers come from the report alone (its ranges, time bins and histograms, which the receiver
keeps online in bounded memory); this module only draws them, per pixel or per bin.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from udpxfer.analysis.bursts import geometric_run_pmf
from udpxfer.analysis.loss import ranges_to_mask
from udpxfer.reports.document import Report, lookup

F64 = npt.NDArray[np.float64]

DPI: Final = 100
WIDE: Final = (9.0, 3.4)
# The loss map's cells: about one pixel each or more in a 9 x 4.2 inch figure at 100 dpi.
MAP_COLUMNS: Final = 640
MAP_ROWS: Final = 280
MAP_ASPECT: Final = 2.4  # columns per row of a map that fills the axes
BORDER_COLUMNS: Final = 80  # fewer columns than this: cells are wide enough for borders
LOSS_SHADES: Final = "Reds"
RECEIVED, REPAIRED, MISSING, EMPTY = "#cfe0ee", "#f4a261", "#c1121f", "#ffffff"
MAX_BARS: Final = 40  # burst-length bars before lengths are binned


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


def chunk_status(doc: Report) -> npt.NDArray[np.int8] | None:
    """Per chunk: 0 received on the first pass, 1 lost then repaired, 2 still missing."""
    total = int(lookup(doc, "chunks.total") or 0)
    if total <= 0:
        return None
    lost = ranges_to_mask(doc.get("first_pass_gaps") or [], total)
    status = lost.astype(np.int8)
    status[ranges_to_mask(doc.get("gaps") or [], total)] = 2
    return status


def _bounds(ranges: Sequence[Sequence[int]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Inclusive ranges as sorted, merged ``(firsts, ends)`` (``end`` = last + 1)."""
    pairs = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    if not pairs.size:
        return pairs[:, 0], pairs[:, 1]
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    firsts, ends = pairs[:, 0], np.maximum.accumulate(pairs[:, 1] + 1)
    new = np.concatenate(([True], firsts[1:] > ends[:-1]))
    groups = np.flatnonzero(new)
    last_of = np.concatenate((groups[1:] - 1, [firsts.size - 1]))
    return firsts[groups], ends[last_of]


def _covered_below(
    firsts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64], edges: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """How many indexes below each edge the disjoint sorted ranges ``[first, end)`` cover."""
    before = np.concatenate(([0], np.cumsum(ends - firsts)))
    whole = np.searchsorted(ends, edges, side="right")  # ranges ending at or below the edge
    partial = np.zeros(edges.size, dtype=np.int64)
    inside = whole < firsts.size
    at = whole[inside]
    partial[inside] = np.clip(edges[inside] - firsts[at], 0, None)
    covered: npt.NDArray[np.int64] = before[whole] + partial
    return covered


def lost_per_cell(doc: Report, total: int, group: int) -> tuple[F64, int, int]:
    """Share of chunks lost on the first pass or still missing in each cell of ``group``
    chunks, computed from the report's ranges (no array of one value per chunk), and the
    counts of chunks lost and still missing."""
    union = _bounds([*(doc.get("first_pass_gaps") or []), *(doc.get("gaps") or [])])
    missing = _bounds(doc.get("gaps") or [])
    cells = math.ceil(total / group)
    edges = np.minimum(np.arange(cells + 1, dtype=np.int64) * group, total)
    covered = np.diff(_covered_below(*union, edges)).astype(np.float64)
    share = covered / np.diff(edges)
    lost = int(_covered_below(*union, np.array([total]))[0])
    still = int(_covered_below(*missing, np.array([total]))[0])
    return share, lost, still


_WHOLE = FuncFormatter(lambda value, _: f"{value:,.0f}")


def _map_shape(cells: int) -> tuple[int, int]:
    """(columns, rows) of a loss map of ``cells`` cells, about as wide as MAP_ASPECT says."""
    columns = max(1, min(MAP_COLUMNS, math.ceil(math.sqrt(cells * MAP_ASPECT))))
    return columns, math.ceil(cells / columns)


def loss_map(doc: Report) -> Plot | None:
    """Every chunk, row by row: one cell per chunk while they fit the pixels (with borders when
    cells are large), else one cell per group of chunks coloured by the share lost in it (from
    the report's ranges: a map of 10^8 chunks costs what one of 10^5 does)."""
    total = int(lookup(doc, "chunks.total") or 0)
    if total <= 0:
        return None
    group = max(1, math.ceil(total / (MAP_COLUMNS * MAP_ROWS)))
    cells = math.ceil(total / group)
    columns, rows = _map_shape(cells)
    row_chunks = columns * group
    fig = _figure((9.0, 4.2))
    ax = fig.add_subplot()
    extent = (0, row_chunks, rows * row_chunks, 0)
    if group == 1:
        status = chunk_status(doc)
        assert status is not None
        counts = np.bincount(status, minlength=3)
        grid = np.full(rows * columns, 3, dtype=np.int8)
        grid[:total] = status
        ax.imshow(
            grid.reshape(rows, columns),
            cmap=ListedColormap([RECEIVED, REPAIRED, MISSING, EMPTY]),
            norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5, 3.5], 4),
            interpolation="nearest",
            aspect="auto",
            extent=extent,
        )
        if columns <= BORDER_COLUMNS:  # cells of several pixels: show where each one ends
            ax.set_xticks(np.arange(columns + 1), minor=True)
            ax.set_yticks(np.arange(rows + 1) * row_chunks, minor=True)
            ax.grid(which="minor", color="white", linewidth=0.6)
            ax.tick_params(which="minor", length=0)
        handles = [Patch(color=RECEIVED, label=f"received on the first pass ({counts[0]})")]
        if counts[1] or doc.get("mode") == "reliable":
            handles.append(Patch(color=REPAIRED, label=f"lost, then repaired ({counts[1]})"))
        handles.append(Patch(color=MISSING, label=f"missing at the end ({counts[2]})"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3)
        ax.set_title(f"Loss map over chunk index: {total} chunks, {row_chunks} per row")
    else:
        # Too many chunks for a pixel each: the share lost per cell, so that no loss vanishes
        # between pixels and a cell of isolated losses stays lighter than a burst.
        lost_share, lost, still = lost_per_cell(doc, total, group)
        share = np.full(rows * columns, np.nan)
        share[:cells] = lost_share * 100
        image = ax.imshow(
            share.reshape(rows, columns),
            cmap=LOSS_SHADES,
            vmin=0,
            vmax=max(1.0, float(np.nanmax(share))),
            interpolation="nearest",
            aspect="auto",
            extent=extent,
        )
        bar = fig.colorbar(image, ax=ax, pad=0.01)
        bar.set_label(f"first-pass loss in a cell of {group} chunks (%)")
        ax.set_title(
            f"Loss map over chunk index: {total} chunks, {group} per cell, {row_chunks} per "
            f"row; {lost} lost, {still} still missing"
        )
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(_WHOLE)  # 2,500,000, not 2.5 x 1e6
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(_WHOLE)
    ax.set_xlabel("chunk index within the row")
    ax.set_ylabel("chunk index (rows start here)")
    return Plot("loss-map", "Loss map over chunk index", _png(fig))


def loss_over_time(doc: Report) -> Plot | None:
    """First-pass loss rate per time bin (chunks at their send time)."""
    t, rate = _series(doc, "time_s"), _series(doc, "loss_rate")
    if not t.size or np.all(np.isnan(rate)):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.set_xlabel("time since the first datagram (s), chunks at their send time")
    width = float(lookup(doc, "series.bin_s") or 0.0)
    ax.plot(
        t, rate * 100, drawstyle="steps-post", color=MISSING, label="first-pass loss per bin (%)"
    )
    overall = lookup(doc, "loss.rate")
    if overall is not None:
        ax.axhline(overall * 100, color="0.4", linestyle="--", label=f"overall {overall:.3%}")
    ax.set_xlim(left=0)
    ax.set_ylabel("first-pass loss (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"First-pass loss over time ({width * 1000:g} ms bins)")
    _legend(ax)
    return Plot("loss-time", "First-pass loss over time", _png(fig))


def _length_bins(longest: int) -> npt.NDArray[np.int64]:
    """Edges of burst-length bins: one per length up to ``MAX_BARS``, else 1-2-5 wide bins."""
    if longest <= MAX_BARS:
        return np.arange(1, longest + 2, dtype=np.int64)
    width = next(
        step * 10**power
        for power in range(12)
        for step in (1, 2, 5)
        if math.ceil(longest / (step * 10**power)) <= MAX_BARS
    )
    return np.arange(1, longest + width + 1, width, dtype=np.int64)


def _binned(histogram: Sequence[Sequence[int]], edges: npt.NDArray[np.int64]) -> F64:
    lengths, counts = np.asarray(histogram, dtype=np.int64).reshape(-1, 2).T
    binned, _ = np.histogram(lengths, bins=edges, weights=counts)
    return binned.astype(np.float64)


def _length_axis(ax: Axes, edges: npt.NDArray[np.int64]) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    unit = "" if edges[1] - edges[0] == 1 else f", bins of {edges[1] - edges[0]}"
    ax.set_xlabel(f"burst length (consecutive lost chunks{unit})")
    ax.set_xlim(float(edges[0]) - 0.5, float(edges[-1]) - 0.5)


def burst_histogram(doc: Report) -> Plot | None:
    """Loss-burst lengths against the geometric law of a Bernoulli channel with the same loss:
    counts on a linear axis, labelled, so that a count of 1 stays as visible as one of 100."""
    histogram = lookup(doc, "loss.bursts.histogram") or []
    rate = lookup(doc, "loss.rate")
    if not histogram or rate is None:
        return None
    longest = int(max(length for length, _ in histogram))
    edges = _length_bins(longest)
    counts = _binned(histogram, edges)
    fig = _figure()
    ax = fig.add_subplot()
    left, width = edges[:-1].astype(np.float64), np.diff(edges).astype(np.float64)
    bars = ax.bar(
        left - 0.5 + width / 2,
        counts,
        width=width * 0.85,
        color=MISSING,
        alpha=0.85,
        label="observed (bursts)",
    )
    ax.bar_label(bars, labels=[f"{c:.0f}" if c else "" for c in counts], fontsize="small")
    lengths = np.arange(1, int(edges[-1]), dtype=np.int64)
    pmf = geometric_run_pmf(float(rate), lengths)
    expected = np.add.reduceat(pmf, (edges[:-1] - 1).astype(np.intp)) * counts.sum()
    ax.plot(
        left - 0.5 + width / 2,
        expected,
        "o-",
        color="0.2",
        markersize=3,
        label=f"memoryless channel at {rate:.3%} loss: N(1-q)q^(l-1) (bursts)",
    )
    _length_axis(ax, edges)
    ax.set_ylim(0, max(float(counts.max()), float(expected.max())) * 1.15 + 0.5)
    ax.set_ylabel("bursts (count)")
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
    ax.plot(t, goodput / 1e6, drawstyle="steps-post", label="goodput per bin (Mbit/s)")
    average = lookup(doc, "timing.goodput_bps")
    if average:
        ax.axhline(
            average / 1e6, color="0.4", linestyle="--", label=f"average {average / 1e6:.2f} Mbit/s"
        )
    width = float(lookup(doc, "series.bin_s") or 0.0)
    ax.set_title(f"Goodput over time (new unique bytes, {width * 1000:g} ms bins)")
    ax.set_xlabel("time since the first datagram (s)")
    ax.set_ylabel("goodput (Mbit/s)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    _legend(ax)
    return Plot("goodput", "Goodput over time", _png(fig))


def delay_over_time(doc: Report) -> Plot | None:
    """Packet delay variation (RFC 5481: mean and max per bin) and RFC 3550 jitter over time."""
    t = _series(doc, "time_s")
    if not t.size:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(t, _series(doc, "pdv_mean_ms"), drawstyle="steps-post", label="PDV mean per bin (ms)")
    ax.plot(t, _series(doc, "pdv_max_ms"), drawstyle="steps-post", label="PDV max per bin (ms)")
    ax.plot(t, _series(doc, "jitter_ms"), color="0.1", label="RFC 3550 jitter (ms)")
    ax.set_title("Delay variation over time (PDV = delay - min delay, RFC 5481)")
    ax.set_xlabel("arrival time since the first datagram (s)")
    ax.set_ylabel("delay variation (ms)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    _legend(ax)
    return Plot("delay", "Delay variation over time", _png(fig))


def report_plots(doc: Report) -> list[Plot]:
    """Every figure the report has data for, in reading order: drawn from the report's own
    aggregates (ranges, time bins, histograms), never one point per datagram."""
    plots = (
        loss_map(doc),
        loss_over_time(doc),
        burst_histogram(doc),
        goodput_over_time(doc),
        delay_over_time(doc),
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
    ax.set_xlim(left=0)
    _legend(ax)
    return Plot(slug, title, _png(fig))


def _burst_overlay(reports: Sequence[tuple[str, Report]]) -> Plot | None:
    """Burst-length distributions side by side: grouped bars per length (a length that one
    run never saw is a missing bar, not a line drawn through it)."""
    shown = [(label, lookup(doc, "loss.bursts.histogram") or []) for label, doc in reports]
    shown = [(label, histogram) for label, histogram in shown if histogram]
    if not shown:
        return None
    longest = max(int(length) for _, histogram in shown for length, _ in histogram)
    edges = _length_bins(longest)
    centres = (edges[:-1] + edges[1:]) / 2 - 0.5
    slot = np.diff(edges) * 0.85 / len(shown)
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, histogram) in enumerate(shown):
        counts = _binned(histogram, edges)
        offset = (i - (len(shown) - 1) / 2) * slot
        ax.bar(centres + offset, counts / counts.sum() * 100, width=slot, label=label)
    _length_axis(ax, edges)
    ax.yaxis.set_major_locator(MaxNLocator())
    ax.set_title("Loss-burst length distributions")
    ax.set_ylabel("share of the run's bursts (%)")
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
