"""SIGINT and SIGTERM as a command wants them, within a block; the previous handlers after it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

from udpxfer.errors import Interrupted


def raise_interrupted(sig: signal.Signals) -> NoReturn:
    """A handler for ``handled``: raise ``Interrupted`` in the main thread."""
    raise Interrupted(sig.name)


@contextmanager
def handled(handler: Callable[[signal.Signals], None], *signals: signal.Signals) -> Iterator[None]:
    """Within the block, each of ``signals`` calls ``handler(sig)`` instead of its usual action.

    The previous handlers come back when the block ends, however it ends. Handlers can be set
    from the main thread only: elsewhere (tests run commands in threads) the block runs with
    the signals as they were.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        handler(signal.Signals(signum))

    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:  # None: set outside Python, which Python cannot put back
                signal.signal(sig, old)
