"""The receiver's files: a ``.partial`` file per transfer, written straight from the receive
buffers, resumed from an earlier attempt, its state saved, and verified in worker threads.
"""

from __future__ import annotations

import abc
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from udpxfer.errors import TransportError
from udpxfer.net.files import PartialFile
from udpxfer.net.resume import SourceIdentity, chunks_of_blocks
from udpxfer.paths import ensure_writable_dir
from udpxfer.protocol.ranges import Bitmap, missing_ranges
from udpxfer.protocol.wire import MAX_BLOCK_REPAIRS, NO_DIGEST, Mode

if TYPE_CHECKING:
    from udpxfer.net.receiving import ReceiverObserver
    from udpxfer.net.timing import Clock
    from udpxfer.protocol.endpoint import StoreRun
    from udpxfer.protocol.receiver import ReceiverSession

STATE_SAVE_INTERVAL_S = 1.0  # resume sidecars are rewritten this often


class ReceiverFiles(abc.ABC):
    """The file side of ``ReceiverServer``: which transfer writes to which ``.partial`` file.

    The server adds the socket, the loop, the traces and the reports, and acts on the
    endpoint's events (``_handle_events``) and output (``_flush``) when a file needs it.
    """

    def __init__(self, out_dir: Path, clock: Clock, observer: ReceiverObserver | None) -> None:
        self.out_dir = ensure_writable_dir(out_dir)
        self.clock = clock
        self.observer = observer
        from udpxfer.protocol.batch import payload_views  # numpy: the receiving side only

        self._files: dict[ReceiverSession, PartialFile] = {}
        self._refused: set[ReceiverSession] = set()
        self._hashed: queue.Queue[tuple[ReceiverSession, bytes | list[int] | TransportError]] = (
            queue.Queue()
        )
        self._hashing = 0  # verifications under way in worker threads
        self._next_state_save = 0.0
        self._payload_views = payload_views
        self._unwritten = False  # chunks gathered from the arena, not yet written

    @abc.abstractmethod
    def _handle_events(self, now: float) -> None:
        """Act on the endpoint's events (the server's part)."""

    @abc.abstractmethod
    def _flush(self) -> None:
        """Send what the endpoint has to send (the server's part)."""

    def _store(self, session: ReceiverSession, offset: int, payload: bytes | memoryview) -> None:
        partial = self._files.get(session) or self._open(session, self.clock())
        if partial is not None:
            self._unwritten = True
            try:
                partial.write_at(offset, payload)
            except TransportError as exc:
                session.close(self.clock(), str(exc))

    def _supersede(self, session: ReceiverSession, identity: SourceIdentity, now: float) -> None:
        """The same source host sends the same file again (its sender was restarted): end
        the older transfer, so that the new one resumes from what it wrote."""
        host = session.peer[0] if isinstance(session.peer, tuple) else session.peer
        for other, partial in list(self._files.items()):
            other_host = other.peer[0] if isinstance(other.peer, tuple) else other.peer
            known = partial.identity
            same = known is not None and known.same_source(identity)
            if other is not session and same and other_host == host:
                other.supersede(now)
                self._handle_events(now)

    def _save_states(self, now: float) -> None:
        """Resume sidecars of the transfers in progress, at intervals."""
        if now < self._next_state_save:
            return
        self._next_state_save = now + STATE_SAVE_INTERVAL_S
        for session, partial in self._files.items():
            if partial.identity is not None and session.is_transfer:
                try:
                    partial.save_state_soon(session.held)
                except TransportError as exc:
                    session.close(now, str(exc))

    def _write_gathered(self) -> None:
        """Write the chunks gathered from the last receive, before its buffer is reused, and
        let the hash run over what is now final."""
        for session, partial in self._files.items():
            try:
                partial.flush()
            except TransportError as exc:
                session.close(self.clock(), str(exc))
                continue
            partial.final_prefix(session.contiguous * session.chunk_size)

    def _open(self, session: ReceiverSession, now: float) -> PartialFile | None:
        """The session's ``.partial`` file, created on its first chunk or its start event;
        a ``NAME.partial`` left by an earlier transfer of the same source is resumed."""
        if session in self._files:
            return self._files[session]
        meta = session.meta
        if meta is None or session in self._refused:
            return None
        identity = None
        if meta.mode is Mode.RELIABLE and meta.block_chunks:
            identity = SourceIdentity(
                meta.name,
                meta.size,
                meta.sha256.hex(),
                meta.mtime_ns,
                meta.chunk_size,
                meta.block_chunks,
            )
            self._supersede(session, identity, now)
        try:
            partial = PartialFile(
                self.out_dir,
                meta.name,
                meta.size,
                identity,
                busy=frozenset(p.path for p in self._files.values()),
            )
        except TransportError as exc:
            self._refused.add(session)
            session.close(now, str(exc))
            return None
        self._files[session] = partial
        if partial.resumed_blocks is not None:
            held = chunks_of_blocks(partial.resumed_blocks, meta.chunk_count, meta.block_chunks)
            bitmap = Bitmap(meta.chunk_count)
            bitmap.set_ranges(missing_ranges(1 - held))
            session.resume(bitmap)
        if self.observer is not None:
            self.observer.transfer_started(session)
        return partial

    def _store_run(self, run: StoreRun, buffer: memoryview, now: float) -> None:
        """Gather the new chunks of one receive for writing (straight from ``buffer``)."""
        session, batch, positions = run.session, run.batch, run.positions
        partial = self._files.get(session) or self._open(session, now)
        if partial is None:
            return
        self._unwritten = True
        chunk_size = session.chunk_size
        if run.plain is not None:  # keyed: authenticated (and decrypted) payloads
            payloads = [run.plain[p] for p in positions.tolist()]
        else:
            payloads = self._payload_views(buffer, batch, positions)
        index = batch.index[positions]
        try:
            first, last = int(index[0]), int(index[-1])
            if last - first == index.size - 1 and (
                index.size < 3 or bool((index[1:] - index[:-1] == 1).all())
            ):  # one run of consecutive chunks (the usual)
                n_bytes = int(batch.payload_bytes[positions].sum())
                partial.write_run(first * chunk_size, payloads, n_bytes)
                return
            for chunk, payload in zip(index.tolist(), payloads, strict=True):
                partial.write_at(chunk * chunk_size, payload)
        except TransportError as exc:
            session.close(now, str(exc))

    def _verify(self, session: ReceiverSession, partial: PartialFile, now: float) -> None:
        """Hash the file in a worker thread; the loop goes on answering the sender meanwhile.

        hashlib and pread release the GIL on large blocks, so a large file's hash does not
        hold the receive loop up (a long silence would make the sender give up).
        """
        try:
            partial.flush()  # every chunk is held: nothing more is written to this file
        except TransportError as exc:
            session.close(now, str(exc))
            return

        meta = session.meta
        manifest = list(session.manifest) if session.manifest_complete else []
        if session.block_repairs >= MAX_BLOCK_REPAIRS:
            manifest = []  # a forger that keeps at it gets a mismatch in the end
        block_bytes = meta.block_chunks * meta.chunk_size if meta is not None else 0

        def work() -> None:
            try:
                digest = partial.sha256()
                bad: list[int] = []
                if meta is not None and meta.sha256 not in (digest, NO_DIGEST) and manifest:
                    # Wrong by content (forged, or corrupt past the CRC): find the blocks.
                    bad = partial.bad_blocks(manifest, block_bytes)
                self._hashed.put((session, bad or digest))
            except TransportError as exc:
                self._hashed.put((session, exc))

        self._hashing += 1
        threading.Thread(target=work, name="udpxfer-verify", daemon=True).start()

    def _take_hashes(self) -> None:
        """Hand finished hashes to their sessions."""
        while True:
            try:
                session, result = self._hashed.get_nowait()
            except queue.Empty:
                return
            self._hashing -= 1
            now = self.clock()
            if isinstance(result, TransportError):
                session.close(now, str(result))
            elif isinstance(result, list):
                partial = self._files.get(session)
                if partial is not None:
                    partial.restart_hash()
                session.blocks_bad(result, now)
            else:
                session.hash_computed(result, now)
            self._handle_events(now)
            self._flush()
