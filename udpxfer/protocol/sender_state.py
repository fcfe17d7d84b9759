"""The sender session's states and the one table of the moves between them."""

from __future__ import annotations

from enum import Enum, auto


class SenderState(Enum):
    """Where a sender session is; ``TRANSITIONS`` lists every move it can make."""

    HANDSHAKE = auto()  # META sent, waiting for the receiver's HELLO (reliable or keyed)
    SENDING = auto()  # first pass
    WAITING = auto()  # END sent, waiting for NACK or DONE
    REPAIRING = auto()  # resending chunks the receiver asked for
    CLOSING = auto()  # blast: everything sent, END copies going out, verdict awaited
    DONE = auto()
    FAILED = auto()


_ENDS = frozenset({SenderState.DONE, SenderState.FAILED})

# Every move a sender session makes, and nothing else: SenderCore._move refuses the rest (as
# h11's _state.py keeps its machine in one table). Blast mode never repairs and reliable mode
# never closes; a verdict, an ABORT, a timeout or the user may end the session from any state.
TRANSITIONS: dict[SenderState, frozenset[SenderState]] = {
    SenderState.HANDSHAKE: frozenset({SenderState.SENDING}) | _ENDS,  # the HELLO accepted
    SenderState.SENDING: frozenset({SenderState.WAITING, SenderState.CLOSING}) | _ENDS,
    SenderState.WAITING: frozenset({SenderState.REPAIRING}) | _ENDS,  # a NACK asked for chunks
    SenderState.REPAIRING: frozenset({SenderState.WAITING}) | _ENDS,  # the repairs are out
    SenderState.CLOSING: _ENDS,
    # Over is over: a DONE or ABORT read after the verdict (the driver reads its socket empty
    # before it looks at ``finished``), forged or not, ends nothing a second time.
    SenderState.DONE: frozenset(),
    SenderState.FAILED: frozenset(),
}
