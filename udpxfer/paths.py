"""Safe places to write: harmless names from the network, free paths, writable directories.

Nothing here ever writes outside the directory it is given.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from pathlib import Path

from udpxfer.errors import UsageError, map_os_errors

MAX_NAME_BYTES = 200  # leaves room for a ``-NN`` suffix and ``.partial`` under NAME_MAX (255)
PARTIAL_SUFFIX = ".partial"


def safe_name(name: str) -> str:
    """Reduce a file name from the network to a harmless base name.

    Path separators, control characters and NULs are removed, ``.``/``..`` and empty names
    become ``unnamed``, and the result is cut to ``MAX_NAME_BYTES`` of UTF-8 (keeping the
    extension), so the name can only ever denote a plain file inside the output directory.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    base = base.strip().lstrip(".") or "unnamed"
    encoded = base.encode("utf-8")
    if len(encoded) > MAX_NAME_BYTES:
        stem, dot, ext = base.rpartition(".")
        ext_bytes = (dot + ext).encode("utf-8") if dot and len(ext) <= 16 else b""
        head = (stem if ext_bytes else base).encode("utf-8")[: MAX_NAME_BYTES - len(ext_bytes)]
        base = head.decode("utf-8", errors="ignore") + ext_bytes.decode("utf-8")
    while base.endswith(PARTIAL_SUFFIX):  # only unfinished files carry that suffix
        base = base[: -len(PARTIAL_SUFFIX)].rstrip(".") or "unnamed"
    return base


def unique_path(directory: Path, name: str, *, also_free: tuple[str, ...] = ()) -> Path:
    """Return ``directory/name``, or ``stem-N.ext`` with the smallest free N.

    A path is free when neither it nor any of ``path + suffix`` for ``also_free`` exists, so
    a receiver never overwrites an earlier transfer's file, partial file or report.
    """
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    candidate = directory / name
    n = 1
    # lexists: a dangling symbolic link occupies its name too.
    while os.path.lexists(candidate) or any(
        os.path.lexists(str(candidate) + suffix) for suffix in also_free
    ):
        candidate = directory / f"{stem}-{n}{dot}{ext}"
        n += 1
    return candidate


def ensure_writable_dir(directory: Path) -> Path:
    """Create ``directory`` if needed and check that files can be created in it.

    Raises:
        UsageError: it cannot be created or written.
    """
    for ancestor in (directory, *directory.parents):
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise UsageError(f"{ancestor} is a file, not a directory")
            break
    with map_os_errors(UsageError, f"cannot create directory {directory}"):
        directory.mkdir(parents=True, exist_ok=True)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"directory {directory} is not writable")
    # Permission bits do not tell the whole story (root passes os.access everywhere; /proc,
    # /sys and read-only mounts still refuse): create a file there and remove it.
    with map_os_errors(UsageError, f"directory {directory} is not writable"):
        fd, probe = tempfile.mkstemp(prefix=".udpxfer-probe-", dir=directory)
    os.close(fd)
    os.unlink(probe)
    return directory
