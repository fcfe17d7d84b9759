"""Plots an engineer trusts: counts that stay visible, bins from the transfer, maps that scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_analysis import gilbert_elliott_losses, synthetic_trace

from udpxfer.analysis.sections import analyse
from udpxfer.analysis.series import SERIES_MIN_DATAGRAMS
from udpxfer.reports import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("longest", [1, 6, 40, 41, 999, 16_657])
def test_burst_length_bins_are_whole_lengths_and_few(longest: int) -> None:
    edges = plots._length_bins(longest)
    widths = np.diff(edges)
    assert edges[0] == 1
    assert edges[-1] > longest  # every length has a bin
    assert len(widths) <= plots.MAX_BARS
    assert len(set(widths.tolist())) == 1  # equal widths
    assert widths[0] in {1, 2, 5} or str(widths[0]).strip("0") in {"1", "2", "5"}


def test_binned_counts_keep_every_burst() -> None:
    histogram = [[1, 10], [2, 3], [45, 1], [999, 1]]
    counts = plots._binned(histogram, plots._length_bins(999))
    assert counts.sum() == 15
    assert plots._length_bins(999)[1] == 51  # 50-wide bins: 1-50, 51-100...
    assert counts[0] == 14  # lengths 1, 2 and 45 share the first bin


@pytest.mark.parametrize("chunks", [100, 10_000, 1_000_000, 10_000_000])
def test_loss_map_cells_fit_the_pixels(chunks: int) -> None:
    group = max(1, math.ceil(chunks / (plots.MAP_COLUMNS * plots.MAP_ROWS)))
    columns, rows = plots._map_shape(math.ceil(chunks / group))
    assert columns <= plots.MAP_COLUMNS
    assert rows <= plots.MAP_ROWS + 1
    assert columns * rows * group >= chunks


def test_ten_million_chunk_map_from_ranges_renders() -> None:
    total = 10_000_000
    gaps = [[i, i + 2] for i in range(5, total - 10, 3_333_331)]
    plot = plots.loss_map({"chunks": {"total": total}, "first_pass_gaps": gaps, "gaps": []})
    assert plot is not None
    assert plot.png.startswith(PNG_MAGIC)


def test_time_bins_hold_tens_of_datagrams_and_start_at_zero() -> None:
    for n in (109, 2_000, 200_000):
        trace = synthetic_trace(gilbert_elliott_losses(n, p=0.02, r=0.3, seed=n), seed=n)
        series = analyse(trace)["series"]
        assert series["time_s"][0] == 0.0
        bins = len(series["time_s"])
        assert len(trace) / bins >= SERIES_MIN_DATAGRAMS / 2.5  # 1-2-5 widths round up
        rates = [r for r in series["loss_rate"] if r is not None]
        assert all(0.0 <= r <= 1.0 for r in rates)
        assert len(rates) >= bins - 1
