"""The loops that connect sessions to sockets, the clock and files.

Like aioquic's ``transmit()``: hand the session what arrived, send what it returns, sleep
until its timer. Progress leaves through callbacks; the CLI connects them to tqdm.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from udpxfer.errors import TransportError, UsageError
from udpxfer.events import TransferEnded, TransferStarted, VerifyRequested
from udpxfer.files import (
    PartialFile,
    SourceIdentity,
    chunks_of_blocks,
    ensure_writable_dir,
    safe_name,
    unique_path,
)
from udpxfer.ranges import Bitmap, missing_ranges
from udpxfer.sender import SenderConfig, SenderSession
from udpxfer.transport import UdpTransport
from udpxfer.units import Address
from udpxfer.wire import NONCE_BYTES, Mode, block_chunks_for, chunk_count_for

if TYPE_CHECKING:
    from udpxfer.receiver import ReceiverConfig, ReceiverSession

Clock = Callable[[], float]
PROGRESS_INTERVAL_S = 0.1
_RECV_BURST = 256  # datagrams handled between two looks at timers and feedback
_HASH_POLL_S = 0.005  # how often an idle loop looks for finished hashes
STATE_SAVE_INTERVAL_S = 1.0  # resume sidecars are rewritten this often
MAX_BLOCK_REPAIRS = 8  # times a transfer may fetch bad blocks again before it is a mismatch


# -- sending ----------------------------------------------------------------------------


class _MappedFile:
    """A read-only view of a whole file (a memory map; empty files have none)."""

    def __init__(self, path: Path) -> None:
        try:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                self._map = (
                    mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) if size else None
                )
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory, not a file") from None
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        self.data: bytes | memoryview = memoryview(self._map) if self._map is not None else b""

    def close(self) -> None:
        if isinstance(self.data, memoryview):
            self.data.release()
        if self._map is not None:
            # A view of a chunk may outlive us in an exception's traceback (Ctrl-C while the
            # chunk was being framed): the map is then unmapped once that view is gone.
            with contextlib.suppress(BufferError):
                self._map.close()


def file_digests(data: bytes | memoryview, chunk_size: int) -> tuple[bytes, tuple[bytes, ...]]:
    """SHA-256 of the whole file and of each manifest block, in one pass over the data.

    hashlib releases the GIL on large buffers, so the block hashes run in a worker thread
    beside the whole-file hash.
    """
    size = len(data)
    count = chunk_count_for(size, chunk_size)
    block_bytes = block_chunks_for(count, chunk_size) * chunk_size
    whole = hashlib.sha256()
    blocks: list[bytes] = []
    view = memoryview(data)

    def hash_blocks() -> None:
        blocks.extend(
            hashlib.sha256(view[start : start + block_bytes]).digest()
            for start in range(0, size, block_bytes)
        )

    worker = threading.Thread(target=hash_blocks, name="udpxfer-manifest")
    if block_bytes:
        worker.start()
    whole.update(view)
    if block_bytes:
        worker.join()
    view.release()
    return whole.digest(), tuple(blocks)


def send_file(
    path: Path,
    to: Address,
    config: SenderConfig | None = None,
    *,
    on_progress: Callable[[SenderSession], None] | None = None,
    name: str | None = None,
    clock: Clock = time.monotonic,
    key: bytes | None = None,
    encrypt: bool = True,
) -> SenderSession:
    """Send one file to a receiver and return the finished session.

    Raises:
        UsageError: the file cannot be read or the address is bad.
        TransportError: the socket failed.
        KeyboardInterrupt: after telling the receiver that the transfer is cancelled.
    """
    if not path.is_file() and path.exists():
        raise UsageError(f"{path} is not a regular file")
    source = _MappedFile(path)
    try:
        mtime_ns = os.stat(path).st_mtime_ns
        chunk_size = (config or SenderConfig()).chunk_size
        digest, manifest = file_digests(source.data, chunk_size)
        transport = UdpTransport.connect(to)
        try:
            session_id = secrets.randbits(64)
            keying = None
            if key is not None:
                from udpxfer.keys import new_nonce
                from udpxfer.sender import SenderKeying

                keying = SenderKeying(key, session_id, new_nonce(), encrypt=encrypt)
            session = SenderSession(
                source.data,
                name=path.name if name is None else name,
                sha256=digest,
                session_id=session_id,
                now=clock(),
                config=config,
                mtime_ns=mtime_ns,
                keying=keying,
                manifest=manifest,
            )
            try:
                _run_sender(session, transport, clock, on_progress)
            except KeyboardInterrupt:
                # Caught here, around a call, as well as in the loop: CPython 3.11 can raise
                # it at a loop's back edge outside the try around the loop (python/cpython
                # #108214). Telling the receiver twice sends nothing more (abort is idempotent).
                session.abort("sender interrupted", clock())
                transport.send_many(session.datagrams_to_send(clock()))
                raise
            finally:
                session.release()
            outcome = session.outcome
            if outcome is not None and outcome.outcome == "timeout" and transport.refused:
                # ICMP port unreachable came back: say so, it is the likely cause.
                session.outcome = replace(
                    outcome, reason=f"{outcome.reason}; nothing is listening at {to}"
                )
        finally:
            transport.close()
    finally:
        source.close()
    return session


def _run_sender(
    session: SenderSession,
    transport: UdpTransport,
    clock: Clock,
    on_progress: Callable[[SenderSession], None] | None,
) -> None:
    next_progress = 0.0
    try:
        while not session.finished:
            now = clock()
            batch = session.datagrams_to_send(now)
            if batch:
                transport.send_many(batch)
                session.batch_left(clock())
            heard = False
            while (incoming := transport.recv_batch()) is not None:
                now = clock()
                for datagram in incoming[0]:
                    session.receive_datagram(datagram, now, incoming[2])
                heard = True
            if transport.refused and not session.refused_by_network:
                session.refused_by_network = True  # ICMP: nothing listens there (yet)
            if on_progress is not None and now >= next_progress:
                on_progress(session)
                next_progress = now + PROGRESS_INTERVAL_S
            if batch or heard or session.finished:
                continue  # more may be ready to send now
            timer = session.get_timer()
            now = clock()
            if timer is not None and timer <= now:
                session.handle_timer(now)
                continue
            transport.wait(None if timer is None else timer - now)
    except KeyboardInterrupt:
        session.abort("sender interrupted", clock())
        transport.send_many(session.datagrams_to_send(clock()))
        raise
    transport.send_many(session.datagrams_to_send(clock()))  # a final ABORT, if any
    while session.next_event() is not None:
        pass  # the outcome is kept on the session
    if on_progress is not None:
        on_progress(session)


# -- receiving --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferResult:
    """One finished incoming transfer: its report and where things were written."""

    report: dict[str, Any]
    report_path: Path
    file_path: Path | None  # None when nothing was written (a refused transfer)
    trace_path: Path | None

    @property
    def verified(self) -> bool:
        """True when the file is complete and its SHA-256 matched."""
        return bool(self.report["file"]["verified"])


class ReceiverObserver(Protocol):
    """What the receiver tells its user interface."""

    def transfer_started(self, session: ReceiverSession) -> None: ...

    def progress(self, session: ReceiverSession) -> None: ...

    def transfer_ended(self, session: ReceiverSession, result: TransferResult) -> None: ...


class ReceiverServer:
    """Receives transfers on one UDP socket into a directory, writing a report for each."""

    def __init__(
        self,
        bind: Address,
        out_dir: Path,
        *,
        report_path: Path | None = None,
        reports_dir: Path = Path("reports"),
        trace_path: Path | None = None,
        once: bool = False,
        config: ReceiverConfig | None = None,
        observer: ReceiverObserver | None = None,
        clock: Clock = time.monotonic,
        key: bytes | None = None,
        encrypt: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.out_dir = ensure_writable_dir(out_dir)
        self.log = log
        self.report_path = report_path
        self.reports_dir = reports_dir
        self.trace_path = trace_path
        self.once = once
        self.observer = observer
        self.clock = clock
        # The receiving side (and its reports: numpy, the analysis) loads here, not with a
        # sender, which starts faster without it; and before the first transfer, not at its end.
        import udpxfer.report  # noqa: F401
        from udpxfer.endpoint import Keying, ReceiverEndpoint
        from udpxfer.receiver import ReceiverConfig

        self.transport = UdpTransport.bind(bind)
        base = config or ReceiverConfig()
        self.endpoint = ReceiverEndpoint(
            replace(
                base,
                buffer_bytes=self.transport.buffers.recv_granted,
                record_trace=base.record_trace,
            ),
            chunk_sink=self._store,
            token_secret=secrets.token_bytes(32),
            keying=Keying(key, encrypt) if key is not None else None,
            nonces=lambda: secrets.token_bytes(NONCE_BYTES),
            hello_pn_start=secrets.randbits(60),
        )
        self._logged: dict[object, float] = {}  # peer -> when its last auth failure was logged
        self._next_state_save = 0.0
        self.results: list[TransferResult] = []
        self._files: dict[ReceiverSession, PartialFile] = {}
        self._refused: set[ReceiverSession] = set()
        self._hashed: queue.Queue[tuple[ReceiverSession, bytes | list[int] | TransportError]] = (
            queue.Queue()
        )
        self._hashing = 0  # verifications under way in worker threads
        self._ended: list[ReceiverSession] = []
        self._marks = (0, 0, 0)  # endpoint (received, rejected, unauthenticated) at the last report
        self._reports_written = 0
        self._next_progress = 0.0

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        host, port = self.transport.local_address[:2]
        return host, port

    def serve(self, stop: threading.Event | None = None) -> list[TransferResult]:
        """Receive until ``stop`` is set, or after one transfer with ``once``.

        Raises:
            KeyboardInterrupt: after ending open transfers and writing their reports.
        """
        try:
            self._loop(stop)
        except KeyboardInterrupt:
            now = self.clock()
            self.endpoint.close(now, "receiver interrupted")
            self._handle_events(now)
            self._flush()
            raise
        finally:
            for partial in self._files.values():
                partial.close()
            self.transport.close()
        return self.results

    def _store(self, session: ReceiverSession, offset: int, payload: bytes | memoryview) -> None:
        partial = self._files.get(session) or self._open(session, self.clock())
        if partial is not None:
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
            if other is not session and partial.identity == identity and other_host == host:
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
                    partial.save_state(session.held.flags())
                except TransportError as exc:
                    session.close(now, str(exc))

    def _log_auth_failures(self, now: float) -> None:
        failures = self.endpoint.auth_failures
        while failures:
            failure = failures.popleft()
            if self.log is None or now < self._logged.get(failure.peer, -1e9) + 5.0:
                continue
            if len(self._logged) > 1024:
                self._logged.clear()
            self._logged[failure.peer] = now
            from udpxfer.report import peer_text

            self.log(f"{failure.reason}: datagram from {peer_text(failure.peer)} dropped")

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

    def _loop(self, stop: threading.Event | None) -> None:
        endpoint, transport, clock = self.endpoint, self.transport, self.clock
        receive, queue = endpoint.receive_datagram, endpoint.events
        while stop is None or not stop.is_set():
            handled = 0
            while handled < _RECV_BURST and (batch := transport.recv_batch()) is not None:
                now = clock()
                segments, addr, queued_s = batch
                for segment in segments:
                    receive(segment, addr, now, queued_s)
                    if queue:
                        self._handle_events(now)
                self._write_gathered()
                self._flush()  # feedback leaves at once: its delay is the sender's signal
                handled += 1
            if self._hashing:
                self._take_hashes()
            now = clock()
            if endpoint.auth_failures:
                self._log_auth_failures(now)
            self._save_states(now)
            timer = endpoint.get_timer()
            if timer is not None and timer <= now:
                endpoint.handle_timer(now)
                self._handle_events(now)
                self._flush()
            if self.observer is not None and now >= self._next_progress:
                self._next_progress = now + PROGRESS_INTERVAL_S
                for session in self._files:
                    self.observer.progress(session)
            if self.once and self._ended and all(self._done_with(s, now) for s in self._ended):
                return
            if handled < _RECV_BURST:
                longest = _HASH_POLL_S if self._hashing else 0.25
                wait = longest if timer is None else min(longest, max(0.0, timer - clock()))
                transport.wait(wait)

    def _done_with(self, session: ReceiverSession, now: float) -> bool:
        """A transfer's report is written and its linger (answering repeated ENDs) is over."""
        if session not in self.endpoint.sessions.values():
            return True
        finished = session.finished_at
        return finished is not None and now >= finished + session.config.linger_s + 1.0

    def _flush(self) -> None:
        if not self.endpoint.has_outgoing:
            return  # the common case under a flood of junk: nothing to answer
        for datagram, peer in self.endpoint.datagrams_to_send(self.clock()):
            self.transport.send(datagram, peer)  # type: ignore[arg-type]

    def _handle_events(self, now: float) -> None:
        while (item := self.endpoint.next_event()) is not None:
            session, event = item
            if isinstance(event, TransferStarted):
                self._open(session, now)
            elif isinstance(event, VerifyRequested):
                partial = self._open(session, now)
                if partial is not None:
                    self._verify(session, partial, now)
            elif isinstance(event, TransferEnded):
                self._open(session, now)  # an empty transfer may end before any chunk
                self._finish(session)

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
                if meta is not None and digest != meta.sha256 and manifest:
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

    def _finish(self, session: ReceiverSession) -> None:
        from udpxfer.report import session_trace, udp_report, write_report

        partial = self._files.pop(session, None)
        verified = session.outcome is not None and session.outcome.outcome == "complete"
        file_path: Path | None = None  # refused, or the file could not be created
        if partial is not None:
            try:
                if not verified and session.is_transfer:
                    partial.save_state(session.held.flags())
                file_path = partial.commit() if verified else _closed(partial)
            except TransportError:
                file_path = partial.path  # the write or rename failed: what is there stays
        received, rejected = self.endpoint.received, self.endpoint.rejected_so_far
        trace = session_trace(session)
        doc = udp_report(
            session,
            file_path,
            datagrams_received=received - self._marks[0],
            datagrams_rejected=max(0, rejected - self._marks[1]),
            trace=trace,
            datagrams_unauthenticated=self.endpoint.unauthenticated - self._marks[2],
        )
        self._marks = (received, rejected, self.endpoint.unauthenticated)
        report_path = self._next_report_path(session)
        trace_path = None
        if trace is not None and self.trace_path is not None:
            target = self.trace_path
            if self.results:  # later transfers: a fresh name beside the first trace
                target = unique_path(target.parent, target.name)
            trace_path = trace.save(target)
            doc["trace_path"] = str(trace_path)
        report_path = write_report(doc, report_path)
        result = TransferResult(doc, report_path, file_path, trace_path)
        self.results.append(result)
        self._ended.append(session)
        if self.observer is not None:
            self.observer.transfer_ended(session, result)

    def _next_report_path(self, session: ReceiverSession) -> Path:
        from udpxfer.report import report_path

        assert session.meta is not None
        self._reports_written += 1
        return report_path(
            self.report_path,
            self.reports_dir,
            partial_name(session),
            time.time(),
            first=self._reports_written == 1,
        )


def partial_name(session: ReceiverSession) -> str:
    """The received file's safe base name."""
    return safe_name(session.meta.name if session.meta else "unnamed")


def _closed(partial: PartialFile) -> Path:
    partial.close()
    return partial.path
