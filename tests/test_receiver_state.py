"""The receiver's state table: what it allows, and that it refuses the rest."""

from __future__ import annotations

import pytest

from udpxfer.protocol.receiver_state import (
    OVER_STATES,
    TRANSFER_STATES,
    TRANSITIONS,
    IllegalTransition,
    ReceiverState,
    Step,
    next_state,
)


def test_every_state_has_a_row_and_can_close() -> None:
    assert set(TRANSITIONS) == set(ReceiverState)
    for state in ReceiverState:
        assert next_state(state, Step.CLOSE) in OVER_STATES


def test_a_transfer_stays_a_transfer() -> None:
    """Once begun, no step leads out of the transfer states (``is_transfer`` is the state)."""
    for state in TRANSFER_STATES:
        assert set(TRANSITIONS[state].values()) <= TRANSFER_STATES
    for state in set(ReceiverState) - TRANSFER_STATES:
        assert ReceiverState.CLOSED not in TRANSITIONS[state].values()


def test_the_lifecycle_of_a_transfer() -> None:
    state = ReceiverState.AWAITING_META
    for step, want in [
        (Step.META, ReceiverState.PROBATION),
        (Step.BEGIN, ReceiverState.RECEIVING),
        (Step.ALL_HELD, ReceiverState.VERIFYING),
        (Step.BLOCKS_BAD, ReceiverState.RECEIVING),
        (Step.ALL_HELD, ReceiverState.VERIFYING),
        (Step.END, ReceiverState.FINISHED),
        (Step.CLOSE, ReceiverState.CLOSED),
    ]:
        state = next_state(state, step)
        assert state is want


ILLEGAL = [(s, step) for s in ReceiverState for step in Step if step not in TRANSITIONS[s]]


@pytest.mark.parametrize(("state", "step"), ILLEGAL)
def test_a_step_not_in_the_table_is_refused(state: ReceiverState, step: Step) -> None:
    with pytest.raises(IllegalTransition, match=f"{step.name} in {state.name}"):
        next_state(state, step)
