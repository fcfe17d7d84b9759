"""Inclusive ranges of chunk indexes: gaps in reports, bodies of NACKs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def missing_ranges(held: bytes | bytearray | npt.NDArray[np.uint8]) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` ranges of the indexes where ``held`` is zero.

    Vectorised: the edges of runs of zeros come from one ``np.diff``.
    """
    import numpy as np  # here, so that a sender (which never calls this) starts without it

    flags = np.frombuffer(held, dtype=np.uint8) if not isinstance(held, np.ndarray) else held
    if flags.size == 0:
        return []
    missing = np.concatenate(([0], (flags == 0).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(missing))
    starts, ends = edges[0::2], edges[1::2] - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def count_in(ranges: Iterable[tuple[int, int]]) -> int:
    """Number of indexes the inclusive ranges cover."""
    return sum(last - first + 1 for first, last in ranges)


def iter_indexes(ranges: Iterable[tuple[int, int]]) -> Iterator[int]:
    """Every index the inclusive ranges cover, in order."""
    for first, last in ranges:
        yield from range(first, last + 1)


def as_lists(ranges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Ranges as JSON-friendly ``[first, last]`` lists."""
    return [[first, last] for first, last in ranges]


def batched(ranges: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    """Consecutive slices of at most ``size`` ranges (one NACK datagram each)."""
    for start in range(0, len(ranges), size):
        yield ranges[start : start + size]
