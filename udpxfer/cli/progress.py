"""Progress bars on stderr, in the units of the summaries (KiB/MiB sizes, Mbit/s rates).

A bar fits the terminal down to 80 columns: the label is cut to leave the counters whole,
and the rate is the average since the start, as the summaries give it.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

from tqdm import tqdm

from udpxfer.units import format_rate, format_size

LABEL_CHARS = 18
MAX_COLUMNS = 100  # wider bars say nothing more


def show_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal and when not asked to be quiet."""
    return not quiet and sys.stderr.isatty()


def _short(label: str, width: int = LABEL_CHARS) -> str:
    return label if len(label) <= width else label[: width - 1] + "~"


class TransferBar:
    """One transfer's bar: ``label  42%|████    | 1.2 MiB 85.2 Mbit/s extra``."""

    def __init__(self, label: str, total_bytes: int, *, enabled: bool = True) -> None:
        self._total = total_bytes
        self._started = time.monotonic()
        self._done = 0
        self._bar: tqdm[Any] | None = None
        if enabled:
            columns = min(MAX_COLUMNS, shutil.get_terminal_size((80, 24)).columns)
            self._bar = tqdm(
                total=max(1, total_bytes),
                desc=_short(label),
                bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}",
                ncols=columns,
                leave=False,
                file=sys.stderr,
            )

    def set(self, done_bytes: int, extra: str = "") -> None:
        """Show ``done_bytes`` of the total, with ``extra`` (e.g. ``lost 3``) after the rate."""
        self._done = min(done_bytes, self._total)
        if self._bar is None:
            return
        elapsed = time.monotonic() - self._started
        rate = self._done * 8 / elapsed if elapsed > 0 else 0.0
        text = f"{format_size(self._done)} {format_rate(rate)}"
        self._bar.n = self._done if self._total else 1
        self._bar.set_postfix_str(f"{text} {extra}".rstrip(), refresh=False)
        self._bar.refresh()

    def update(self, n: int) -> None:
        """Add ``n`` bytes (the companions' progress protocol)."""
        self.set(self._done + n)

    def close(self) -> None:
        """Remove the bar, leaving a clean line for what follows."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
