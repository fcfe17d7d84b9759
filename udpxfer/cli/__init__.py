"""The command line: typer and tqdm live in this package only."""

from __future__ import annotations

# Importing a module registers its commands; `udpxfer --help` lists them in this order.
# isort: off
from udpxfer.cli import transfer  # noqa: F401
from udpxfer.cli import reports  # noqa: F401
from udpxfer.cli import lab  # noqa: F401
from udpxfer.cli import compare  # noqa: F401
from udpxfer.cli import companions  # noqa: F401
from udpxfer.cli import keys  # noqa: F401

# isort: on
from udpxfer.cli.app import app


def main() -> None:
    """Entry point of the ``udpxfer`` command."""
    app()
