"""What the transfer commands show while they run: bars, ``--json-stream`` records and the
lines for a person, routed to stderr when stdout carries JSON."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from udpxfer.cli.progress import TransferBar
from udpxfer.reports.output import json_text
from udpxfer.reports.stream import IntervalMeter, receiver_record, sender_record
from udpxfer.units import format_size, plural

if TYPE_CHECKING:
    from udpxfer.net.receiving import TransferResult
    from udpxfer.protocol.receiver import ReceiverSession
    from udpxfer.protocol.sender import SenderSession

# The receiver's side (numpy, the analysis, the report) loads in RecvObserver's methods only,
# so that a sender does not pay for it.


def human(to_stderr: bool) -> Callable[[str], None]:
    """Where human lines go: stderr when stdout carries JSON (``--report -``, a stream)."""

    def say(line: str) -> None:
        typer.echo(line, err=to_stderr)

    return say


def json_line(doc: dict[str, Any]) -> None:
    """``doc`` as one line of JSON on stdout (a ``--json-stream`` record or the last report)."""
    typer.echo(json_text(doc))


class SendWatch:
    """The sender's progress callback: its bar and its ``--json-stream`` records."""

    def __init__(
        self,
        file: Path,
        address_text: str,
        *,
        bar: bool,
        stream_every: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bar = TransferBar(f"{file.name} -> {address_text}", file.stat().st_size, enabled=bar)
        self._every = stream_every
        self._clock = clock
        self._meter: IntervalMeter | None = None
        self.session: SenderSession | None = None  # the last one seen, for an interrupted run

    def update(self, session: SenderSession) -> None:
        self.session = session
        stats = session.stats()
        self._bar.set(
            min(session.size, stats.acknowledged * session.chunk_size),
            f"resent {stats.chunks_resent}",
        )
        if self._every is None:
            return
        now = self._clock()
        if self._meter is None:
            self._meter = IntervalMeter("send", self._every, stats.started_at)
        if self._meter.due(now) or session.finished:
            json_line(sender_record(self._meter, session, now))

    def close(self) -> None:
        self._bar.close()


class RecvObserver:
    """Bars, summaries and ``--json-stream`` records for the receiver."""

    def __init__(
        self,
        *,
        bars: bool,
        quiet: bool,
        say: Callable[[str], None],
        stream_every: float | None,
        report_on_stdout: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bars_enabled = bars
        self._quiet = quiet
        self._say = say
        self._every = stream_every
        self._report_on_stdout = report_on_stdout
        self._clock = clock
        self._bars: dict[ReceiverSession, TransferBar] = {}
        self._meters: dict[ReceiverSession, IntervalMeter] = {}

    def transfer_started(self, session: ReceiverSession) -> None:
        from udpxfer.reports.report import peer_text

        meta = session.meta
        if meta is None:
            return
        if not self._quiet:
            self._say(
                f"receiving {meta.name} ({format_size(meta.size)}, "
                f"{plural(meta.chunk_count, 'chunk')}, {meta.mode.label}) "
                f"from {peer_text(session.peer)}"
            )
        if self._bars_enabled:
            self._bars[session] = TransferBar(meta.name, meta.size)
        if self._every is not None:
            self._meters[session] = IntervalMeter("recv", self._every, session.started_at)

    def progress(self, session: ReceiverSession) -> None:
        bar = self._bars.get(session)
        if bar is not None and session.meta is not None:
            stats = session.stats()
            lost = max(0, stats.transmissions_seen - stats.data_received + stats.duplicates)
            bar.set(stats.held * stats.chunk_size, f"lost {lost} resent {stats.retransmitted}")
        meter = self._meters.get(session)
        if meter is not None and meter.due(now := self._clock()):
            json_line(receiver_record(meter, session, now))

    def transfer_ended(self, session: ReceiverSession, result: TransferResult) -> None:
        from udpxfer.reports.report import summary_lines

        bar = self._bars.pop(session, None)
        if bar is not None:
            bar.close()
        meter = self._meters.pop(session, None)
        if meter is not None:
            finished_at = session.stats().finished_at
            end = finished_at if finished_at is not None else self._clock()
            json_line(receiver_record(meter, session, end))
            json_line(result.report)
        for line in summary_lines(result.report):
            self._say(line)
        where = "stdout" if self._report_on_stdout else str(result.report_path)
        self._say(f"report    {where}")
