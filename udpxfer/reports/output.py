"""Where reports and traces are written: one policy for every command that writes them.

A target is one of:

- ``-`` (``STDOUT``): the document goes to standard output, and nothing else does.
- a path that names this process's own stdout or stderr (``/dev/stdout``, ``/dev/fd/2``...):
  written to that stream, as ``-`` would be; the ``/dev/stdout`` symlink is never touched.
- a FIFO or a character device (a terminal, ``/dev/null``), reached directly or through
  symlinks: opened for writing as it is (no create, no truncate) and written into.
- a directory: fresh names are made inside it.
- anything else: a regular file, created through a temporary file in the same directory that
  is linked into place only where nothing exists. An existing name (a regular file, an earlier
  report, a symlink, even a dangling one) is left alone: the document gets ``stem-N.ext``.

Block devices and sockets are refused. Every target is checked when the command starts
(``check_target``), so a bad path fails at once, not after a transfer.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from udpxfer.errors import TransportError, UsageError, map_os_errors
from udpxfer.paths import ensure_writable_dir, unique_path

STDOUT = Path("-")

Writer = Callable[[BinaryIO], None]


def is_directory_target(text: str) -> bool:
    """``PATH/`` or an existing directory: fresh names are made inside it."""
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def check_target(text: str, *, what: str, allow_stdout: bool = True) -> Path:
    """Check a ``--report``/``--trace`` argument at start and return it as a path.

    Raises:
        UsageError: it cannot be written (missing or read-only directory, a block device,
            a socket, ``-`` where a stream makes no sense).
    """
    if text == "-":
        if not allow_stdout:
            raise UsageError(f"{what}: '-' (stdout) is not possible here; give a file path")
        return STDOUT
    path = Path(text)
    if is_directory_target(text):
        ensure_writable_dir(path)
        return path
    stream = _std_stream(path)
    if stream is not None:
        if not allow_stdout and stream is sys.stdout.buffer:
            raise UsageError(f"{what}: {path} is stdout, which is not possible here")
        return path
    with map_os_errors(UsageError, f"{what} {path}"):
        try:
            mode: int | None = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None  # nothing there (or a dangling symlink): a fresh file
    if mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        if not os.access(path, os.W_OK):
            raise UsageError(f"{what} {path}: not writable")
        return path
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(f"{what} {path}: not a regular file, a FIFO or a terminal")
    ensure_writable_dir(path.parent)
    return path


def write_report(doc: dict[str, Any], path: Path, *, what: str = "report") -> Path:
    """Write the JSON document ``doc`` to ``path`` under the policy above; return where.

    A file gets indented JSON; a stream (``-``, a FIFO, a terminal) gets it on one line.

    Raises:
        TransportError: it cannot be written.
    """
    data = (json_text(doc, indent=None if is_stream(path) else 2) + "\n").encode("utf-8")

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    return write_target(path, write, what=what)


def json_text(doc: Any, *, indent: int | None = None) -> str:
    """``doc`` as strict JSON: NaN and infinities as null, numpy scalars as plain numbers."""
    return json.dumps(_json_safe(doc), indent=indent, allow_nan=False)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # a numpy scalar; numpy itself is not imported here
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_target(path: Path, write: Writer, *, what: str) -> Path:
    """Write through ``write(handle)`` to ``path`` under the policy above; return where.

    Raises:
        TransportError: the file cannot be written.
    """
    if path == STDOUT:
        _write_stream(sys.stdout.buffer, write)
        return path
    stream = _std_stream(path)
    if stream is not None:
        _write_stream(stream, write)
        return path
    try:
        mode: int | None = os.stat(path).st_mode
    except OSError:
        mode = None
    try:
        if mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            _write_special(path, write)
            return path
        if mode is not None and not stat.S_ISREG(mode):
            raise TransportError(f"cannot write {what} {path}: not a regular file")
        return _write_new(path, write)
    except OSError as exc:
        raise TransportError(f"cannot write {what} {path}: {_reason(exc)}") from exc


def is_stream(path: Path) -> bool:
    """True when ``path`` is written as a stream (stdout, a FIFO, a terminal), not a file."""
    if path == STDOUT or _std_stream(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def is_stdout(path: Path) -> bool:
    """True when ``path`` is ``-`` or leads to this process's own stdout (``/dev/stdout``)."""
    return path == STDOUT or _std_stream(path) is sys.stdout.buffer


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENXIO:
        return "no process is reading the FIFO"
    return exc.strerror or str(exc)


def _std_stream(path: Path) -> BinaryIO | None:
    """This process's stdout or stderr when ``path`` leads to the same open file."""
    try:
        target = os.stat(path)
    except OSError:
        return None
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            if os.path.samestat(target, os.fstat(fd)):
                return stream.buffer
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _write_stream(stream: BinaryIO, write: Writer) -> None:
    sys.stdout.flush()
    write(stream)
    stream.flush()


def _write_special(path: Path, write: Writer) -> None:
    """A FIFO or character device: opened as it is; a FIFO without a reader fails at once."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "wb") as handle:
        write(handle)


def _write_new(path: Path, write: Writer) -> Path:
    """A fresh regular file: a temporary beside it, linked in where nothing exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crashed run of the same pid
    try:
        with open(tmp, "xb") as handle:  # O_EXCL: never through a planted symlink
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        while True:
            target = unique_path(path.parent, path.name)
            try:
                os.link(tmp, target)  # fails where anything exists: never replaces
                return target
            except FileExistsError:
                continue  # taken between the look and the link: try the next name
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # No hard links on this filesystem: rename onto the name found free.
                os.rename(tmp, target)
                return target
    finally:
        tmp.unlink(missing_ok=True)
