"""What the analysis modules share: array types, time units and JSON-safe numbers.

Conventions: chunk indexes are in send order (the first pass sends chunks 0..N-1 in order, so a
chunk's index is its first transmission number); ``lost`` is a boolean array over chunk indexes,
True where the chunk's first transmission never arrived. Every value a report section holds is
JSON-safe: plain ints, floats and lists, ``None`` where a figure is undefined (never NaN).
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import numpy.typing as npt

Bools = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

NS_PER_MS: Final = 1e6
NS_PER_S: Final = 1e9


def json_float(value: float | np.floating[Any] | None) -> float | None:
    """A float for JSON: ``None`` for undefined or non-finite values."""
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or ``None`` when the denominator is zero."""
    return numerator / denominator if denominator else None


def json_list(values: F64) -> list[float | None]:
    """A float array as a JSON list, NaN -> ``None``."""
    return [None if math.isnan(v) else v for v in values.tolist()]
