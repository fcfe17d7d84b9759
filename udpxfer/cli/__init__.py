"""The command line: typer and tqdm live in this package only."""

from __future__ import annotations

from udpxfer.cli import companions, lab, reports, transfer  # noqa: F401  (they register their commands)
from udpxfer.cli.app import app


def main() -> None:
    """Entry point of the ``udpxfer`` command."""
    app()
