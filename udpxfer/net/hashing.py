"""SHA-256 of files on disk: a whole file in large blocks, or a prefix as it becomes final."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

from udpxfer.errors import UsageError, map_os_errors

HASH_BLOCK_BYTES = 1 << 22


class PrefixHasher:
    """SHA-256 of a file's leading bytes, computed in a worker thread as they become final.

    ``advance(n)`` says the first ``n`` bytes will not change again; ``result(size)`` waits
    for the digest of the first ``size`` bytes. ``os.pread`` and hashlib release the GIL on
    large blocks, so the hash runs beside the receive loop, and a transfer's verification at
    the end has only its last stretch left to hash.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._digest = hashlib.sha256()
        self._done = 0  # bytes hashed
        self._target = 0  # bytes known to be final
        self._error: OSError | None = None
        self._closed = False
        self._waiting = False  # the worker waits for a new target (under the condition)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def advance(self, final_bytes: int) -> None:
        """The first ``final_bytes`` bytes of the file are written for good."""
        if final_bytes <= self._target or self._closed:
            return
        if self._thread is not None and not self._waiting:
            # The worker is hashing and reads the target when it is done: no lock, no wake-up
            # (a notify per call hands the interpreter lock back and forth for nothing).
            self._target = final_bytes
            if self._waiting:  # it went to wait meanwhile: wake it after all
                with self._cond:
                    self._cond.notify_all()
            return
        with self._cond:
            self._target = max(self._target, final_bytes)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="udpxfer-hash", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def result(self, size: int) -> bytes:
        """The digest of the first ``size`` bytes (all of them final by now).

        Raises:
            OSError: reading the file failed.
        """
        self.advance(size)
        with self._cond:
            self._cond.notify_all()  # the worker may wait on a target set without the lock
            while self._done < size and self._error is None and not self._closed:
                self._cond.wait(timeout=1.0)
                if self._thread is not None and not self._thread.is_alive():
                    break  # the worker died: report it below rather than wait forever
            if self._error is not None:
                raise self._error
            if self._done < size:
                raise OSError(errno.EBADF, "the file was closed while being hashed")
            return self._digest.copy().digest()

    def close(self) -> None:
        """Stop the worker (it finishes the block it is reading)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._done >= self._target and not self._closed:
                    self._waiting = True
                    # Bounded: a target set without the lock just as this thread came to
                    # wait is picked up at the latest here.
                    self._cond.wait(0.05)
                self._waiting = False
                if self._closed:
                    return
                start, end = self._done, min(self._target, self._done + HASH_BLOCK_BYTES)
            try:
                block = os.pread(self._fd, end - start, start)
                if len(block) != end - start:
                    raise OSError(errno.EIO, "the file is shorter than it should be")
            except OSError as exc:
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            self._digest.update(block)  # only this thread touches the digest until done
            with self._cond:
                self._done = end
                self._cond.notify_all()


def sha256_file(path: Path) -> bytes:
    """SHA-256 of a file read in large blocks.

    Raises:
        UsageError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with map_os_errors(UsageError, f"cannot read {path}"), path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.digest()
