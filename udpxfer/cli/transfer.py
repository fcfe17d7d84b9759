"""``udpxfer send`` and ``udpxfer recv``."""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import suppress
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from udpxfer.cli.app import EXIT_INCOMPLETE, EXIT_OK, app, fail, guarded
from udpxfer.cli.keys import KeyFileOption, NoEncryptOption, load_key
from udpxfer.driver import ReceiverServer, TransferResult, send_file
from udpxfer.errors import TransferError, UsageError
from udpxfer.files import ensure_writable_dir
from udpxfer.sender import SenderConfig, SenderSession
from udpxfer.sockets import ALL_INTERFACES, LOOPBACK
from udpxfer.units import format_rate, format_size, parse_address, parse_rate, parse_size
from udpxfer.wire import DEFAULT_CHUNK_BYTES, DEFAULT_KEYED_CHUNK_BYTES, Mode

if TYPE_CHECKING:
    from tqdm import tqdm

    from udpxfer.receiver import ReceiverSession

# Only what "send" needs is imported up front; tqdm, the receiver and its reports (numpy, the
# analysis) load where they are used, so that a sender's first datagram leaves sooner.

DEFAULT_PORT = 9000


class ModeChoice(StrEnum):
    """Transfer modes as typed on the command line."""

    reliable = "reliable"
    blast = "blast"


def show_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal and when not asked to be quiet."""
    return not quiet and sys.stderr.isatty()


@app.command()
def send(
    file: Annotated[Path, typer.Argument(help="The file to send.", show_default=False)],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="Receiver address: HOST:PORT, \\[v6addr]:PORT, or a bare PORT (loopback).",
        ),
    ] = str(DEFAULT_PORT),
    chunk_size: Annotated[
        str | None,
        typer.Option(
            "--chunk-size",
            help=f"Payload bytes per datagram (8K-style suffixes accepted). Default "
            f"{DEFAULT_CHUNK_BYTES} ({DEFAULT_KEYED_CHUNK_BYTES} with --key-file): a datagram "
            "then fits a 1500-byte Ethernet MTU under IPv6 with udpxfer's header and check.",
            show_default=False,
        ),
    ] = None,
    rate: Annotated[
        str,
        typer.Option(
            "--rate",
            help="Pace sending to this many bits per second (100M = 10^8 bit/s, counting "
            "whole UDP payloads). 0: a congestion controller after BBR finds the path's "
            "bottleneck rate and paces at it, under the receiver's window (no relay or "
            "bottleneck on the path overflows; random loss does not slow it); with a rate, "
            "the pace is yours.",
        ),
    ] = "0",
    mode: Annotated[
        ModeChoice,
        typer.Option(
            "--mode",
            help="reliable: resend what the receiver reports missing until the SHA-256 "
            "matches. blast: send every chunk once and measure what was lost.",
        ),
    ] = ModeChoice.reliable,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", help="Reliable mode: give up after this many seconds of silence."
        ),
    ] = 20.0,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Name to announce instead of the file's own name."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    key_file: KeyFileOption = None,
    no_encrypt: NoEncryptOption = False,
) -> None:
    """Send one FILE to a `udpxfer recv` over UDP.

    Running the same send again after an interruption resumes a reliable
    transfer: only what the receiver does not hold yet travels.

    Exit codes: 0 when the receiver verified the SHA-256 (reliable)
    or once everything was sent (blast); 1 if the transfer failed;
    2 for bad input; 130 on Ctrl-C.

    Example: udpxfer send big.iso --to 192.0.2.7:9000 --rate 500M
    """
    with guarded():
        key = load_key(key_file)
        default_chunk = DEFAULT_CHUNK_BYTES if key is None else DEFAULT_KEYED_CHUNK_BYTES
        config = SenderConfig(
            chunk_size=parse_size(chunk_size) if chunk_size is not None else default_chunk,
            mode=Mode.BLAST if mode is ModeChoice.blast else Mode.RELIABLE,
            rate_bps=parse_rate(rate),
            give_up_s=timeout,
        )
        address = parse_address(to, default_host=LOOPBACK)
        if not file.exists():
            fail(f"{file}: no such file")
        bar = _SendBar(file, address_text=str(address), enabled=show_progress(quiet))
        try:
            session = send_file(
                file,
                address,
                config,
                on_progress=bar.update,
                name=name,
                key=key,
                encrypt=not no_encrypt,
            )
        finally:
            bar.close()
        _report_send(session, str(address))


class _SendBar:
    """tqdm bar of the bytes the receiver confirmed."""

    def __init__(self, file: Path, *, address_text: str, enabled: bool) -> None:
        self._bar: tqdm[Any] | None = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=file.stat().st_size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"{file.name} -> {address_text}",
                leave=False,
            )

    def update(self, session: SenderSession) -> None:
        if self._bar is None:
            return
        done = min(session.size, session.acked_held * session.chunk_size)
        self._bar.n = done
        self._bar.set_postfix(resent=session.chunks_resent, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _report_send(session: SenderSession, address: str) -> None:
    outcome = session.outcome
    # Blast mode: the time to send everything, not the wait for the receiver's verdict.
    end = session.sent_all_at if session.mode is Mode.BLAST else session.finished_at
    elapsed = (end or session.finished_at or session.started_at) - session.started_at
    rate = session.size * 8 / elapsed if elapsed > 0 else 0.0
    head = f"{session.meta.name} ({format_size(session.size)}) -> {address}"
    detail = (
        f"{session.chunk_count} chunks, {session.chunks_resent} resent in "
        f"{session.repair_rounds} repair rounds, {elapsed:.3f} s, {format_rate(rate)}"
    )
    if outcome is None:
        raise TransferError(f"{head}: the transfer did not finish")
    if session.mode is Mode.BLAST:
        verdicts = {
            "complete": "the receiver verified the SHA-256",
            "incomplete": "the receiver reports chunks missing",
            "sent": "no verdict from the receiver",
        }
        typer.echo(f"sent {head}: {detail}; {verdicts.get(outcome.outcome, outcome.outcome)}")
        raise typer.Exit(EXIT_OK)
    if outcome.outcome == "complete":
        resumed = f"; {session.resumed} chunks were already there" if session.resumed else ""
        typer.echo(f"sent {head}: verified by the receiver; {detail}{resumed}")
        raise typer.Exit(EXIT_OK)
    raise TransferError(f"{head}: {outcome.reason or outcome.outcome}")


class _RecvObserver:
    """tqdm bars and summaries for the receiver."""

    def __init__(self, *, bars: bool, quiet: bool) -> None:
        self._bars_enabled = bars
        self._quiet = quiet
        self._bars: dict[ReceiverSession, tqdm[Any]] = {}

    def transfer_started(self, session: ReceiverSession) -> None:
        from udpxfer.report import peer_text  # loaded with the receiver, not with send

        meta = session.meta
        if meta is None:
            return
        if not self._quiet:
            typer.echo(
                f"receiving {meta.name} ({format_size(meta.size)}, {meta.chunk_count} chunks, "
                f"{meta.mode.label}) from {peer_text(session.peer)}"
            )
        if self._bars_enabled:
            from tqdm import tqdm

            self._bars[session] = tqdm(
                total=meta.size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=meta.name[:40],
                leave=False,
            )

    def progress(self, session: ReceiverSession) -> None:
        bar = self._bars.get(session)
        if bar is not None and session.meta is not None:
            bar.n = min(session.meta.size, session.held_count * session.meta.chunk_size)
            bar.refresh()

    def transfer_ended(self, session: ReceiverSession, result: TransferResult) -> None:
        from udpxfer.report import summary_lines

        bar = self._bars.pop(session, None)
        if bar is not None:
            bar.close()
        for line in summary_lines(result.report):
            typer.echo(line)
        typer.echo(f"report    {result.report_path}")


@app.command()
def recv(
    bind: Annotated[
        str,
        typer.Option(
            "--bind",
            help="Address to listen on: HOST:PORT, \\[v6addr]:PORT, or a bare PORT (all "
            "interfaces, IPv4 and IPv6).",
        ),
    ] = str(DEFAULT_PORT),
    out: Annotated[
        Path, typer.Option("--out", help="Directory to write received files into.")
    ] = Path("received"),
    report: Annotated[
        str | None,
        typer.Option(
            "--report",
            help="Where to write the JSON report: a directory (an existing one, or a path "
            "ending in /) or a file path (later transfers get -1, -2 suffixes). "
            "Default: reports/<time>-<name>.json.",
        ),
    ] = None,
    trace: Annotated[
        Path | None,
        typer.Option(
            "--trace",
            help="Save each transfer's per-datagram trace (chunk, times, pass, flags) to this "
            ".npz file (later transfers get -1, -2 suffixes); `udpxfer report` renders it.",
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Exit after the first transfer ends.")
    ] = False,
    idle_timeout: Annotated[
        float,
        typer.Option("--idle-timeout", help="Give a transfer up after this many silent seconds."),
    ] = 20.0,
    grace: Annotated[
        float,
        typer.Option(
            "--grace", help="Blast mode: seconds to wait after the sender's END for late chunks."
        ),
    ] = 0.5,
    max_size: Annotated[
        str | None,
        typer.Option("--max-size", help="Refuse files larger than this (e.g. 10G)."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or start messages.")
    ] = False,
    key_file: KeyFileOption = None,
    no_encrypt: NoEncryptOption = False,
) -> None:
    """Receive files over UDP into --out, writing a JSON report per transfer.

    Files land as NAME.partial and become NAME once the SHA-256 matches;
    an incomplete transfer leaves NAME.partial (holes zero-filled).

    Exit codes with --once: 0 verified, 1 incomplete or unverified.
    Always: 2 for bad input, 130 on Ctrl-C; SIGTERM stops cleanly (0).

    Example: udpxfer recv --bind 9000 --out incoming --once
    """
    from udpxfer.receiver import ReceiverConfig

    with guarded():
        key = load_key(key_file)
        if idle_timeout <= 0 or grace < 0:
            fail("--idle-timeout must be positive and --grace not negative")
        config = ReceiverConfig(
            idle_timeout_s=idle_timeout,
            blast_grace_s=grace,
            max_file_bytes=parse_size(max_size) if max_size else None,
        )
        server = ReceiverServer(
            parse_address(bind, default_host=ALL_INTERFACES),
            out,
            report_path=_report_target(report),
            trace_path=_trace_target(trace),
            once=once,
            config=config,
            observer=_RecvObserver(bars=show_progress(quiet), quiet=quiet),
            key=key,
            encrypt=not no_encrypt,
            log=lambda line: typer.echo(f"udpxfer: {line}", err=True),
        )
        if key is None and not quiet:
            typer.echo(
                "note: no --key-file: anyone on the path can inject data into a transfer or "
                "forge its verdict (see docs/SECURITY.md)",
                err=True,
            )
        host, port = server.address
        buffers = server.transport.buffers
        if buffers.capped and not quiet:
            typer.echo(
                f"note: the kernel capped the receive buffer at "
                f"{format_size(buffers.recv_granted)} (asked {format_size(buffers.recv_asked)}); "
                "the sender's window shrinks to match. Raise it with "
                f"`sysctl -w net.core.rmem_max={buffers.recv_asked}`.",
                err=True,
            )
        stop = threading.Event()
        with _sigterm_sets(stop):
            if not quiet:
                typer.echo(f"listening on {'[' + host + ']' if ':' in host else host}:{port}")
            results = server.serve(stop)
        if once:
            ok = bool(results) and results[-1].verified
            raise typer.Exit(EXIT_OK if ok else EXIT_INCOMPLETE)


def _report_target(text: str | None) -> Path | None:
    """``--report``: a trailing slash means a directory, created if need be."""
    if text is None:
        return None
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        ensure_writable_dir(path)
    else:
        ensure_writable_dir(path.parent)  # fail now, not after the first transfer
    return path


def _trace_target(path: Path | None) -> Path | None:
    """``--trace``: its directory must be writable now, not after the first transfer."""
    if path is not None:
        if path.is_dir():
            raise UsageError(f"--trace {path} is a directory: give a file name such as run.npz")
        ensure_writable_dir(path.parent)
    return path


class _sigterm_sets:
    """Within the block, SIGTERM sets ``stop`` instead of killing the process."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._previous: object = None

    def __enter__(self) -> None:
        with suppress(ValueError):  # not the main thread: leave SIGTERM alone
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
