"""``udpxfer keygen``: a new pre-shared key file for keyed mode."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from udpxfer.cli.application import app, guarded
from udpxfer.net.keyfile import (
    KEY_FILE_ENV,
    key_file_warning,
    load_key_file,
    new_key,
    write_key_file,
)


@app.command(short_help="Write a new random pre-shared key file for --key-file.")
def keygen(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH", help="Where to write the key; must not exist yet.", show_default=False
        ),
    ],
) -> None:
    """Write a new random pre-shared key to PATH (mode 0600, never overwritten).

    Both ends of a transfer need the same key: copy the file to the other
    machine over a safe channel (scp, a USB stick; never plain mail or chat),
    then give it to send and recv with --key-file PATH or the UDPXFER_KEY_FILE
    environment variable. Every datagram is then authenticated, and the data
    encrypted unless --no-encrypt.

    Exit codes: 0 written, 2 PATH exists or cannot be written.

    Example: udpxfer keygen lab.key
    """
    with guarded():
        write_key_file(path, new_key())
        typer.echo(
            f"wrote a new key to {path}: copy it to the other side over a safe channel, "
            f"then use --key-file {path} (or {KEY_FILE_ENV}={path}) on both send and recv"
        )


KeyFileOption = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        envvar=KEY_FILE_ENV,
        metavar="PATH",
        help="Pre-shared key file (from `udpxfer keygen`), the same on both ends: every "
        "datagram is authenticated, and its data encrypted unless --no-encrypt. "
        f"Also ${KEY_FILE_ENV}.",
        show_default=False,
    ),
]
NoEncryptOption = Annotated[
    bool,
    typer.Option(
        "--no-encrypt",
        help="With --key-file: authenticate every datagram but leave the data in clear.",
    ),
]


def load_key(path: Path | None) -> bytes | None:
    """The key of ``--key-file`` (None without one); warns when others can read the file.

    Raises:
        UsageError: the file is missing, unreadable or not a key.
    """
    if path is None:
        return None
    key = load_key_file(path)
    warning = key_file_warning(path)
    if warning is not None:
        typer.echo(f"udpxfer: warning: {warning}", err=True)
    return key
