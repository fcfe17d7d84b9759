"""Progress bars: the summaries' units, whole counters, 80 columns."""

from __future__ import annotations

import io
import re

import pytest

from udpxfer.cli.progress import TransferBar


def last_frame(output: str) -> str:
    return output.replace("\x1b[A", "").split("\r")[-1].rstrip("\n")


def frames(output: str) -> list[str]:
    return [frame for frame in output.split("\r") if frame.strip()]


def test_bar_fits_80_columns_in_the_summary_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = io.StringIO()
    bar = TransferBar("a-very-long-file-name.iso -> [2001:db8::7]:9000", 3 << 30, file=out)
    bar.set(1536 << 20, "lost 123456 resent 654321")
    drawn = frames(out.getvalue())[-1]
    bar.close()
    assert len(drawn) <= 80
    assert drawn.startswith("a-very-long-file-~ ")  # the label is cut, not the counters
    assert re.search(
        r" 50%\|[█#0-9]+ *\| 1\.5 GiB \d+\.\d (k|M|G)?bit/s lost 123456 resent 654321$", drawn
    )
    assert "MB/s" not in drawn


def test_disabled_bar_draws_nothing() -> None:
    out = io.StringIO()
    bar = TransferBar("x", 100, enabled=False, file=out)
    bar.update(50)
    bar.close()
    assert out.getvalue() == ""
