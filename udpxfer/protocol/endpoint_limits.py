"""What the receiver endpoint lets each source do: amplification budgets, rates and caps.

The anti-amplification budget of every address, per-host rate limits, and the caps on
transfers and on sessions that are no transfer yet. Everything here decides; the endpoint
acts (refuses, evicts, holds a datagram back) and counts.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import TYPE_CHECKING

from udpxfer.protocol.receiver_core import Peer
from udpxfer.protocol.receiver_state import ACTIVE_STATES
from udpxfer.protocol.wire import Meta

if TYPE_CHECKING:
    from udpxfer.protocol.receiver import ReceiverConfig, ReceiverSession

AMPLIFICATION_FACTOR = 3  # RFC 9000 section 8: at most 3x toward an unvalidated address
MAX_TRACKED_ADDRESSES = 16384  # budgets kept at once (oldest forgotten first)


class Budget:
    """Bytes received from and sent to one address, and whether it echoed a token."""

    __slots__ = ("received", "sent", "validated")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.validated = False


class AddressBudgets:
    """The anti-amplification budget of every address (RFC 9000 section 8.1): until an
    address has echoed a token, what is sent to it stays within 3x what came from it."""

    __slots__ = ("_budgets",)

    def __init__(self) -> None:
        self._budgets: collections.OrderedDict[Peer, Budget] = collections.OrderedDict()

    def of(self, peer: Peer) -> Budget:
        """``peer``'s budget (a fresh one for an address not seen lately)."""
        budgets = self._budgets
        budget = budgets.get(peer)
        if budget is None:
            budget = budgets[peer] = Budget()
            if len(budgets) > MAX_TRACKED_ADDRESSES:
                budgets.popitem(last=False)
        else:
            budgets.move_to_end(peer)
        return budget

    def spend(self, size: int, peer: Peer) -> bool:
        """Take ``size`` bytes toward ``peer``; False (nothing taken) when over its budget."""
        budget = self.of(peer)
        if not budget.validated and budget.sent + size > AMPLIFICATION_FACTOR * budget.received:
            return False
        budget.sent += size
        return True


class PerSourceRate:
    """A token bucket per source host (``rate`` a second, as many at once), for work a source
    can ask for without having proven its address; the oldest hosts are forgotten first."""

    __slots__ = ("_buckets", "_rate")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._buckets: collections.OrderedDict[object, list[float]] = collections.OrderedDict()

    def allow(self, peer: Peer, now: float) -> bool:
        """Take one token of ``peer``'s host; False (nothing taken) when it has none left."""
        source = host_of(peer)
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = [self._rate, now]  # level, when last updated
            if len(self._buckets) > MAX_TRACKED_ADDRESSES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        level = min(self._rate, bucket[0] + max(0.0, now - bucket[1]) * self._rate)
        bucket[1] = now
        if level < 1.0:
            bucket[0] = level
            return False
        bucket[0] = level - 1.0
        return True


def transfer_refusal(
    sessions: Iterable[ReceiverSession],
    session: ReceiverSession,
    meta: Meta,
    config: ReceiverConfig,
) -> str:
    """Why limits leave no room for ``session``'s validated transfer ("": they do)."""
    source = host_of(session.peer)
    active = [s for s in sessions if is_active(s) and s.validated and s is not session]
    from_source = sum(1 for s in active if host_of(s.peer) == source)
    state = sum(s.state_bytes for s in active) + 2 * ((meta.chunk_count + 7) >> 3)
    if len(active) >= config.max_transfers:
        return f"receiver busy: {len(active)} transfers in progress"
    if from_source >= config.max_transfers_per_source:
        return f"receiver busy: {from_source} transfers from {source} in progress"
    if state > config.max_state_bytes:
        return "receiver busy: no memory left for another transfer's state"
    return ""


def unvalidated_refusal(
    sessions: Iterable[ReceiverSession], session: ReceiverSession, config: ReceiverConfig
) -> str:
    """Why there is no room for a blast transfer from an address that never echoed a token
    ("": there is). A few, in their own pool, so that they never crowd out validated ones."""
    source = host_of(session.peer)
    active = [s for s in sessions if is_active(s)]
    others = [s for s in active if not s.validated and s is not session]
    meta = session.meta
    state = sum(s.state_bytes for s in active)
    state += 2 * (((meta.chunk_count if meta else 0) + 7) >> 3)
    if len(others) >= config.max_unvalidated_transfers:
        return "receiver busy: too many transfers from unvalidated addresses"
    if sum(1 for s in others if host_of(s.peer) == source) >= 2:
        return f"receiver busy: transfers from {source} in progress"
    if state > config.max_state_bytes // 4:
        return "receiver busy: no memory left for an unvalidated transfer"
    return ""


def pending_victim(
    sessions: Iterable[ReceiverSession], peer: Peer, config: ReceiverConfig
) -> ReceiverSession | None:
    """The session to evict before ``peer`` may open one more that is no transfer yet (None:
    there is room). A source at its own cap loses its own oldest such session; with the total
    cap reached, the source holding most of them does. Transfers are never evicted."""
    waiting = [s for s in sessions if not s.is_transfer and not s.validated]
    source = host_of(peer)
    own = [s for s in waiting if host_of(s.peer) == source]
    if len(own) >= config.max_pending_per_source:
        return min(own, key=lambda s: s.last_heard)
    if len(waiting) >= config.max_pending_sessions:
        counts = collections.Counter(host_of(s.peer) for s in waiting)
        heaviest, _ = counts.most_common(1)[0]
        victims = [s for s in waiting if host_of(s.peer) == heaviest]
        return min(victims, key=lambda s: s.last_heard)
    return None


def is_active(session: ReceiverSession) -> bool:
    """A transfer that has started and has no verdict yet."""
    return session.state in ACTIVE_STATES


def host_of(peer: Peer) -> object:
    """The host part of a peer address: limits apply per host, whatever its ports."""
    if isinstance(peer, tuple) and peer:
        return peer[0]
    return peer
