"""``udpxfer report`` and ``udpxfer demo``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from udpxfer.cli.application import app, fail, guarded


class FormatChoice(StrEnum):
    """Output formats of ``udpxfer report``."""

    md = "md"
    html = "html"


@app.command(short_help="Render reports as Markdown or one HTML page with plots.")
def report(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="REPORT",
            help="A report (.json) or trace (recv --trace); two or more to compare them.",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        FormatChoice,
        typer.Option("--format", "-f", help="md: Markdown with PNG plots; html: one page."),
    ] = FormatChoice.html,
    out: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Directory to write into.")
    ] = Path("reports"),
    original: Annotated[
        Path | None,
        typer.Option(
            "--original",
            metavar="FILE",
            help="The sent file, to show beside the received one (images, e.g. a JPEG).",
        ),
    ] = None,
) -> None:
    """Render reports into Markdown or a self-contained HTML page with plots.

    PATHS are JSON reports (from udpxfer recv) or traces (recv --trace),
    read a chunk at a time.
    Two or more are compared side by side.

    Pages are named after the input: run.json or run.trace gives OUT/run.html
    (or run.md). Plots: loss map over chunk index and over time; burst lengths against
    the geometric law of a memoryless channel; goodput and delay variation.

    Example: udpxfer report reports/demo-blast.json --format html
    """
    from udpxfer.reports.reading import load_report
    from udpxfer.reports.render import render_comparison, render_html, render_markdown

    with guarded():
        loaded = [load_report(path) for path in paths]
        if len(loaded) > 1:
            written = render_comparison(loaded, out, fmt.value)
        elif fmt is FormatChoice.md:
            written = render_markdown(loaded[0], out, stem=paths[0].stem)
        else:
            doc = loaded[0]
            images = None
            if original is not None:
                if not original.is_file():
                    fail(f"{original}: no such file")
                images = (original, Path(doc["file"]["path"]))
            written = render_html(doc, out, images=images, stem=paths[0].stem)
        typer.echo(str(written))


@app.command(short_help="A sample file through a lossy relay on loopback.")
def demo(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", metavar="FILE", help="Send this file instead of the bundled photo.jpg."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Where reports go.")] = Path(
        "reports"
    ),
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the impairment.")] = 1,
) -> None:
    """Show the whole job on loopback: a sample file through a lossy relay, both modes.

    A receiver, an impairment relay and a sender run on 127.0.0.1.
    The relay adds Gilbert-Elliott burst loss, delay and jitter,
    and loses 2% of the receiver's feedback. The blast run shows
    what was lost; the reliable run repairs it and verifies the SHA-256.

    Written to --out: demo-blast.*, demo-reliable.* (report, trace,
    Markdown, HTML) and demo-comparison.html. No network needed.
    """
    from udpxfer.lab.demo import find_sample, run_demo

    with guarded():
        sample = file if file is not None else find_sample(out)
        if not sample.is_file():
            fail(f"{sample}: no such file")
        runs = run_demo(sample, out, seed=seed, say=typer.echo)
        reliable = runs[-1].report
        if not reliable["file"]["verified"]:
            fail("the reliable demo run did not verify the file", 1)
