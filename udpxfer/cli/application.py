"""The typer application objects and the one place errors become exit codes.

Exit codes (README): 0 success; 1 transfer finished but the file is not complete or not
verified; 2 bad usage or bad input; 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
import typer.core

from udpxfer import __version__
from udpxfer.cli.progress import clear_line
from udpxfer.errors import TransferError, UdpxferError

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="udpxfer",
    help=(
        "Move files over UDP and measure exactly what the network did to them.\n\n"
        "Exit codes: 0 complete and verified, 1 finished but incomplete or unverified, "
        "2 bad usage or input, 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
tcp_app = typer.Typer(
    help="TCP companions: echo, palindrome, file transfer.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
udp_app = typer.Typer(
    help="UDP companions: echo server and ping-like echo client.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(tcp_app, name="tcp")
app.add_typer(udp_app, name="udp")


# Typer prints an argument's Python type beside its name (`FILE <path>`, `TEXT <list[str]>`);
# where a metavar names what the argument takes, that says it better.
_argument_type = typer.core.TyperArgument.display_type_rich


def _argument_type_unless_named(self: typer.core.TyperArgument, ctx: Any) -> str | None:
    return None if self.metavar else _argument_type(self, ctx)


typer.core.TyperArgument.display_type_rich = _argument_type_unless_named  # type: ignore[method-assign,assignment]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"udpxfer {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Move files over UDP and measure exactly what the network did to them."""


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    typer.echo(f"udpxfer: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def guarded() -> Iterator[None]:
    """Turn udpxfer errors and Ctrl-C into one line on stderr and a documented exit code."""
    try:
        yield
    except KeyboardInterrupt:
        clear_line()  # the terminal echoed ^C where a bar was: start a clean line
        typer.echo("udpxfer: interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except TransferError as exc:
        fail(str(exc), EXIT_INCOMPLETE)
    except UdpxferError as exc:
        fail(str(exc), EXIT_USAGE)
    except BrokenPipeError:
        # stdout closed by a pager or `head`: nothing left to say.
        sys.stderr.close()
        raise typer.Exit(EXIT_OK) from None
