"""The command line: typer and tqdm live in this package only.

``main`` loads only the modules the command needs: ``udpxfer send`` starts without the
comparison lab, the companions or asyncio. ``from udpxfer.cli import app`` gives the whole
application, every command registered.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

# Importing a module registers its commands; `udpxfer --help` lists them in this order.
_MODULES = ("transfer", "reports", "lab", "compare", "companions", "tcp_transfer", "keys")
# Commands whose module is enough on its own (a sender should start fast).
_ALONE = {"send": ("transfer",), "recv": ("transfer",)}


def load(modules: tuple[str, ...] = _MODULES) -> typer.Typer:
    """The typer application with the commands of ``modules`` registered."""
    for name in modules:
        importlib.import_module(f"udpxfer.cli.{name}")
    from udpxfer.cli.application import app

    if modules == _MODULES:
        globals()["app"] = app  # whole now: later look-ups need not load anything
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Entry point of the ``udpxfer`` command."""
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    load(_ALONE.get(command, _MODULES))()
