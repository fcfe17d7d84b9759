"""The loops that connect sessions to sockets, the clock and files.

Like aioquic's ``transmit()``: hand the session what arrived, send what it returns, sleep
until its timer. Progress leaves through callbacks; the CLI connects them to tqdm.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from udpxfer.errors import TransportError, UsageError
from udpxfer.net.files import (
    PartialFile,
    SourceIdentity,
    chunks_of_blocks,
    ensure_writable_dir,
    safe_name,
)
from udpxfer.net.sockets import SockAddr
from udpxfer.net.source import MappedFile, SentPages, file_digests
from udpxfer.net.transport import MAX_DATAGRAM, UdpTransport
from udpxfer.protocol.events import TransferEnded, TransferStarted, VerifyRequested
from udpxfer.protocol.ranges import Bitmap, missing_ranges
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.sender_data import DataRun
from udpxfer.protocol.wire import NONCE_BYTES, Mode
from udpxfer.units import Address

if TYPE_CHECKING:
    from udpxfer.analysis.tracefile import TraceWriter
    from udpxfer.protocol.endpoint import StoreRun
    from udpxfer.protocol.receiver import ReceiverConfig, ReceiverSession

Clock = Callable[[], float]
PROGRESS_INTERVAL_S = 0.1
_RECV_BURST = 256  # receives handled between two looks at timers
ARENA_RECEIVES = 16  # receives (GRO runs of up to 64 datagrams) decoded as one batch at most
_HASH_POLL_S = 0.005  # how often an idle loop looks for finished hashes
STATE_SAVE_INTERVAL_S = 1.0  # resume sidecars are rewritten this often
MAX_BLOCK_REPAIRS = 8  # times a transfer may fetch bad blocks again before it is a mismatch


# -- sending ----------------------------------------------------------------------------


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
    source = MappedFile(path)
    try:
        mtime_ns = os.stat(path).st_mtime_ns
        chunk_size = (config or SenderConfig()).chunk_size
        digest, manifest = file_digests(source.data, chunk_size, done=source.drop)
        transport = UdpTransport.connect(to)
        try:
            session_id = secrets.randbits(64)
            keying = None
            if key is not None:
                from udpxfer.net.keyfile import new_nonce
                from udpxfer.protocol.sender_keying import SenderKeying

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
                _run_sender(session, transport, clock, on_progress, SentPages(source, chunk_size))
            except KeyboardInterrupt:
                # Caught here, around a call, as well as in the loop: CPython 3.11 can raise
                # it at a loop's back edge outside the try around the loop (python/cpython
                # #108214). Telling the receiver twice sends nothing more (abort is idempotent).
                session.abort("sender interrupted", clock())
                _send(transport, session.transmit(clock()))
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
    pages: SentPages,
) -> None:
    next_progress = 0.0
    try:
        while not session.finished:
            now = clock()
            batch = session.transmit(now)
            if batch:
                _send(transport, batch, pages)
                session.batch_left(clock())
            heard = False
            while (incoming := transport.recv_batch()) is not None:
                now = clock()
                for datagram in incoming[0]:
                    session.receive_datagram(datagram, now, incoming[2])
                heard = True
            if transport.refused:
                session.port_unreachable()  # ICMP: nothing listens there (yet)
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
    except KeyboardInterrupt as exc:
        # Frames the interrupt cut short hold views of the mapped file (a run being sent):
        # let them go, so that the file can be unmapped.
        traceback.clear_frames(exc.__traceback__)
        batch = []
        session.abort("sender interrupted", clock())
        _send(transport, session.transmit(clock()))
        raise
    _send(transport, session.transmit(clock()))  # a final ABORT, if any
    while session.next_event() is not None:
        pass  # the outcome is kept on the session
    if on_progress is not None:
        on_progress(session)


def _send(
    transport: UdpTransport, items: list[bytes | DataRun], pages: SentPages | None = None
) -> None:
    """Send a session's output in order: control datagrams as they are, DATA runs gathered
    (then their pages may leave our resident set)."""
    plain: list[bytes] = []
    for item in items:
        if isinstance(item, DataRun):
            if plain:
                transport.send_many(plain)
                plain = []
            transport.send_gathered(item.pieces, item.count, item.segment)
            if pages is not None:
                pages.sent(item.first, item.count)
        else:
            plain.append(item)
    if plain:
        transport.send_many(plain)


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
        import udpxfer.reports.report  # noqa: F401
        from udpxfer.protocol.batch import payload_views
        from udpxfer.protocol.endpoint import Keying, ReceiverEndpoint
        from udpxfer.protocol.receiver import ReceiverConfig

        self.transport = UdpTransport.bind(bind)
        base = config or ReceiverConfig()
        self.endpoint = ReceiverEndpoint(
            replace(
                base,
                buffer_bytes=self.transport.buffers.recv_granted,
                record_trace=base.record_trace,
                stream_trace=trace_path is not None,
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
        self._traces: dict[ReceiverSession, TraceWriter] = {}  # --trace: written as it comes
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
        # Receive buffers: chunks are written straight from them, a ring's worth at a time.
        # Receives land back to back in one arena; a run of them from one sender, all cut
        # at one segment size, is decoded and written as one batch (one pwritev per run).
        self._arena = memoryview(bytearray(ARENA_RECEIVES * MAX_DATAGRAM))
        self._payload_views = payload_views
        self._unwritten = False  # chunks gathered from the arena, not yet written

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
            for writer in self._traces.values():
                writer.handle.close()  # a transfer still open: its whole chunks stay readable
            self._traces.clear()
            self.transport.close()
        return self.results

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
                    partial.save_state_soon(session.held)
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
            from udpxfer.reports.report import peer_text

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
        while stop is None or not stop.is_set():
            handled = 0
            while handled < _RECV_BURST and (received := self._receive_arena()):
                handled += received
            if handled and self._traces:
                self._write_traces()
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

    def _receive_arena(self) -> int:
        """Read what waits into the arena and hand it to the endpoint; how many receives.

        Receives from one sender that are all cut at one segment size continue each other
        in the arena: the endpoint decodes them as one batch. Anything else (another
        sender, another size, a shorter last datagram) ends the batch. Every chunk is
        written before the arena is read into again.
        """
        arena, transport = self._arena, self.transport
        pos = receives = 0
        group: tuple[int, SockAddr] | None = None  # segment size and sender of the batch
        queued_ns = 0
        while pos + MAX_DATAGRAM <= len(arena):
            got = transport.recv_into(arena[pos : pos + MAX_DATAGRAM])
            if got is None:
                break
            receives += 1
            length, segment, addr, kernel_ns = got
            size = segment or length
            fits = length % size == 0 if size else False
            if group is not None and group != (size, addr):
                self._deliver(pos, group, queued_ns)  # this receive starts afresh
                arena[:length] = bytes(arena[pos : pos + length])
                pos, group = 0, None
            if group is None:
                group = (size, addr)
            queued_ns = kernel_ns
            pos += length
            if not fits:  # a shorter last datagram, or nothing to cut: the batch ends here
                break
        if group is not None:
            self._deliver(pos, group, queued_ns)
        return receives

    def _deliver(self, length: int, group: tuple[int, SockAddr], kernel_ns: int) -> None:
        """The arena's first ``length`` bytes, datagrams of ``group``'s size from its sender,
        to the endpoint; store what it returns, act on its events, send its feedback."""
        segment, addr = group
        now = self.clock()
        queued_s = max(0.0, (time.time_ns() - kernel_ns) / 1e9) if kernel_ns else 0.0
        buffer = self._arena
        for run in self.endpoint.receive_buffer(buffer, length, segment, addr, now, queued_s):
            self._store_run(run, buffer, now)
        if self.endpoint.events:
            self._handle_events(now)
        if self._unwritten:  # junk stores nothing: no pass over the files for it
            self._unwritten = False
            self._write_gathered()  # the arena is read into again next
        self._flush()  # feedback leaves at once: its delay is the sender's signal

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

    def _done_with(self, session: ReceiverSession, now: float) -> bool:
        """A transfer's report is written and its linger (answering repeated ENDs) is over."""
        if session.closed:
            return True  # the sender said it has the verdict (or lingering is over)
        if session not in self.endpoint.sessions.values():
            return True
        finished = session.finished_at
        return finished is not None and now >= finished + session.config.linger_s + 1.0

    def _flush(self) -> None:
        if not self.endpoint.has_outgoing:
            return  # the common case under a flood of junk: nothing to answer
        for datagram, peer in self.endpoint.datagrams_to_send(self.clock()):
            self.transport.send(datagram, peer)  # type: ignore[arg-type]

    def _start_trace(self, session: ReceiverSession) -> None:
        """``--trace``: the session's trace file, its header written now."""
        from udpxfer.analysis.tracefile import TraceWriter

        meta = session.meta
        if self.trace_path is None or session.trace is None or meta is None:
            return
        if session in self._traces:
            return
        self._traces[session] = TraceWriter.create(
            self.trace_path,
            chunk_count=meta.chunk_count,
            chunk_size=meta.chunk_size,
            file_size=meta.size,
            mode=meta.mode.label,
            started_ns=int(session.started_at * 1e9),
        )

    def _write_traces(self, *, chunk_rows: int = 1 << 16) -> None:
        """Append each trace's records once a chunk's worth has gathered."""
        for session, writer in self._traces.items():
            if session.trace is not None and len(session.trace) >= chunk_rows:
                writer.write(session.trace.drain())

    def _end_trace(self, session: ReceiverSession) -> Path | None:
        writer = self._traces.pop(session, None)
        if writer is None or session.trace is None:
            return None
        writer.write(session.trace.drain())
        return writer.close(
            tx_sent=session.tx_sent,
            chunks_sent=session.sent_upto if session.not_sent else -1,
            held_before=session.resumed_bits(),
        )

    def _handle_events(self, now: float) -> None:
        while (item := self.endpoint.next_event()) is not None:
            session, event = item
            if isinstance(event, TransferStarted):
                self._open(session, now)
                self._start_trace(session)
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
        from udpxfer.reports.report import udp_report, write_report

        partial = self._files.pop(session, None)
        verified = session.outcome is not None and session.outcome.outcome == "complete"
        file_path: Path | None = None  # refused, or the file could not be created
        if partial is not None:
            try:
                if not verified and session.is_transfer:
                    partial.save_state(session.held)
                file_path = partial.commit() if verified else _closed(partial)
            except TransportError:
                file_path = partial.path  # the write or rename failed: what is there stays
        received, rejected = self.endpoint.received, self.endpoint.rejected_so_far
        doc = udp_report(
            session,
            file_path,
            datagrams_received=received - self._marks[0],
            datagrams_rejected=max(0, rejected - self._marks[1]),
            datagrams_unauthenticated=self.endpoint.unauthenticated - self._marks[2],
        )
        self._marks = (received, rejected, self.endpoint.unauthenticated)
        report_path = self._next_report_path(session)
        if self.trace_path is not None and session not in self._traces:
            self._start_trace(session)  # a transfer that ended before it started: empty
        trace_path = self._end_trace(session)
        if trace_path is not None:
            doc["trace_path"] = str(trace_path)
        report_path = write_report(doc, report_path)
        result = TransferResult(doc, report_path, file_path, trace_path)
        self.results.append(result)
        self._ended.append(session)
        if self.observer is not None:
            self.observer.transfer_ended(session, result)

    def _next_report_path(self, session: ReceiverSession) -> Path:
        from udpxfer.reports.report import report_path

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
