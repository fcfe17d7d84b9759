"""What both drivers share about time: the clock they read and how often they report progress."""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]  # seconds, monotonic (time.monotonic, or a test's fake clock)
PROGRESS_INTERVAL_S = 0.1  # how often either driver reports progress
