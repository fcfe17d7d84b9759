"""Progress bars on stderr, in the units of the summaries (KiB/MiB sizes, Mbit/s rates).

A bar fits the terminal down to 80 columns: the label is cut to leave the counters whole,
and the rate is the average since the start, as the summaries give it.
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

from udpxfer.units import format_rate, format_size

LABEL_CHARS = 18
MAX_COLUMNS = 100  # wider bars say nothing more


def show_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal and when not asked to be quiet."""
    return not quiet and sys.stderr.isatty()


def _short(label: str, width: int = LABEL_CHARS) -> str:
    return label if len(label) <= width else label[: width - 1] + "~"


@functools.cache
def _bar_class() -> type[Any]:
    """tqdm with one more field, ``{info}`` (``{postfix}`` would put ", " before our text);
    tqdm is imported by the first bar, not by every command."""
    from tqdm import tqdm

    class Bar(tqdm):  # type: ignore[type-arg]
        info = ""

        @property
        def format_dict(self) -> MutableMapping[str, Any]:
            fields = super().format_dict
            fields["info"] = self.info
            return fields

    return Bar


class TransferBar:
    """One transfer's bar: ``label  42%|████    | 1.2 MiB 85.2 Mbit/s extra``."""

    def __init__(
        self, label: str, total_bytes: int, *, enabled: bool = True, file: TextIO | None = None
    ) -> None:
        self._total = total_bytes
        self._started = time.monotonic()
        self._done = 0
        self._bar: Any = None
        if enabled:
            # Room for the "^C" a terminal echoes after the bar: on a full-width line it would
            # wrap, and the bar could no longer be erased.
            columns = min(MAX_COLUMNS, shutil.get_terminal_size((80, 24)).columns) - 3
            self._bar = _bar_class()(
                total=max(1, total_bytes),
                desc=_short(label),
                bar_format="{desc} {percentage:3.0f}%|{bar}| {info}",
                ncols=columns,
                leave=False,
                file=file or sys.stderr,
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
        self._bar.info = f"{text} {extra}".rstrip()
        self._bar.refresh()

    def update(self, n: int) -> None:
        """Add ``n`` bytes (the companions' progress protocol)."""
        self.set(self._done + n)

    def close(self) -> None:
        """Remove the bar, leaving a clean line for what follows (also when Ctrl-C came in
        the middle of a refresh, which tqdm's own clearing can miss)."""
        if self._bar is not None:
            handle = self._bar.fp
            self._bar.close()
            self._bar = None
            clear_line(handle)


def clear_line(handle: TextIO | None = None) -> None:
    """On a terminal, erase the current line (a bar, an echoed ^C) and go to its start."""
    handle = handle or sys.stderr
    try:
        if handle.isatty():
            handle.write("\r\x1b[2K")
            handle.flush()
    except (OSError, ValueError):
        return  # closed or gone: nothing to clean
