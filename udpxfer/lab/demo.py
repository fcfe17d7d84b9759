"""The demo: a sample file over loopback through the impairment relay, in both modes.

Everything runs in this process on 127.0.0.1: a receiver, an impairing relay in front of it
and a sender. Each mode writes ``demo-MODE.json`` (report), ``.trace`` (trace), ``.md`` and
``.html`` under the reports directory, plus a side-by-side comparison page.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udpxfer.errors import TransferError
from udpxfer.lab.impair.models import GilbertElliott, Impairment
from udpxfer.lab.relay import Relay
from udpxfer.lab.samples import SAMPLE_DIR
from udpxfer.net.receiving import ReceiverServer
from udpxfer.net.sending import send_file
from udpxfer.paths import ensure_writable_dir
from udpxfer.protocol.receiver import ReceiverConfig
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.wire import Mode
from udpxfer.reports.render import render_comparison, render_html, render_markdown
from udpxfer.reports.report import summary_lines
from udpxfer.units import Address, plural

DEFAULT_SAMPLE = "photo.jpg"
LOOPBACK = "127.0.0.1"
DEMO_RATE_BPS = 20_000_000  # slow enough that the time plots have something to show
DEMO_CHUNK_BYTES = 1024
# Forward path: Gilbert-Elliott bursts (mean burst 1/r = 2.9 chunks, about 12% loss) with a
# little delay and jitter; the reverse path loses 2% of the receiver's feedback.
FORWARD = Impairment(gilbert=GilbertElliott(p=0.05, r=0.35), delay_s=0.002, jitter_s=0.001)
REVERSE = Impairment(loss=0.02)
RUN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class DemoRun:
    """What one mode of the demo produced."""

    mode: Mode
    report: dict[str, Any]
    report_path: Path
    markdown_path: Path
    html_path: Path
    forwarded: int
    dropped: int


def find_sample(reports_dir: Path) -> Path:
    """The bundled sample photo: from sample_files/ in a checkout, else made afresh."""
    for candidate in (SAMPLE_DIR / DEFAULT_SAMPLE, Path.cwd() / "sample_files" / DEFAULT_SAMPLE):
        if candidate.is_file():
            return candidate
    from udpxfer.lab.samples import write_photo  # Pillow, which matplotlib brings along

    target = ensure_writable_dir(reports_dir / "demo-files") / DEFAULT_SAMPLE
    return target if target.is_file() else write_photo(target)


def run_demo(
    sample: Path,
    reports_dir: Path,
    *,
    seed: int = 1,
    say: Callable[[str], None] = print,
) -> list[DemoRun]:
    """Send ``sample`` in blast then reliable mode through the relay; render every report.

    Raises:
        TransferError: a run did not end in time.
    """
    ensure_writable_dir(reports_dir)
    files_dir = reports_dir / "demo-files"
    say(f"forward path: {FORWARD.describe()}; reverse path: {REVERSE.describe()}; seed {seed}")
    runs = [
        _run_mode(mode, sample, reports_dir, files_dir, seed, say)
        for mode in (Mode.BLAST, Mode.RELIABLE)
    ]
    comparison = render_comparison(
        [run.report for run in runs], reports_dir, "html", stem="demo-comparison"
    )
    say(f"comparison  {comparison}")
    return runs


def _run_mode(
    mode: Mode,
    sample: Path,
    reports_dir: Path,
    files_dir: Path,
    seed: int,
    say: Callable[[str], None],
) -> DemoRun:
    stem = f"demo-{mode.label}"
    server = ReceiverServer(
        Address(LOOPBACK, 0),
        files_dir / mode.label,
        report_path=reports_dir / f"{stem}.json",
        trace_path=reports_dir / f"{stem}.trace",
        once=True,
        config=ReceiverConfig(blast_grace_s=0.3, idle_timeout_s=5.0),
    )
    for old in (files_dir / mode.label).glob(f"{sample.name}*"):
        old.unlink()  # each demo run starts clean, so names stay stable
    relay = Relay(
        Address(LOOPBACK, 0),
        Address(*server.address),
        forward=FORWARD,
        reverse=REVERSE,
        seed=seed,
    )
    thread = threading.Thread(target=server.serve, name=f"demo-receiver-{mode.label}", daemon=True)
    thread.start()
    relay.start()
    try:
        config = SenderConfig(mode=mode, rate_bps=DEMO_RATE_BPS, chunk_size=DEMO_CHUNK_BYTES)
        send_file(sample, Address(*relay.listen_address), config)
        thread.join(RUN_TIMEOUT_S)
        if thread.is_alive() or not server.results:
            raise TransferError(f"the {mode.label} demo run did not finish in time")
    finally:
        relay.stop()
        relay.join(5.0)
        relay.close()
    result = server.results[0]
    doc = result.report
    images = None
    if result.file_path is not None and sample.suffix.lower() in {".jpg", ".jpeg", ".png"}:
        images = (sample, result.file_path)
    markdown = render_markdown(doc, reports_dir, stem=stem)
    page = render_html(doc, reports_dir, images=images, stem=stem)
    forward = relay.forward.stats
    loss = doc["loss"]
    say(
        f"{mode.label:<9} relay dropped {forward.dropped} of {forward.datagrams_in} datagrams; "
        f"first-pass loss {loss['rate'] * 100:.1f}% in "
        f"{plural(loss.get('bursts', {}).get('count', 0), 'burst')}; "
        f"file {'verified' if doc['file']['verified'] else 'incomplete'} "
        f"({plural(doc['chunks']['retransmitted'], 'chunk')} resent)"
    )
    for line in summary_lines(doc):
        say(f"  {line}")
    say(f"  written   {result.report_path}, {markdown.name}, {page.name}")
    return DemoRun(
        mode, doc, result.report_path, markdown, page, forward.datagrams_in, forward.dropped
    )
