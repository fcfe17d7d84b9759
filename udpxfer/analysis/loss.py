"""First-pass loss: which chunks were lost, a confidence interval, and the Gilbert models.

Pure functions over plain arrays (no sockets, files or clocks), checked on synthetic sequences.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from udpxfer.analysis.lossruns import MomentCounts
from udpxfer.analysis.trace import RESENT, Trace
from udpxfer.analysis.values import I64, Bools, json_float, ratio

Z95: Final = 1.959963984540054  # standard normal quantile for a two-sided 95% interval


# --------------------------------------------------------------------------------------------
# First-pass loss sequence and its confidence interval


def first_transmissions(pass_no: npt.NDArray[np.uint8], flags: npt.NDArray[np.uint8]) -> Bools:
    """Mask of datagrams that are first transmissions: ``pass_no == 0`` and not RESENT."""
    mask: Bools = (pass_no == 0) & ((flags & RESENT) == 0)
    return mask


def first_pass_lost(
    index: I64, pass_no: npt.NDArray[np.uint8], flags: npt.NDArray[np.uint8], chunk_count: int
) -> Bools:
    """Lost mask over chunk indexes: True where no first transmission of the chunk arrived.

    A first transmission has ``pass_no == 0`` and no RESENT flag (DESIGN.md: "A chunk is a
    first-pass gap when its first transmission never arrived").
    """
    received = np.zeros(chunk_count, dtype=np.bool_)
    received[index[first_transmissions(pass_no, flags)]] = True
    return ~received


def lost_chunks(trace: Trace) -> Bools:
    """First-pass lost mask of a trace, over its chunk indexes."""
    return first_pass_lost(trace.index, trace.pass_no, trace.flags, trace.chunk_count)


def wilson_interval(lost: int, total: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion ``lost / total``.

    Wilson (1927), as recommended by Brown, Cai & DasGupta (2001) for small rates:
    centre = (p + z²/2n) / (1 + z²/n), half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²).

    Returns:
        ``(low, high)`` within [0, 1], or ``None`` when ``total`` is 0.
    """
    if total <= 0:
        return None
    p = lost / total
    z2n = z * z / total
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / total + z2n / (4 * total))
    # Exact at the ends: no loss has a lower bound of 0, all lost an upper bound of 1 (the
    # formula gives them only to rounding).
    low = 0.0 if lost == 0 else max(0.0, centre - half)
    high = 1.0 if lost == total else min(1.0, centre + half)
    return low, high


def span_mask(first: I64, last: I64, count: int) -> Bools:
    """Boolean mask over ``count`` chunks, True inside every inclusive span ``first..last``."""
    marks = np.zeros(count + 1, dtype=np.int64)
    np.add.at(marks, np.clip(first, 0, count), 1)
    np.add.at(marks, np.clip(last + 1, 0, count), -1)
    mask: Bools = np.cumsum(marks[:count]) > 0
    return mask


def ranges_to_mask(ranges: list[list[int]], count: int) -> Bools:
    """``span_mask`` of a report's ``gaps``/``first_pass_gaps`` (``[[first, last], ...]``)."""
    bounds = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    return span_mask(bounds[:, 0], bounds[:, 1], count)


# --------------------------------------------------------------------------------------------
# Gilbert and Gilbert-Elliott models


@dataclass(frozen=True, slots=True)
class GilbertFit:
    """Two-state Gilbert estimates and, where identifiable, the 4-parameter Gilbert-Elliott fit.

    Attributes:
        p: P(received -> lost) between consecutive chunks (simple Gilbert, k=1, h=0).
        r: P(lost -> received).
        steady_state_loss: p / (p + r), the long-run loss the two-state chain implies.
        h: P(received | Bad state) in the 4-parameter model.
        k: P(received | Good state) in the 4-parameter model.
        ge_p, ge_r: the 4-parameter model's own Good->Bad and Bad->Good probabilities.
        ge_loss: its implied loss rate, pi_G (1 - k) + pi_B (1 - h).
    """

    p: float | None
    r: float | None
    steady_state_loss: float | None
    h: float | None = None
    k: float | None = None
    ge_p: float | None = None
    ge_r: float | None = None
    ge_loss: float | None = None


def gilbert_two_state(lost: Bools) -> tuple[float | None, float | None, float | None]:
    """Simple Gilbert model (k=1, h=0) estimated by counting transitions in send order.

    p = #(received -> lost) / #(received chunks with a successor),
    r = #(lost -> received) / #(lost chunks with a successor) (Gilbert 1960: with k=1, h=0
    the hidden state is the observed one, so these counts are its maximum-likelihood fit).

    Returns:
        ``(p, r, steady_state_loss)``; each ``None`` when its denominator is empty. The
        steady-state loss p / (p + r) is 0 when p = 0 and no loss has a successor, 1 when r = 0
        and no received chunk has a successor, and ``None`` when the chain never moved.
    """
    prev, nxt = lost[:-1], lost[1:]
    from_received = int(np.count_nonzero(~prev))
    from_lost = int(prev.size - from_received)
    to_lost = int(np.count_nonzero(~prev & nxt))
    to_received = int(np.count_nonzero(prev & ~nxt))
    return gilbert_from_counts(to_lost, from_received, to_received, from_lost)


def gilbert_from_counts(
    to_lost: int, from_received: int, to_received: int, from_lost: int
) -> tuple[float | None, float | None, float | None]:
    """``gilbert_two_state`` from its transition counts (as ``lossruns.LossRuns`` keeps them)."""
    p = ratio(to_lost, from_received)
    r = ratio(to_received, from_lost)
    if p is not None and r is not None:
        steady = ratio(p, p + r)
    elif p == 0.0:
        steady = 0.0
    elif r == 0.0:
        steady = 1.0
    else:
        steady = None
    return p, r, steady


def gilbert_elliott_moments(lost: Bools, z: float = 3.0) -> GilbertFit | None:
    """Method-of-moments fit of the 4-parameter Gilbert-Elliott model (p, r, h, k).

    Model (Gilbert 1960, Elliott 1963, notation of Hasslinger & Hohlfeld 2008): a hidden Good/Bad
    Markov chain with P(G->B) = p, P(B->G) = r; a chunk is received with probability k in Good
    and h in Bad. With e_G = 1-k, e_B = 1-h, D = e_B - e_G, pi = p/(p+r), lambda = 1-p-r and x the
    loss indicator, the stationary moments are (the state is a two-state Markov chain, the
    per-chunk noise is independent given the state):

        E[x]                                  = e_G + D pi
        Cov(x_t, x_t+m)                       = D² pi(1-pi) lambda^m           (m >= 1)
        E[(x_t-Ex)(x_t+1-Ex)(x_t+2-Ex)]       = D³ pi(1-pi)(1-2pi) lambda²

    so lambda = C2/C1, A = C1/lambda = D² pi(1-pi), B = K3/lambda² = D A (1-2pi) give
    D = sqrt((B/A)² + 4A), pi = (1 - B/(A D))/2, then e_G, e_B, p = pi(1-lambda),
    r = (1-pi)(1-lambda). Probabilities are clipped to [0, 1].

    Returns:
        The fit (``p``/``r``/``steady_state_loss`` left ``None``: they are the two-state
        estimates, see ``gilbert_two_state``), or ``None`` when the model is not identifiable:
        fewer than 3 chunks, a lag-1 autocorrelation not above ``z / sqrt(n)`` (losses look
        independent, so any h, k with the same mean fits), or lag moments that no
        Gilbert-Elliott chain can produce (C2 <= 0 or C2 >= C1).
    """
    return gilbert_elliott_from_counts(MomentCounts.of(lost), z)


def gilbert_elliott_from_counts(counts: MomentCounts, z: float = 3.0) -> GilbertFit | None:
    """``gilbert_elliott_moments`` from the exact integer lag sums of the lost mask (the
    centred moments follow from them: ``MomentCounts.centred``), as kept block by block."""
    moments = counts.centred()
    if moments is None:
        return None
    n = counts.n
    mean, var, c1, c2, k3 = moments
    if var <= 0 or c1 <= z * var / math.sqrt(n) or c2 <= 0 or c2 >= c1:
        return None
    lam = c2 / c1
    a = c1 / lam
    u = k3 / (lam * lam) / a
    spread = math.sqrt(u * u + 4 * a)
    pi_bad = min(max((1 - u / spread) / 2, 0.0), 1.0)
    e_good = min(max(mean - spread * pi_bad, 0.0), 1.0)
    e_bad = min(max(e_good + spread, 0.0), 1.0)
    ge_p, ge_r = pi_bad * (1 - lam), (1 - pi_bad) * (1 - lam)
    return GilbertFit(
        p=None,
        r=None,
        steady_state_loss=None,
        h=1 - e_bad,
        k=1 - e_good,
        ge_p=ge_p,
        ge_r=ge_r,
        ge_loss=(1 - pi_bad) * e_good + pi_bad * e_bad,
    )


def gilbert_fit(lost: Bools) -> GilbertFit:
    """Two-state Gilbert estimates plus the Gilbert-Elliott moments fit where identifiable."""
    p, r, steady = gilbert_two_state(lost)
    ge = gilbert_elliott_moments(lost)
    if ge is None:
        return GilbertFit(p, r, steady)
    return GilbertFit(p, r, steady, ge.h, ge.k, ge.ge_p, ge.ge_r, ge.ge_loss)


# --------------------------------------------------------------------------------------------
# The report's loss section


def loss_section(
    lost: int,
    chunks: int,
    datagram_rate: float | None,
    runs: tuple[dict[str, Any], dict[str, Any]],
    fit: GilbertFit,
    rfc3611: dict[str, Any],
) -> dict[str, Any]:
    """The analysis keys of the report's ``loss`` section, for the whole-trace and the online
    analysis alike.

    Args:
        lost, chunks: first-pass losses out of the chunks analysed (the Wilson interval's).
        datagram_rate: the datagram loss rate (``datagram_loss_rate``).
        runs: the ``bursts`` and ``gaps`` run sections.
        fit: the Gilbert fit.
        rfc3611: the RFC 3611 burst/gap section.
    """
    ci = wilson_interval(lost, chunks)
    bursts, gaps = runs
    return {
        "ci95": list(ci) if ci is not None else None,
        "ci_method": "wilson",
        "datagram_rate": datagram_rate,
        "bursts": bursts,
        "gaps": gaps,
        "gilbert": {key: json_float(v) for key, v in asdict(fit).items()},
        "rfc3611": rfc3611,
    }


def datagram_loss_rate(arrived: int, sent: int) -> float | None:
    """1 - arrived / sent over every DATA datagram the sender reported, resends included;
    ``None`` when the sender reported none or fewer than arrived."""
    return 1 - arrived / sent if sent > 0 and arrived <= sent else None
