"""The receiver's driver: the endpoint against a bound socket, the clock and the files.

Like aioquic's ``transmit()``: hand the endpoint what arrived (a whole arena of receives at a
time), store and send what it returns, sleep until its timer. The files themselves are
``ReceiverFiles``' part; progress leaves through an observer, which the CLI connects to tqdm.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from udpxfer.errors import TransportError
from udpxfer.net.files import PartialFile
from udpxfer.net.receiver_files import ReceiverFiles
from udpxfer.net.sockets import SockAddr
from udpxfer.net.timing import PROGRESS_INTERVAL_S, Clock
from udpxfer.net.transport import MAX_DATAGRAM, UdpTransport
from udpxfer.paths import safe_name
from udpxfer.protocol.events import (
    ChunkReceived,
    Outcome,
    TransferEnded,
    TransferStarted,
    VerifyRequested,
)
from udpxfer.protocol.wire import NONCE_BYTES
from udpxfer.units import Address

if TYPE_CHECKING:
    from udpxfer.analysis.tracefile import TraceWriter
    from udpxfer.protocol.receiver import ReceiverConfig, ReceiverSession

_RECV_BURST = 256  # receives handled between two looks at timers
ARENA_RECEIVES = 16  # receives (GRO runs of up to 64 datagrams) decoded as one batch at most
_HASH_POLL_S = 0.005  # how often an idle loop looks for finished hashes


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


class ReceiverServer(ReceiverFiles):
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
        super().__init__(out_dir, clock, observer)
        self.log = log
        self.report_path = report_path
        self.reports_dir = reports_dir
        self.trace_path = trace_path
        self.once = once
        # The receiving side (and its reports: numpy, the analysis) loads here, not with a
        # sender, which starts faster without it; and before the first transfer, not at its end.
        import udpxfer.reports.report  # noqa: F401
        from udpxfer.protocol.endpoint import ReceiverEndpoint
        from udpxfer.protocol.endpoint_handshake import Keying
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
            token_secret=secrets.token_bytes(32),
            keying=Keying(key, encrypt) if key is not None else None,
            nonces=lambda: secrets.token_bytes(NONCE_BYTES),
            hello_pn_start=secrets.randbits(60),
        )
        self._logged: dict[object, float] = {}  # peer -> when its last auth failure was logged
        self.results: list[TransferResult] = []
        self._traces: dict[ReceiverSession, TraceWriter] = {}  # --trace: written as it comes
        self._ended: list[ReceiverSession] = []
        self._marks = (0, 0, 0)  # endpoint (received, rejected, unauthenticated) at the last report
        self._reports_written = 0
        self._next_progress = 0.0
        # Receive buffers: chunks are written straight from them, a ring's worth at a time.
        # Receives land back to back in one arena; a run of them from one sender, all cut
        # at one segment size, is decoded and written as one batch (one pwritev per run).
        self._arena = memoryview(bytearray(ARENA_RECEIVES * MAX_DATAGRAM))

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
        # Feedback leaves at once, before the chunks go to disk: its delay is the sender's
        # signal, and the sender fills its window again while this side writes.
        self._flush()
        if self._unwritten:  # junk stores nothing: no pass over the files for it
            self._unwritten = False
            self._write_gathered()  # the arena is read into again next

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
            if isinstance(event, ChunkReceived):  # a chunk of a one-datagram receive
                self._store(session, event.offset, event.payload)
            elif isinstance(event, TransferStarted):
                self._open(session, now)
                self._start_trace(session)
            elif isinstance(event, VerifyRequested):
                partial = self._open(session, now)
                if partial is not None:
                    self._verify(session, partial, now)
            elif isinstance(event, TransferEnded):
                self._open(session, now)  # an empty transfer may end before any chunk
                self._finish(session)

    def _finish(self, session: ReceiverSession) -> None:
        from udpxfer.reports.report import udp_report, write_report

        partial = self._files.pop(session, None)
        verified = session.outcome is not None and session.outcome.outcome is Outcome.COMPLETE
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
