"""Where received files and reports go: safe names, unique paths, ``.partial`` files.

Nothing here ever writes outside the directory it is given.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from udpxfer.protocol.ranges import Bitmap

from udpxfer.errors import TransportError, UsageError, map_os_errors
from udpxfer.paths import PARTIAL_SUFFIX, safe_name, unique_path

HASH_BLOCK_BYTES = 1 << 22
MAX_RUN_CHUNKS = 512  # below IOV_MAX (1024 on Linux)


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
        with map_os_errors(TransportError, f"cannot write {self.path}"):
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


STATE_SUFFIX = ".state"  # the resume sidecar beside NAME.partial
STATE_SCHEMA = "udpxfer.partial/1"


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    """What makes two transfers the same file: a changed source never resumes."""

    name: str
    size: int
    sha256: str
    mtime_ns: int
    chunk_size: int
    block_chunks: int


def state_path(partial: Path) -> Path:
    """The sidecar of a ``.partial`` file."""
    return Path(str(partial) + STATE_SUFFIX)


def write_state(
    partial: Path, identity: SourceIdentity, blocks: bytes, fd: int, *, sync: bool = True
) -> None:
    """Record which blocks are on disk, atomically: data synced first (``sync``; or by the
    caller), then a temporary file renamed over the sidecar, so a crash leaves the old state
    or the new, never half of one.

    Raises:
        TransportError: the file system refused.
    """
    target = state_path(partial)
    doc = {"schema": STATE_SCHEMA, **asdict(identity), "blocks": base64.b64encode(blocks).decode()}
    tmp = target.with_name(target.name + ".tmp")
    with map_os_errors(TransportError, f"cannot write {target}"):
        if sync:
            os.fdatasync(fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        out = os.open(tmp, flags, 0o644)
        try:
            os.write(out, json.dumps(doc).encode())
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, target)


def read_state(partial: Path, identity: SourceIdentity) -> bytes | None:
    """The block map of a sidecar that describes this very source, or None.

    Anything unreadable, foreign or of another version of the file gives None.
    """
    target = state_path(partial)
    try:
        if target.is_symlink() or partial.is_symlink() or not partial.is_file():
            return None
        raw = target.read_bytes()
        if len(raw) > 1 << 20:
            return None
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
            return None
        if any(doc.get(k) != v for k, v in asdict(identity).items()):
            return None
        if os.stat(partial).st_size != identity.size:
            return None
        blocks = base64.b64decode(str(doc.get("blocks", "")), validate=True)
    except (OSError, ValueError, json.JSONDecodeError, binascii.Error):
        return None
    return blocks


def remove_state(partial: Path) -> None:
    """Remove a sidecar (the file is final, or it started over)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path(partial))


def blocks_on_disk(held: np.ndarray, block_chunks: int) -> bytes:
    """Packed bits (little-endian) of the blocks whose every chunk is held."""
    import numpy as np

    if block_chunks <= 0 or held.size == 0:
        return b""
    return np.packbits(_full_blocks(held, block_chunks), bitorder="little").tobytes()


def blocks_held(held: Bitmap, block_chunks: int, stretch_chunks: int = 1 << 20) -> bytes:
    """``blocks_on_disk`` of a packed chunk bitmap, a stretch of about ``stretch_chunks`` at a
    time: a byte per chunk only for the stretch, not for a whole (huge) file."""
    import numpy as np

    size = held.size
    if block_chunks <= 0 or size == 0:
        return b""
    per = block_chunks * 8  # stretches of whole blocks that start on a whole byte
    step = max(per, stretch_chunks // per * per)
    bits = np.frombuffer(held.bits, dtype=np.uint8)
    parts = []
    for start in range(0, size, step):
        end = min(size, start + step)
        stretch = np.unpackbits(bits[start >> 3 : (end + 7) >> 3], bitorder="little")
        parts.append(_full_blocks(stretch[: end - start], block_chunks))
    return np.packbits(np.concatenate(parts), bitorder="little").tobytes()


def _full_blocks(held: np.ndarray, block_chunks: int) -> np.ndarray:
    """0/1 per block of ``block_chunks`` chunks: 1 where every chunk is held (the last block
    may be shorter)."""
    import numpy as np

    blocks = -(-held.size // block_chunks)
    padded = np.ones(blocks * block_chunks, dtype=np.uint8)
    padded[: held.size] = held
    full = np.all(padded.reshape(blocks, block_chunks), axis=1)
    return np.asarray(full, dtype=np.uint8)


def chunks_of_blocks(blocks: bytes, chunk_count: int, block_chunks: int) -> np.ndarray:
    """0/1 per chunk: held when its block is in ``blocks``."""
    import numpy as np

    if block_chunks <= 0 or chunk_count == 0:
        return np.zeros(chunk_count, dtype=np.uint8)
    n_blocks = -(-chunk_count // block_chunks)
    bits = np.unpackbits(np.frombuffer(blocks, dtype=np.uint8), bitorder="little")[:n_blocks]
    full = np.zeros(n_blocks, dtype=np.uint8)
    full[: bits.size] = bits
    return np.repeat(full, block_chunks)[:chunk_count]
