"""The plan of a comparison, pure: transports, sweeps and their points, the Mathis model.

Nothing here touches the lab; ``run.py`` runs the plan and ``report.py`` reads
its results. Every function has a unit test without root.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from udpxfer.errors import UsageError
from udpxfer.lab.impair.models import Direction, Impairment
from udpxfer.units import parse_duration, parse_probability, parse_rate

TCP_HEADERS_BYTES = 52  # IPv4 20 + TCP 20 + timestamps 12: MSS = MTU - 52


@dataclass(frozen=True, slots=True)
class Transport:
    """One way of moving the file."""

    name: str  # as typed in --transports
    transport: str  # "tcp" | "udp"
    mode: str  # "stream" | "reliable" | "blast"
    label: str


TRANSPORTS = {
    "tcp": Transport("tcp", "tcp", "stream", "TCP"),
    "reliable": Transport("reliable", "udp", "reliable", "UDP reliable"),
    "blast": Transport("blast", "udp", "blast", "UDP blast"),
}


def parse_transports(text: str) -> list[Transport]:
    """``tcp,reliable,blast`` (any subset, in the order given).

    Raises:
        UsageError: an unknown or repeated name, or none.
    """
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError("--transports: give at least one of tcp, reliable, blast")
    for name in names:
        if name not in TRANSPORTS:
            raise UsageError(f"--transports: unknown {name!r} (choose from tcp, reliable, blast)")
    if len(set(names)) != len(names):
        raise UsageError("--transports: a transport is named twice")
    return [TRANSPORTS[name] for name in names]


# parameter -> (Impairment field, parser of one value)
SWEEPABLE: dict[str, tuple[str, Callable[[str], float]]] = {
    "loss": ("loss", parse_probability),
    "delay": ("delay_s", parse_duration),
    "jitter": ("jitter_s", parse_duration),
    "rate": ("rate_bps", lambda text: float(parse_rate(text))),
}


@dataclass(frozen=True, slots=True)
class SweepAxis:
    """One ``--sweep PARAM=V1,V2,...``: the parameter and its values (SI: fraction, s, bit/s)."""

    param: str
    values: tuple[float, ...]
    labels: tuple[str, ...]


def parse_sweep(text: str) -> SweepAxis:
    """Parse ``loss=0,0.5%,1%`` or ``delay=1ms,20ms,80ms`` (also ``jitter=``, ``rate=``).

    Raises:
        UsageError: unknown parameter, a value that does not parse, or no values.
    """
    param, sep, values_text = text.partition("=")
    param = param.strip().lower()
    if not sep or param not in SWEEPABLE:
        raise UsageError(
            f"--sweep {text!r}: expected PARAM=V1,V2,... with PARAM one of " + ", ".join(SWEEPABLE)
        )
    labels = tuple(v.strip() for v in values_text.split(",") if v.strip())
    if not labels:
        raise UsageError(f"--sweep {text!r}: no values")
    parse = SWEEPABLE[param][1]
    try:
        values = tuple(parse(label) for label in labels)
    except UsageError as exc:
        raise UsageError(f"--sweep {param}: {exc}") from exc
    if len(set(values)) != len(values):
        raise UsageError(f"--sweep {param}: a value is given twice")
    return SweepAxis(param, values, labels)


@dataclass(frozen=True, slots=True)
class Point:
    """One impairment setting to run everything at."""

    index: int
    param: str | None  # None: the impairment as given (no sweep)
    value: float | None
    label: str
    forward: Impairment
    reverse: Impairment

    def as_dict(self) -> dict[str, Any]:
        """The point's identity, for JSON."""
        return {
            "point": self.index,
            "param": self.param,
            "value": self.value,
            "label": self.label,
            "forward": self.forward.describe(),
            "reverse": self.reverse.describe(),
        }


def sweep_points(
    forward: Impairment,
    reverse: Impairment,
    impaired: Sequence[Direction],
    sweeps: Sequence[SweepAxis],
) -> list[Point]:
    """The points to run: the base alone, or each sweep value with the rest as given.

    A swept parameter is set in every direction the impairment applies to (``impaired``).
    """
    if not sweeps:
        return [Point(0, None, None, "as given", forward, reverse)]
    points: list[Point] = []
    for axis in sweeps:
        name = SWEEPABLE[axis.param][0]
        for value, label in zip(axis.values, axis.labels, strict=True):
            typed: Any = int(value) if name == "rate_bps" else value
            fwd = replace(forward, **{name: typed}) if Direction.FORWARD in impaired else forward
            rev = replace(reverse, **{name: typed}) if Direction.REVERSE in impaired else reverse
            points.append(Point(len(points), axis.param, value, f"{axis.param} {label}", fwd, rev))
    return points


def effective_loss(impairment: Impairment) -> float:
    """The long-run packet loss probability of one direction (random and burst loss)."""
    ge = 0.0 if impairment.gilbert is None else impairment.gilbert.loss_rate
    return 1.0 - (1.0 - impairment.loss) * (1.0 - ge)


def mathis_bps(mss_bytes: float, rtt_s: float | None, loss: float) -> float | None:
    """Mathis et al. 1997, "The macroscopic behavior of the TCP congestion avoidance
    algorithm": rate = MSS/RTT * sqrt(3/2)/sqrt(p), in bit/s. None where it is undefined
    (no loss, no RTT)."""
    if rtt_s is None or rtt_s <= 0 or loss <= 0:
        return None
    return mss_bytes * 8 / rtt_s * math.sqrt(1.5) / math.sqrt(loss)


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Median, mean, min, max and standard deviation (None for fewer than two values)."""
    if not values:
        return {"median": None, "mean": None, "min": None, "max": None, "stdev": None}
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else None,
    }


def summarise(
    runs: Sequence[dict[str, Any]], transports: Sequence[Transport]
) -> list[dict[str, Any]]:
    """Per transport: how many runs completed, and the spread of goodput, time, overhead."""
    rows = []
    for t in transports:
        mine = [r for r in runs if r["transport"] == t.transport and r["mode"] == t.mode]
        done = [r for r in mine if r["goodput_bps"] is not None]
        rows.append(
            {
                "transport": t.transport,
                "mode": t.mode,
                "label": t.label,
                "runs": len(mine),
                "complete": sum(1 for r in mine if r["complete"]),
                "verified": sum(1 for r in mine if r["verified"]),
                "goodput_bps": spread([r["goodput_bps"] for r in done]),
                "duration_s": spread([r["duration_s"] for r in done if r["duration_s"]]),
                "wire_per_byte": spread(
                    [r["wire_per_byte"] for r in mine if r["wire_per_byte"] is not None]
                ),
                "loss_seen": spread([r["loss_seen"] for r in mine if r["loss_seen"] is not None]),
                "retransmitted": spread(
                    [float(r["retransmitted"]) for r in mine if r["retransmitted"] is not None]
                ),
            }
        )
    return rows
