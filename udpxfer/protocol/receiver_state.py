"""The receiver session's state machine: its states, the allowed transitions, the step function.

As in h11's ``_state.py``, everything that changes a session's state is here: the session
calls ``next_state`` with what happened (a ``Step``) and stores what it returns; nothing
assigns ``state`` anywhere else. Every caller checks the state before it takes a step, so a
datagram, however forged, never reaches a step that the table lacks: ``IllegalTransition`` is
a bug in the session, never a peer's doing, and keeps its traceback.

```
AWAITING_META ─META─> PROBATION ─BEGIN─> RECEIVING ─ALL_HELD─> VERIFYING ─END─> FINISHED
                                          │   ^                   │               │ CLOSE
                                          │   └────BLOCKS_BAD─────┘               v
                                          └─END─> FINISHED                      CLOSED
CLOSE from AWAITING_META or PROBATION: DROPPED; from RECEIVING, VERIFYING or FINISHED: CLOSED.
```
"""

from __future__ import annotations

from enum import Enum, auto


class ReceiverState(Enum):
    """Where a receiver session is."""

    AWAITING_META = auto()  # datagrams of an unknown session, kept (bounded) until META
    PROBATION = auto()  # unvalidated blast META: nothing is created until DATA or END follows
    RECEIVING = auto()
    VERIFYING = auto()  # every chunk held, the driver is hashing
    FINISHED = auto()  # verdict reached; lingering to answer repeated ENDs
    CLOSED = auto()  # over, after it was a transfer
    DROPPED = auto()  # over before it was a transfer (refused, silent): nothing was created


class Step(Enum):
    """What happened to a session, as far as its state is concerned."""

    META = auto()  # its first META was kept (within the receiver's limits)
    BEGIN = auto()  # the transfer starts: the address was validated, or DATA/END followed
    ALL_HELD = auto()  # every chunk is held: the driver hashes the file
    BLOCKS_BAD = auto()  # the hash named bad blocks: their chunks are fetched again
    END = auto()  # a verdict, a timeout, an abort or a shutdown: TransferEnded
    CLOSE = auto()  # nothing more to answer: refused, shut down, superseded, lingering over


_S = ReceiverState
TRANSITIONS: dict[ReceiverState, dict[Step, ReceiverState]] = {
    _S.AWAITING_META: {Step.META: _S.PROBATION, Step.CLOSE: _S.DROPPED},
    _S.PROBATION: {Step.BEGIN: _S.RECEIVING, Step.CLOSE: _S.DROPPED},
    _S.RECEIVING: {Step.ALL_HELD: _S.VERIFYING, Step.END: _S.FINISHED, Step.CLOSE: _S.CLOSED},
    _S.VERIFYING: {Step.BLOCKS_BAD: _S.RECEIVING, Step.END: _S.FINISHED, Step.CLOSE: _S.CLOSED},
    _S.FINISHED: {Step.CLOSE: _S.CLOSED},
    _S.CLOSED: {Step.CLOSE: _S.CLOSED},
    _S.DROPPED: {Step.CLOSE: _S.DROPPED},
}

# States of a session that became a transfer (its file exists): it began, and stays one.
TRANSFER_STATES = frozenset({_S.RECEIVING, _S.VERIFYING, _S.FINISHED, _S.CLOSED})
OVER_STATES = frozenset({_S.CLOSED, _S.DROPPED})  # nothing more to do or to answer
ACTIVE_STATES = frozenset({_S.RECEIVING, _S.VERIFYING})  # started, no verdict yet


class IllegalTransition(AssertionError):
    """A step that the table does not allow from the session's state: a bug in the session
    (every caller checks the state first), not something a peer can cause."""


def next_state(state: ReceiverState, step: Step) -> ReceiverState:
    """The state that ``step`` leads to from ``state``.

    Raises:
        IllegalTransition: the table has no such transition.
    """
    try:
        return TRANSITIONS[state][step]
    except KeyError:
        raise IllegalTransition(f"{step.name} in {state.name}") from None
