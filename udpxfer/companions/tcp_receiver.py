"""The TCP file receiver: header, ``.partial`` file, SHA-256 check, rename, verdict, report.

Transfers are served concurrently, one per connection. Each that begins with a valid header
ends with a JSON report of the same shape as a UDP transfer's (``"transport": "tcp"``); a
connection that never sends a valid header is counted as rejected and leaves no trace.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udpxfer.companions.runtime import (
    Log,
    NoProgress,
    ProgressFactory,
    Ready,
    ServerStats,
    counted,
    peer_of,
    run_until_stopped,
    serve_tcp,
)
from udpxfer.companions.tcp_transfer import (
    HEADER,
    TransferHeader,
    decode_header_untrusted,
    encode_verdict,
    header_length_untrusted,
)
from udpxfer.errors import ProtocolError, TransportError, UdpxferError
from udpxfer.net.files import PartialFile
from udpxfer.paths import PARTIAL_SUFFIX, ensure_writable_dir, safe_name
from udpxfer.reports.output import STDOUT, check_target, write_report
from udpxfer.reports.report import (
    ChunkSection,
    FileSection,
    TransferReport,
    report_path,
    summary_lines,
)
from udpxfer.units import Address, format_size

READ_BYTES = 1 << 20  # the "chunk" of a TCP report: the largest read
STREAM_LIMIT = 1 << 21  # bytes buffered by asyncio before it stops reading the socket


@dataclass(slots=True)
class ReceiverResult:
    """What a receiver did before it stopped."""

    reports: list[dict[str, Any]] = field(default_factory=list)
    report_paths: list[Path] = field(default_factory=list)
    rejected: int = 0
    interrupted: bool = False  # stopped while a transfer was in progress
    once_report: dict[str, Any] | None = None  # the transfer that ended a ``once`` run
    stats: ServerStats = field(default_factory=ServerStats)

    def summary(self) -> str:
        """``TCP receiver stopped: 2 transfers (2 verified), 0 connections rejected``."""
        verified = sum(1 for doc in self.reports if doc["file"]["verified"])
        return (
            f"TCP receiver stopped: {counted(len(self.reports), 'transfer')} "
            f"({verified} verified), {counted(self.rejected, 'connection rejected')}, "
            f"{self.stats.bytes_in} bytes received"
        )


@dataclass(slots=True)
class TransferState:
    """One TCP transfer as the receiver sees it, from header to verdict."""

    header: TransferHeader
    peer: str
    path: Path
    started_unix_s: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    outcome: str = "complete"
    sha256_actual: str | None = None
    report: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        """Every byte arrived (verified or not)."""
        return self.outcome in ("complete", "hash mismatch")


@dataclass(slots=True, kw_only=True)
class _Receiver:
    out_dir: Path
    report: Path | None
    reports_dir: Path
    once: bool
    idle_timeout_s: float
    log: Log
    progress: ProgressFactory
    on_report: Callable[[dict[str, Any]], None] | None = None
    report_used: bool = False
    result: ReceiverResult = field(default_factory=ReceiverResult)
    stop: asyncio.Event | None = None

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        peer = peer_of(writer)
        try:
            fixed = await self._read_exactly(reader, HEADER.size)
            rest = await self._read_exactly(reader, header_length_untrusted(fixed) - HEADER.size)
            header = decode_header_untrusted(fixed + rest)
        except (ProtocolError, asyncio.IncompleteReadError, TimeoutError, OSError) as exc:
            self.result.rejected += 1
            self.log(f"Rejected connection from {peer}: {_reason(exc)}")
            return
        state = TransferState(header, peer, self.out_dir / safe_name(header.name))
        try:
            await self._transfer(state, reader, writer)
        finally:
            if self.once and self.stop is not None and not self.stop.is_set():
                self.result.once_report = state.report
                self.stop.set()

    async def _read_exactly(self, reader: asyncio.StreamReader, n: int) -> bytes:
        return await asyncio.wait_for(reader.readexactly(n), self.idle_timeout_s)

    async def _transfer(
        self, state: TransferState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        header, peer = state.header, state.peer
        self.log(f"Receiving {header.name!r} ({format_size(header.size)}) from {peer}")
        try:
            partial = self._create(header)
        except UdpxferError as exc:
            self.log(f"Refused {header.name!r} from {peer}: {exc}")
            state.outcome = "refused"
            self._finish(state)
            writer.write(encode_verdict(False, str(exc)))
            await writer.drain()
            return
        bar = self.progress(partial.final_path.name, header.size)
        try:
            await self._receive(reader, partial, state, bar.update)
        except asyncio.CancelledError:
            state.outcome = "interrupted"
            # Cut short by a user's stop, not by the end of a --once run.
            self.result.interrupted = self.result.once_report is None
            raise
        finally:
            bar.close()
            self._settle(partial, state)
            self._finish(state)
        if state.complete:
            ok = state.outcome == "complete"
            detail = f"sha256={state.sha256_actual}" if ok else "SHA-256 mismatch"
            writer.write(encode_verdict(ok, detail))
            await writer.drain()

    def _create(self, header: TransferHeader) -> PartialFile:
        free = shutil.disk_usage(self.out_dir).free
        if header.size > free:
            raise UdpxferError(
                f"not enough space in {self.out_dir} for {format_size(header.size)} "
                f"({format_size(free)} free)"
            )
        return PartialFile(self.out_dir, header.name, header.size)

    async def _receive(
        self,
        reader: asyncio.StreamReader,
        partial: PartialFile,
        state: TransferState,
        advance: Callable[[int], object],
    ) -> None:
        size = state.header.size
        while state.received < size:
            try:
                data = await asyncio.wait_for(
                    reader.read(min(READ_BYTES, size - state.received)), self.idle_timeout_s
                )
            except TimeoutError:
                state.outcome = "timed out"
                return
            except OSError:
                data = b""
            if not data:
                state.outcome = "abandoned"
                return
            partial.write_at(state.received, data)
            partial.flush()  # reads are large: write each at once
            state.digest.update(data)
            state.received += len(data)
            self.result.stats.bytes_in += len(data)
            advance(len(data))

    @staticmethod
    def _settle(partial: PartialFile, state: TransferState) -> None:
        """Rename a verified file into place; leave anything else as ``.partial``."""
        state.path = partial.path
        if state.outcome != "complete":
            partial.close()
            return
        state.sha256_actual = state.digest.hexdigest()
        if state.sha256_actual != state.header.sha256.hex():
            state.outcome = "hash mismatch"
            partial.close()
            return
        state.path = partial.commit()

    def _finish(self, state: TransferState) -> None:
        state.report = doc = tcp_report(state, time.perf_counter() - state.t0)
        self.result.reports.append(doc)
        if self.on_report is not None:
            self.on_report(doc)
        for line in summary_lines(doc):
            self.log(line)
        try:
            path = write_report(doc, self._report_path(state.path.name, state.started_unix_s))
        except TransportError as exc:
            self.log(f"report    NOT WRITTEN: {exc}")
            return
        self.result.report_paths.append(path)
        self.log(f"report    {'stdout' if path == STDOUT else path}")

    def _report_path(self, name: str, started: float) -> Path:
        """``--report`` for the first transfer, fresh names after: never overwrite a report."""
        first, self.report_used = not self.report_used, True
        return report_path(self.report, self.reports_dir, name, started, first=first)


def tcp_report(state: TransferState, duration_s: float) -> dict[str, Any]:
    """The report document of one TCP transfer (chunks are ``READ_BYTES`` blocks).

    TCP loses nothing on the way, so ``first_pass_gaps`` is empty; an incomplete transfer's
    missing tail shows as one final gap.
    """
    header = state.header
    total = math.ceil(header.size / READ_BYTES)
    got = total if state.complete else state.received // READ_BYTES
    report = TransferReport(
        transport="tcp",
        mode="reliable",
        file=FileSection(
            name=state.path.name.removesuffix(PARTIAL_SUFFIX),
            size=header.size,
            path=str(state.path),
            sha256_expected=header.sha256.hex(),
            sha256_actual=state.sha256_actual,
            complete=state.complete,
            verified=state.outcome == "complete",
        ),
        chunks=ChunkSection(size=READ_BYTES, total=total, received=got, missing=total - got),
        gaps=[[got, total - 1]] if got < total else [],
        first_pass_gaps=[],
        duration_s=duration_s,
        peer=state.peer,
        outcome=state.outcome,
        started_unix_s=state.started_unix_s,
        extra={"tcp": {"bytes_received": state.received, "sent_name": header.name}},
    )
    return report.to_dict()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return f"closed after {len(exc.partial)} bytes of header"
    if isinstance(exc, TimeoutError):
        return "no header in time"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


def run_tcp_receiver(
    bind: Address,
    out_dir: Path,
    *,
    log: Log,
    report: Path | None = None,
    reports_dir: Path = Path("reports"),
    once: bool = False,
    idle_timeout_s: float = 20.0,
    progress: ProgressFactory = NoProgress,
    on_report: Callable[[dict[str, Any]], None] | None = None,
    ready: Ready | None = None,
    handle_signals: bool = True,
) -> ReceiverResult:
    """Receive files over TCP on ``bind`` into ``out_dir`` until stopped (or one, with ``once``).

    Args:
        report: where the (first) report goes; a directory means fresh names inside it.
        reports_dir: where reports go without ``report``.
        idle_timeout_s: a sender silent this long is abandoned (its file stays ``.partial``).
        on_report: called with each transfer's report when it ends (``--json-stream``).

    Raises:
        UsageError: the address is in use, or a directory cannot be written.
    """
    ensure_writable_dir(out_dir)
    if report is None:
        ensure_writable_dir(reports_dir)
    else:
        check_target(str(report), what="report")
    receiver = _Receiver(
        out_dir=out_dir,
        report=report,
        reports_dir=reports_dir,
        once=once,
        idle_timeout_s=idle_timeout_s,
        log=log,
        progress=progress,
        on_report=on_report,
    )

    async def main(stop: asyncio.Event) -> ReceiverResult:
        receiver.stop = stop
        receiver.result.stats = await serve_tcp(
            bind,
            receiver.handle,
            name="TCP file receiver",
            stop=stop,
            stats=receiver.result.stats,
            log=log,
            ready=ready,
            log_clients=False,
            stream_limit=STREAM_LIMIT,
        )
        return receiver.result

    return run_until_stopped(main, handle_signals=handle_signals)
