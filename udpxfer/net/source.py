"""The file a sender reads: one read-only memory map whose resident pages stay few.

The sender slices its payloads out of a map of the whole file (no copies), and a NACK may
ask for any chunk again until the end. Mapped pages the process has touched count in its
resident set until they are unmapped, so a plain map shows a sender the size of the file in
``top`` (the page cache holds the file either way). So the map is read sequentially
(``MADV_SEQUENTIAL``: read ahead, and pages we drop do not count as recently used), and the
pages behind the hashing pass and the send point are dropped from our page tables at
intervals (``MADV_DONTNEED``). On a read-only shared file map that never loses data: a chunk
sent again later faults its page back in from the page cache, or from the disk if the cache
let it go.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path

from udpxfer.errors import UsageError, map_os_errors
from udpxfer.protocol.wire import block_chunks_for, chunk_count_for

HASH_STEP_BYTES = 8 << 20  # the up-front hash drops what it has read this often
DROP_STEP_BYTES = 4 << 20  # the first pass drops what it has sent this often
# A fault can map far more than the page touched: the pages around it (fault-around, 64 KiB)
# or the whole large folio of the page cache holding it (up to a PMD, 2 MiB on x86-64). Linux
# 6.18 on ext4 mapped 1.8 MiB per randomly touched chunk, so a resent chunk's whole aligned
# neighbourhood of this size is dropped right after it was sent.
AROUND_BYTES = 2 << 20

_PAGE = mmap.PAGESIZE
# madvise is missing on some platforms; there the map simply stays resident.
_DONTNEED: int | None = getattr(mmap, "MADV_DONTNEED", None)
_SEQUENTIAL: int | None = getattr(mmap, "MADV_SEQUENTIAL", None)


class MappedFile:
    """A read-only view of a whole file (a memory map; empty files have none)."""

    def __init__(self, path: Path) -> None:
        with map_os_errors(UsageError, f"cannot read {path}"):
            try:
                handle = path.open("rb")
            except IsADirectoryError as exc:
                raise UsageError(f"{path} is a directory, not a file") from exc
            with handle:
                size = os.fstat(handle.fileno()).st_size
                self._map = (
                    mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) if size else None
                )
        self.size = size
        if self._map is not None and _SEQUENTIAL is not None:
            self._map.madvise(_SEQUENTIAL)
        self.data: bytes | memoryview = memoryview(self._map) if self._map is not None else b""

    def drop(self, start: int, end: int) -> None:
        """Let the pages wholly inside bytes ``[start, end)`` go from our resident set.

        They stay in the page cache; touching them again maps them again.
        """
        first = -(-start // _PAGE) * _PAGE
        last = self.size if end >= self.size else end // _PAGE * _PAGE
        if self._map is None or _DONTNEED is None or last <= first:
            return
        self._map.madvise(_DONTNEED, first, last - first)

    def close(self) -> None:
        if isinstance(self.data, memoryview):
            self.data.release()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                # Views of it are still referenced (by an error on its way up): the map is
                # closed when the last of them goes; unmapping now would pull the data away
                # from under them.
                self._map = None


class SentPages:
    """Drops the pages a sender has sent from its resident set.

    The first pass walks the file once: what lies behind it goes every ``DROP_STEP_BYTES``.
    A chunk sent again (a repair) lies anywhere: the ``AROUND_BYTES`` around it go at once,
    which costs a few microseconds a chunk and keeps scattered repairs from mapping the file
    back in piece by piece.
    """

    def __init__(self, source: MappedFile, chunk_size: int) -> None:
        self._source = source
        self._chunk_size = chunk_size
        self._sent_to = 0  # the first pass has sent bytes [0, _sent_to)
        self._dropped_to = 0  # and dropped [0, _dropped_to)

    def sent(self, first: int, count: int) -> None:
        """Chunks ``first .. first+count-1`` were just sent from the map."""
        size = self._source.size
        start = first * self._chunk_size
        end = min((first + count) * self._chunk_size, size)
        if start < self._sent_to:  # sent before: a repair
            around = start // AROUND_BYTES * AROUND_BYTES
            self._source.drop(around, -(-end // AROUND_BYTES) * AROUND_BYTES)
            return
        self._sent_to = end
        if end - self._dropped_to >= DROP_STEP_BYTES or end == size:
            self._source.drop(self._dropped_to, end)
            self._dropped_to = end


def file_digests(
    data: bytes | memoryview, chunk_size: int, *, done: Callable[[int, int], None] | None = None
) -> tuple[bytes, tuple[bytes, ...]]:
    """SHA-256 of the whole file and of each manifest block, in one pass over the data.

    hashlib releases the GIL on large buffers, so the block hashes run in a worker thread
    beside the whole-file hash, the two kept within about ``HASH_STEP_BYTES`` of each other
    (one left to run ahead on a busy machine would keep what lies between resident).
    ``done(start, end)`` is told, about every ``HASH_STEP_BYTES``, of bytes both hashes
    are past (``MappedFile.drop`` them).
    """
    size = len(data)
    count = chunk_count_for(size, chunk_size)
    block_bytes = block_chunks_for(count, chunk_size) * chunk_size
    whole = hashlib.sha256()
    blocks: list[bytes] = []
    view = memoryview(data)
    hashed = [0, size if not block_bytes else 0]  # bytes behind the whole hash, the blocks'
    moved = threading.Condition()

    def reached(side: int, end: int) -> None:
        """``side`` has hashed ``end`` bytes; wait while it is a step ahead of the other."""
        other = 1 - side
        with moved:
            hashed[side] = end
            moved.notify_all()
            moved.wait_for(lambda: hashed[side] - hashed[other] <= HASH_STEP_BYTES)

    def hash_blocks() -> None:
        try:
            for start in range(0, size, block_bytes):
                blocks.append(hashlib.sha256(view[start : start + block_bytes]).digest())
                reached(1, min(start + block_bytes, size))
        finally:
            with moved:  # never leave the whole hash waiting
                hashed[1] = size
                moved.notify_all()

    worker = threading.Thread(target=hash_blocks, name="udpxfer-manifest")
    if block_bytes:
        worker.start()
    released = 0
    for start in range(0, size, HASH_STEP_BYTES):
        reached(0, start)
        whole.update(view[start : start + HASH_STEP_BYTES])
        behind = min(start + HASH_STEP_BYTES, hashed[1], size)
        if done is not None and behind > released:
            done(released, behind)
            released = behind
    reached(0, size)
    if block_bytes:
        worker.join()
    if done is not None and size > released:
        done(released, size)
    view.release()
    return whole.digest(), tuple(blocks)
