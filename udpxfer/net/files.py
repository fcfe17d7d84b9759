"""``NAME.partial`` files: created safely, written at offsets, hashed as they fill, renamed
once verified.

Nothing here ever writes outside the directory it is given.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from udpxfer.errors import TransportError, map_os_errors
from udpxfer.net.hashing import PrefixHasher
from udpxfer.net.resume import (
    SourceIdentity,
    blocks_held,
    read_state,
    remove_state,
    state_path,
    write_state,
)
from udpxfer.paths import PARTIAL_SUFFIX, safe_name, unique_path

if TYPE_CHECKING:
    from udpxfer.protocol.ranges import Bitmap

MAX_RUN_CHUNKS = 512  # below IOV_MAX (1024 on Linux)


class PartialFile:
    """A ``NAME.partial`` file of a known size, written at offsets, renamed once verified.

    The file is created exclusively (never follows or replaces an existing path) and sized up
    front (sparse, so holes read as zeros). Chunks that continue each other are gathered and
    written with one ``pwritev`` at ``flush()``: fewer system calls than one write per chunk,
    and a full disk is an error to report, not a crash as it would be through a memory map.
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        size: int,
        identity: SourceIdentity | None = None,
        busy: frozenset[Path] = frozenset(),
    ) -> None:
        """Create ``NAME.partial`` in ``directory``, or reopen one to resume.

        With an ``identity``, a ``NAME.partial`` whose sidecar describes the same source is
        reopened (``resumed_blocks`` says what it holds); one of another version of the file,
        not in use (``busy``), is replaced: a transfer never splices two versions.
        """
        self.identity = identity
        self.resumed_blocks: bytes | None = None
        base = safe_name(name)
        candidate = Path(str(directory / base) + PARTIAL_SUFFIX)
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0)
        self._fd = -1
        if identity is not None and candidate not in busy and not (directory / base).exists():
            blocks = read_state(candidate, identity)
            if blocks is not None:
                try:
                    self._fd = os.open(candidate, flags)
                    self.resumed_blocks = blocks
                except OSError:
                    self._fd = -1
            elif state_path(candidate).exists() and not candidate.is_symlink():
                # Our own leftover of another version of the file: start over.
                with contextlib.suppress(OSError):
                    candidate.unlink()
                remove_state(candidate)
        if self._fd >= 0:
            self.final_path = directory / base
        else:
            self.final_path = unique_path(directory, base, also_free=(PARTIAL_SUFFIX,))
        self.path = Path(str(self.final_path) + PARTIAL_SUFFIX)
        self.size = size
        if self._fd < 0:
            with map_os_errors(TransportError, f"cannot create {self.path}"):
                self._fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        with map_os_errors(TransportError, f"cannot make room for {self.path}"):
            try:
                os.ftruncate(self._fd, size)
                _check_room(self._fd, size)
            except OSError:
                os.close(self._fd)
                self.path.unlink(missing_ok=True)
                raise
        self._run: list[bytes | memoryview] = []  # chunks waiting for flush(), back to back
        self._run_start = self._run_end = 0
        # Made once: flush() runs after every receive that stored chunks.
        self._write_errors = map_os_errors(TransportError, f"cannot write {self.path}")
        self._hasher = PrefixHasher(self._fd)
        self._saver: threading.Thread | None = None  # a background save_state_soon
        self._saver_error: TransportError | None = None
        self._state_lock = threading.Lock()  # the sidecar is written under it
        self._state_generation = 0  # bumped by every save: only the newest one records
        self.closed = False

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """Store ``data`` at ``offset`` (inside the file) by the next ``flush()``.

        ``data`` is kept by reference: it must not change until ``flush()`` returns.

        Raises:
            TransportError: writing an earlier run failed (a full disk, an I/O error).
        """
        if self._run and (offset != self._run_end or len(self._run) >= MAX_RUN_CHUNKS):
            self.flush()
        if not self._run:
            self._run_start = self._run_end = offset
        self._run.append(data)
        self._run_end += len(data)

    def write_run(self, offset: int, pieces: Sequence[bytes | memoryview], n_bytes: int) -> None:
        """Store ``pieces`` (``n_bytes`` together) back to back from ``offset``, by the next
        ``flush()``; kept by reference like ``write_at``.

        Raises:
            TransportError: writing an earlier run failed.
        """
        if self._run and offset != self._run_end:
            self.flush()
        if not self._run:
            self._run_start = self._run_end = offset
        self._run.extend(pieces)
        self._run_end += n_bytes

    def flush(self) -> None:
        """Write what ``write_at`` and ``write_run`` gathered.

        Raises:
            TransportError: the system refused the write.
        """
        if not self._run:
            return  # the usual case for most files after a receive: nothing gathered
        run, self._run = self._run, []
        offset = self._run_start
        first = 0  # run[first:] is still to be written
        with self._write_errors:
            while first < len(run):
                written = os.pwritev(self._fd, run[first : first + MAX_RUN_CHUNKS], offset)
                offset += written
                while first < len(run) and written >= len(run[first]):
                    written -= len(run[first])
                    first += 1
                if first < len(run) and written:
                    run[first] = memoryview(run[first])[written:]  # a short write: go on there

    def final_prefix(self, n_bytes: int) -> None:
        """The first ``n_bytes`` are written for good (flushed, never written again): hash
        them in the background."""
        self._hasher.advance(min(n_bytes, self.size))

    def sha256(self) -> bytes:
        """Digest of the whole file, once every byte is final (gathered chunks are written
        first; holes read as zeros).

        Raises:
            TransportError: the file cannot be read.
        """
        self.flush()
        with map_os_errors(TransportError, f"cannot read {self.path}"):
            return self._hasher.result(self.size)

    def bad_blocks(self, manifest: list[bytes | None], block_bytes: int) -> list[int]:
        """Indexes of the blocks whose SHA-256 differs from the manifest's.

        Raises:
            TransportError: the file cannot be read.
        """
        bad = []
        with map_os_errors(TransportError, f"cannot read {self.path}"):
            for block, expected in enumerate(manifest):
                start = block * block_bytes
                data = os.pread(self._fd, min(block_bytes, self.size - start), start)
                if hashlib.sha256(data).digest() != expected:
                    bad.append(block)
        return bad

    def restart_hash(self) -> None:
        """Hash again from the start (blocks are being written again)."""
        self._hasher.close()
        self._hasher = PrefixHasher(self._fd)

    def close(self) -> None:
        """Write what is gathered and close the file, leaving it as ``NAME.partial``."""
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
        finally:
            self._hasher.close()
            self._cancel_saves()
            os.close(self._fd)

    def save_state(self, held: Bitmap) -> None:
        """Write the resume sidecar for the chunks held (all of them written already).

        Raises:
            TransportError: the file system refused.
        """
        if self.identity is None or self.closed:
            return
        self.flush()
        with self._state_lock:
            self._state_generation += 1  # a background save still syncing records nothing
            write_state(
                self.path, self.identity, blocks_held(held, self.identity.block_chunks), self._fd
            )

    def save_state_soon(self, held: Bitmap) -> None:
        """``save_state`` in a worker thread: syncing a file being written at line rate can
        take a good part of a second, which the receive loop must not wait for.

        What it records is written (``flush``) before the worker syncs it, through a
        descriptor of its own; the sidecar is written only if no later save (or the end of
        the transfer) came meanwhile; a save still under way makes this one wait for the
        next interval.

        Raises:
            TransportError: an earlier background save failed.
        """
        if self.identity is None or self.closed:
            return
        if self._saver is not None and self._saver.is_alive():
            return
        error, self._saver_error = self._saver_error, None
        if error is not None:
            raise error
        self.flush()
        blocks = blocks_held(held, self.identity.block_chunks)
        identity, path = self.identity, self.path
        fd = os.dup(self._fd)
        with self._state_lock:
            self._state_generation += 1
            generation = self._state_generation

        def save() -> None:
            try:
                with map_os_errors(TransportError, f"cannot sync {path}"):
                    os.fdatasync(fd)
                with self._state_lock:
                    if generation == self._state_generation:
                        write_state(path, identity, blocks, fd, sync=False)
            except TransportError as exc:
                self._saver_error = exc
            finally:
                os.close(fd)

        self._saver = threading.Thread(target=save, name="udpxfer-state", daemon=True)
        self._saver.start()

    def _cancel_saves(self) -> None:
        """No background save records anything from now on (the file is being closed)."""
        with self._state_lock:
            self._state_generation += 1

    def commit(self) -> Path:
        """Close and rename to the final name (a fresh one if that name appeared meanwhile)."""
        self.close()
        remove_state(self.path)
        if self.final_path.exists():
            self.final_path = unique_path(self.final_path.parent, self.final_path.name)
        with map_os_errors(TransportError, f"cannot rename {self.path}"):
            os.rename(self.path, self.final_path)
        return self.final_path


def _check_room(fd: int, size: int) -> None:
    """Refuse a file that the filesystem has no room for (ENOSPC).

    Space is checked, not reserved: reserving would let a flood of forged metadata fill the
    disk with preallocated blocks; a sparse file costs only what arrives.
    """
    stats = os.fstatvfs(fd)
    if size and stats.f_bavail * stats.f_frsize < size:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
