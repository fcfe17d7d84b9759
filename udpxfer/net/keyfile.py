"""Keyed mode's I/O side: key files on disk, and the random keys, nonces and token secrets."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from udpxfer.errors import UsageError, map_os_errors
from udpxfer.protocol.keys import KEY_BYTES, NONCE_BYTES, SECRET_BYTES

KEY_FILE_PREFIX = "udpxfer-psk-1"
KEY_FILE_ENV = "UDPXFER_KEY_FILE"  # the environment's stand-in for --key-file
_KEY_FILE_MAX_BYTES = 4096  # a key file is one short line; anything larger is something else


# -- randomness --


def new_key() -> bytes:
    """A new random pre-shared key."""
    return os.urandom(KEY_BYTES)


def new_nonce() -> bytes:
    """A new random session nonce (one per side per session)."""
    return os.urandom(NONCE_BYTES)


def new_secret() -> bytes:
    """A new random secret for a ``protocol.keys.TokenMinter``."""
    return os.urandom(SECRET_BYTES)


# -- key files --


def write_key_file(path: Path | str, key: bytes) -> None:
    """Create ``path`` holding ``key`` as one line ``udpxfer-psk-1 <base64>``, mode 0600.

    Raises:
        UsageError: ``path`` exists (a file, a directory or a symlink, even a dangling one:
            never overwritten, never followed) or cannot be created.
    """
    if len(key) != KEY_BYTES:
        raise ValueError(f"a key is {KEY_BYTES} bytes, not {len(key)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with map_os_errors(UsageError, f"{path}: cannot create the key file"):
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError as exc:
            raise UsageError(
                f"{path}: exists; refusing to overwrite it (choose a new path)"
            ) from exc
    line = f"{KEY_FILE_PREFIX} {base64.b64encode(key).decode('ascii')}\n".encode("ascii")
    with map_os_errors(UsageError, f"{path}: cannot write the key file"):
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o600)  # whatever the umask left
                out.write(line)
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            os.unlink(path)  # never leave a half-written key behind
            raise


def load_key_file(path: Path | str) -> bytes:
    """The key in ``path``, a file written by :func:`write_key_file` (``udpxfer keygen``).

    Raises:
        UsageError: one line saying why: missing, unreadable, not a regular file, not a
            udpxfer key file, or a key of the wrong length.
    """
    with map_os_errors(UsageError, f"{path}: cannot read the key file"):
        try:
            # O_NONBLOCK: a FIFO must not hang the program before fstat can refuse it.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise UsageError(f"{path}: no such key file (make one with `udpxfer keygen`)") from exc
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise UsageError(f"{path}: is a directory, not a key file")
            if not stat.S_ISREG(mode):
                raise UsageError(f"{path}: not a regular file, not a key file")
            raw = os.read(fd, _KEY_FILE_MAX_BYTES + 1)
        finally:
            os.close(fd)
    return _parse_key_file(str(path), raw)


def _parse_key_file(name: str, raw: bytes) -> bytes:
    not_ours = f"{name}: not a udpxfer key file (expected one line '{KEY_FILE_PREFIX} <base64>')"
    if len(raw) > _KEY_FILE_MAX_BYTES:
        raise UsageError(not_ours)
    try:
        fields = raw.decode("ascii").split()
    except UnicodeDecodeError as exc:
        raise UsageError(not_ours) from exc
    if len(fields) != 2 or fields[0] != KEY_FILE_PREFIX:
        raise UsageError(not_ours)
    try:
        key = base64.b64decode(fields[1], validate=True)
    except binascii.Error as exc:
        raise UsageError(f"{name}: damaged key file (bad base64)") from exc
    if len(key) != KEY_BYTES:
        raise UsageError(f"{name}: the key is {len(key)} bytes, expected {KEY_BYTES}")
    return key


def key_file_warning(path: Path | str) -> str | None:
    """A one-line warning if group or others may read the key file, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # load_key_file reports why it cannot be read
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return (
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}); "
            f"anyone who reads it can forge datagrams: chmod 600 {path}"
        )
    return None
