"""Inclusive index ranges: the vectorised gap finder against a plain loop, and the helpers."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpxfer.protocol.ranges import as_lists, batched, count_in, iter_indexes, missing_ranges


def reference_missing(held: bytes) -> list[tuple[int, int]]:
    """Runs of zero bytes, found one index at a time."""
    ranges: list[tuple[int, int]] = []
    start = None
    for index, flag in enumerate(held):
        if flag == 0 and start is None:
            start = index
        elif flag != 0 and start is not None:
            ranges.append((start, index - 1))
            start = None
    if start is not None:
        ranges.append((start, len(held) - 1))
    return ranges


MISSING_CASES = [
    pytest.param(b"", [], id="empty"),
    pytest.param(b"\x01", [], id="one held"),
    pytest.param(b"\x00", [(0, 0)], id="one missing"),
    pytest.param(b"\x01" * 1000, [], id="all held"),
    pytest.param(b"\x00" * 1000, [(0, 999)], id="none held"),
    pytest.param(b"\x00\x01\x01\x00", [(0, 0), (3, 3)], id="both edges"),
    pytest.param(b"\x01\x00\x00\x01", [(1, 2)], id="inside"),
    pytest.param(b"\x00\x00\x01", [(0, 1)], id="leading run"),
    pytest.param(b"\x01\x00\x00", [(1, 2)], id="trailing run"),
    pytest.param(b"\x00\x01" * 4, [(0, 0), (2, 2), (4, 4), (6, 6)], id="alternating"),
    pytest.param(b"\x02\xff\x00\x80", [(2, 2)], id="any nonzero is held"),
]


@pytest.mark.parametrize(("held", "expected"), MISSING_CASES)
def test_missing_ranges(held: bytes, expected: list[tuple[int, int]]) -> None:
    assert reference_missing(held) == expected
    assert missing_ranges(held) == expected
    assert missing_ranges(bytearray(held)) == expected
    assert missing_ranges(np.frombuffer(held, dtype=np.uint8)) == expected


def test_missing_ranges_returns_plain_ints() -> None:
    ranges = missing_ranges(b"\x01\x00\x00\x01\x00")
    assert all(type(first) is int and type(last) is int for first, last in ranges)
    assert json.dumps(as_lists(ranges)) == "[[1, 2], [4, 4]]"


@pytest.mark.parametrize("seed", range(10))
def test_missing_ranges_matches_a_plain_loop_on_random_arrays(seed: int) -> None:
    rng = random.Random(seed)
    loss = rng.choice([0.001, 0.05, 0.5, 0.95])
    held = bytes(0 if rng.random() < loss else 1 for _ in range(rng.randint(1, 20_000)))
    assert missing_ranges(held) == reference_missing(held)


@given(st.binary(max_size=300).map(lambda b: bytes(x % 3 for x in b)))
def test_missing_ranges_property(held: bytes) -> None:
    ranges = missing_ranges(held)
    assert ranges == reference_missing(held)
    assert list(iter_indexes(ranges)) == [i for i, flag in enumerate(held) if flag == 0]
    assert count_in(ranges) == held.count(0)
    for (_, last), (first, _) in itertools.pairwise(ranges):
        assert first > last + 1  # separate runs never touch


def test_missing_ranges_of_a_writable_array_view() -> None:
    held = np.ones(64, dtype=np.uint8)
    held[10:20] = 0
    held[63] = 0
    assert missing_ranges(held) == [(10, 19), (63, 63)]
    assert missing_ranges(held[8:]) == [(2, 11), (55, 55)]


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [([], 0), ([(0, 0)], 1), ([(5, 5), (7, 9)], 4), ([(0, 9), (20, 29)], 20)],
)
def test_count_in(ranges: list[tuple[int, int]], expected: int) -> None:
    assert count_in(ranges) == expected
    assert count_in(iter(ranges)) == expected
    assert len(list(iter_indexes(ranges))) == expected


def test_iter_indexes() -> None:
    assert list(iter_indexes([(0, 2), (5, 5), (7, 8)])) == [0, 1, 2, 5, 7, 8]
    assert list(iter_indexes([])) == []


def test_as_lists() -> None:
    assert as_lists([]) == []
    assert as_lists([(1, 2), (4, 4)]) == [[1, 2], [4, 4]]
    assert as_lists(iter([(0, 0)])) == [[0, 0]]


@pytest.mark.parametrize(
    ("n", "size", "lengths"),
    [(0, 3, []), (1, 3, [1]), (3, 3, [3]), (7, 3, [3, 3, 1]), (6, 2, [2, 2, 2]), (5, 100, [5])],
)
def test_batched(n: int, size: int, lengths: list[int]) -> None:
    ranges = [(i * 10, i * 10 + 1) for i in range(n)]
    batches = list(batched(ranges, size))
    assert [len(batch) for batch in batches] == lengths
    assert [r for batch in batches for r in batch] == ranges
