"""Resume sidecars: which blocks of a ``NAME.partial`` file are on disk, for which source.

A sidecar is a small JSON file beside the partial file; a transfer resumes only from one that
names the very same source (name, size, SHA-256, modification time, chunk and block size).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from udpxfer.errors import TransportError, map_os_errors

if TYPE_CHECKING:
    import numpy as np

    from udpxfer.protocol.ranges import Bitmap

STATE_SUFFIX = ".state"  # the resume sidecar beside NAME.partial
STATE_SCHEMA = "udpxfer.partial/1"
_NO_DIGEST_HEX = "0" * 64  # a sidecar or META of a transfer whose digest was still to come


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    """What makes two transfers the same file: a changed source never resumes."""

    name: str
    size: int
    sha256: str
    mtime_ns: int
    chunk_size: int
    block_chunks: int

    def same_source(self, other: SourceIdentity) -> bool:
        """Every field equal; the digest only when both know it (a large file's sender
        announces it after the start, PROTOCOL.md "A large file's digest follows")."""
        return _same(asdict(self), asdict(other))


def _same(have: dict[str, object], want: dict[str, object]) -> bool:
    unknown = {_NO_DIGEST_HEX}
    return all(
        have.get(key) == value
        or (key == "sha256" and (have.get(key) in unknown or value in unknown))
        for key, value in want.items()
    )


def state_path(partial: Path) -> Path:
    """The sidecar of a ``.partial`` file."""
    return Path(str(partial) + STATE_SUFFIX)


def write_state(
    partial: Path, identity: SourceIdentity, blocks: bytes, fd: int, *, sync: bool = True
) -> None:
    """Record which blocks are on disk, atomically: data synced first (``sync``; or by the
    caller), then a temporary file renamed over the sidecar, so a crash leaves the old state
    or the new, never half of one.

    Raises:
        TransportError: the file system refused.
    """
    target = state_path(partial)
    doc = {"schema": STATE_SCHEMA, **asdict(identity), "blocks": base64.b64encode(blocks).decode()}
    tmp = target.with_name(target.name + ".tmp")
    with map_os_errors(TransportError, f"cannot write {target}"):
        if sync:
            os.fdatasync(fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        out = os.open(tmp, flags, 0o644)
        try:
            os.write(out, json.dumps(doc).encode())
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, target)


def read_state(partial: Path, identity: SourceIdentity) -> bytes | None:
    """The block map of a sidecar that describes this very source, or None.

    Anything unreadable, foreign or of another version of the file gives None.
    """
    target = state_path(partial)
    try:
        if target.is_symlink() or partial.is_symlink() or not partial.is_file():
            return None
        raw = target.read_bytes()
        if len(raw) > 1 << 20:
            return None
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
            return None
        if not _same(doc, asdict(identity)):
            return None
        if os.stat(partial).st_size != identity.size:
            return None
        blocks = base64.b64decode(str(doc.get("blocks", "")), validate=True)
    except (OSError, ValueError, json.JSONDecodeError, binascii.Error):
        return None
    return blocks


def remove_state(partial: Path) -> None:
    """Remove a sidecar (the file is final, or it started over)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path(partial))


def blocks_on_disk(held: np.ndarray, block_chunks: int) -> bytes:
    """Packed bits (little-endian) of the blocks whose every chunk is held."""
    import numpy as np

    if block_chunks <= 0 or held.size == 0:
        return b""
    return np.packbits(_full_blocks(held, block_chunks), bitorder="little").tobytes()


def blocks_held(held: Bitmap, block_chunks: int, stretch_chunks: int = 1 << 20) -> bytes:
    """``blocks_on_disk`` of a packed chunk bitmap, a stretch of about ``stretch_chunks`` at a
    time: a byte per chunk only for the stretch, not for a whole (huge) file."""
    import numpy as np

    size = held.size
    if block_chunks <= 0 or size == 0:
        return b""
    per = block_chunks * 8  # stretches of whole blocks that start on a whole byte
    step = max(per, stretch_chunks // per * per)
    bits = np.frombuffer(held.bits, dtype=np.uint8)
    parts = []
    for start in range(0, size, step):
        end = min(size, start + step)
        stretch = np.unpackbits(bits[start >> 3 : (end + 7) >> 3], bitorder="little")
        parts.append(_full_blocks(stretch[: end - start], block_chunks))
    return np.packbits(np.concatenate(parts), bitorder="little").tobytes()


def _full_blocks(held: np.ndarray, block_chunks: int) -> np.ndarray:
    """0/1 per block of ``block_chunks`` chunks: 1 where every chunk is held (the last block
    may be shorter)."""
    import numpy as np

    blocks = -(-held.size // block_chunks)
    padded = np.ones(blocks * block_chunks, dtype=np.uint8)
    padded[: held.size] = held
    full = np.all(padded.reshape(blocks, block_chunks), axis=1)
    return np.asarray(full, dtype=np.uint8)


def chunks_of_blocks(blocks: bytes, chunk_count: int, block_chunks: int) -> np.ndarray:
    """0/1 per chunk: held when its block is in ``blocks``."""
    import numpy as np

    if block_chunks <= 0 or chunk_count == 0:
        return np.zeros(chunk_count, dtype=np.uint8)
    n_blocks = -(-chunk_count // block_chunks)
    bits = np.unpackbits(np.frombuffer(blocks, dtype=np.uint8), bitorder="little")[:n_blocks]
    full = np.zeros(n_blocks, dtype=np.uint8)
    full[: bits.size] = bits
    return np.repeat(full, block_chunks)[:chunk_count]
