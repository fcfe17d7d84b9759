"""The per-datagram trace a receiver records: plain numpy columns.

One element per valid DATA datagram that arrived, in arrival order. ``sections.analyse`` turns a
trace into loss, reordering and delay statistics; this module only holds, checks and stores it.
On disk a trace is streamed (``tracefile``: ``.npy`` chunks appended as they come); traces of
the earlier ``.npz`` format (``udpxfer.trace/1``) still load.
"""

from __future__ import annotations

import array
import pickle
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

import numpy as np
import numpy.typing as npt

from udpxfer.analysis.tracefile import CHUNK_ROWS, COLUMNS, TraceReader, TraceWriter, is_stream
from udpxfer.errors import UsageError, map_os_errors
from udpxfer.protocol.online import TRACE_DUPLICATE, TRACE_RESENT

TRACE_FORMAT: Final = "udpxfer.trace/1"  # the earlier .npz archive, still read

MODES: Final = ("blast", "reliable")

# Bits of ``Trace.flags``.
RESENT: Final = TRACE_RESENT  # sent again in a repair round (``pass_no`` > 0)
DUPLICATE: Final = TRACE_DUPLICATE  # the chunk was already held when this datagram arrived

_INT64_COLUMNS: Final = ("index", "tx", "sent_ns", "arrival_ns")
_UINT8_COLUMNS: Final = ("pass_no", "flags")
_SCALARS: Final = (
    "chunk_count",
    "chunk_size",
    "file_size",
    "tx_sent",
    "started_ns",
    "chunks_sent",
)
_OPTIONAL_SCALARS: Final = ("chunks_sent",)  # absent from traces of earlier versions

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


class Columns(Protocol):
    """Anything holding the six trace columns as ``array.array`` (the receiver's recorder)."""

    index: array.array[int]
    tx: array.array[int]
    sent_ns: array.array[int]
    arrival_ns: array.array[int]
    pass_no: array.array[int]
    flags: array.array[int]


def _column(name: str, values: Any, dtype: type[np.integer[Any]]) -> npt.NDArray[Any]:
    """``values`` as a read-only 1-D array of ``dtype``, refusing anything that would wrap."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"column {name} must be 1-D, not {arr.ndim}-D")
    if arr.size == 0:
        arr = arr.astype(dtype)
    elif arr.dtype != dtype:
        if arr.dtype.kind not in "iu":
            raise ValueError(f"column {name} must hold integers, not {arr.dtype}")
        limits = np.iinfo(dtype)
        if int(arr.min()) < limits.min or int(arr.max()) > limits.max:
            raise ValueError(f"column {name} has values outside {np.dtype(dtype).name}")
        arr = arr.astype(dtype)
    view = arr.view()  # never freeze the caller's own array object
    view.flags.writeable = False
    return view


def _from_buffer(
    name: str, buf: array.array[int], dtype: type[np.integer[Any]]
) -> npt.NDArray[Any]:
    """Wrap an ``array.array`` without copying when its item type already is ``dtype``."""
    if buf.typecode not in "bBhHiIlLqQ":
        raise ValueError(f"column {name}: array typecode {buf.typecode!r} is not an integer type")
    return _column(name, np.frombuffer(buf, dtype=np.dtype(buf.typecode)), dtype)


def _read_fields(handle: BinaryIO) -> dict[str, Any]:
    """The ``Trace`` fields stored in an open ``.npz`` file (``ValueError`` if it is not one)."""
    if handle.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
        raise ValueError("not an .npz archive")
    handle.seek(0)
    loaded = np.load(handle, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive")
    with loaded as archive:
        members = set(archive.files)
        if "format" not in members or str(archive["format"]) != TRACE_FORMAT:
            raise ValueError(f"not a {TRACE_FORMAT} archive")
        missing = (
            {"mode", *_INT64_COLUMNS, *_UINT8_COLUMNS, *_SCALARS} - members - set(_OPTIONAL_SCALARS)
        )
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        fields: dict[str, Any] = {
            name: archive[name] for name in (*_INT64_COLUMNS, *_UINT8_COLUMNS)
        }
        for name in _SCALARS:
            if name not in members:
                continue
            value = archive[name]
            if value.shape != () or value.dtype.kind not in "iu":
                raise ValueError(f"{name} is not an integer scalar")
            fields[name] = int(value)
        fields["mode"] = str(archive["mode"])
        if "held_before" in members:  # optional: a resumed transfer's chunks found on disk
            held = archive["held_before"]
            if held.ndim != 1 or held.dtype != np.uint8:
                raise ValueError("held_before is not a packed bit array")
            fields["held_before"] = held
    return fields


def _read_stream(handle: BinaryIO) -> dict[str, Any]:
    """The ``Trace`` fields of a streamed trace, all chunks joined (in memory: for tests and
    small traces; ``udpxfer report`` reads chunk by chunk instead)."""
    reader = TraceReader(handle)
    parts = list(reader.chunks())
    fields: dict[str, Any] = {key: reader.header[key] for key in ("chunk_count", "chunk_size",
                              "file_size", "mode", "started_ns")}  # fmt: skip
    for name in COLUMNS:
        fields[name] = np.concatenate([p[name] for p in parts]) if parts else np.zeros(0, np.int64)
    fields.update(reader.footer)
    fields["held_before"] = np.frombuffer(reader.held_before, dtype=np.uint8).copy()
    return fields


@dataclass(frozen=True, eq=False)
class Trace:
    """Per-datagram record of one transfer, in arrival order.

    Columns (one element per valid DATA datagram that arrived):
        index: chunk index (chunk ``i`` holds bytes ``[i*chunk_size, (i+1)*chunk_size)``).
        tx: the sender's transmission number, counting resends (``tx == index`` on the first pass).
        sent_ns: sender clock at transmission (ns, arbitrary epoch).
        arrival_ns: receiver monotonic clock at arrival (ns, another arbitrary epoch).
        pass_no: 0 for a first transmission, k for a resend in repair round k.
        flags: ``RESENT`` | ``DUPLICATE`` bits.

    Scalars: ``chunk_count``, ``chunk_size``, ``file_size``, ``mode`` (blast|reliable),
    ``tx_sent`` (DATA datagrams the sender reported sending, -1 if unknown) and ``started_ns``
    (receiver clock at the transfer's first datagram).
    """

    index: I64
    tx: I64
    sent_ns: I64
    arrival_ns: I64
    pass_no: U8
    flags: U8
    chunk_count: int
    chunk_size: int
    file_size: int
    mode: str
    started_ns: int
    tx_sent: int = -1
    chunks_sent: int = -1  # the first pass reached chunks [0, chunks_sent); -1: all of them
    # A resumed transfer's chunks that were on disk already (packed bits, little-endian; empty:
    # none): never sent in this transfer, so neither received nor lost.
    held_before: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros(0, np.uint8))

    def __post_init__(self) -> None:
        for name in _INT64_COLUMNS:
            object.__setattr__(self, name, _column(name, getattr(self, name), np.int64))
        for name in _UINT8_COLUMNS:
            object.__setattr__(self, name, _column(name, getattr(self, name), np.uint8))
        for name in _SCALARS:
            object.__setattr__(self, name, int(getattr(self, name)))
        n = self.index.size
        for name in (*_INT64_COLUMNS, *_UINT8_COLUMNS):
            if getattr(self, name).size != n:
                raise ValueError(f"column {name} has {getattr(self, name).size} rows, index {n}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.chunk_count < 0 or self.chunk_size < 0 or self.file_size < 0:
            raise ValueError("chunk_count, chunk_size and file_size must not be negative")
        if n and (int(self.index.min()) < 0 or int(self.index.max()) >= self.chunk_count):
            raise ValueError(f"chunk index outside 0..{self.chunk_count - 1}")

    def __len__(self) -> int:
        return int(self.index.size)

    @classmethod
    def from_buffers(
        cls,
        *,
        index: array.array[int],
        tx: array.array[int],
        sent_ns: array.array[int],
        arrival_ns: array.array[int],
        pass_no: array.array[int],
        flags: array.array[int],
        chunk_count: int,
        chunk_size: int,
        file_size: int,
        mode: str,
        started_ns: int,
        tx_sent: int = -1,
        chunks_sent: int = -1,
        held_before: bytes = b"",
    ) -> Trace:
        """Build a trace over ``array.array`` columns, sharing their memory where types match.

        Use typecode ``'q'`` for the int64 columns and ``'B'`` for ``pass_no``/``flags`` to avoid
        any copy. While the trace shares an array's memory, that array cannot grow (Python
        raises ``BufferError``), so build the trace once recording is over.
        """
        return cls(
            index=_from_buffer("index", index, np.int64),
            tx=_from_buffer("tx", tx, np.int64),
            sent_ns=_from_buffer("sent_ns", sent_ns, np.int64),
            arrival_ns=_from_buffer("arrival_ns", arrival_ns, np.int64),
            pass_no=_from_buffer("pass_no", pass_no, np.uint8),
            flags=_from_buffer("flags", flags, np.uint8),
            chunk_count=chunk_count,
            chunk_size=chunk_size,
            file_size=file_size,
            mode=mode,
            started_ns=started_ns,
            tx_sent=tx_sent,
            chunks_sent=chunks_sent,
            held_before=np.frombuffer(held_before, dtype=np.uint8).copy(),
        )

    @classmethod
    def from_recorder(cls, columns: Columns, **scalars: Any) -> Trace:
        """``from_buffers`` over an object's six column attributes (e.g. the receiver's recorder).

        Args:
            columns: holds ``index``, ``tx``, ``sent_ns``, ``arrival_ns``, ``pass_no``, ``flags``.
            scalars: the scalar fields (``chunk_count``, ``chunk_size``, ``file_size``, ``mode``,
                ``started_ns`` and optionally ``tx_sent``).
        """
        return cls.from_buffers(
            index=columns.index,
            tx=columns.tx,
            sent_ns=columns.sent_ns,
            arrival_ns=columns.arrival_ns,
            pass_no=columns.pass_no,
            flags=columns.flags,
            **scalars,
        )

    def chunk_bytes(self, index: npt.NDArray[np.int64]) -> I64:
        """Payload length of each chunk in ``index`` (the last chunk may be short)."""
        remaining = self.file_size - index * self.chunk_size
        return np.clip(remaining, 0, self.chunk_size).astype(np.int64)

    def save(self, path: Path) -> Path:
        """Write the trace to ``path`` in the streamed format (``tracefile``); return where it
        went (never over an existing file: a taken name gets ``-1``, ``-2``...).

        Raises:
            TransportError: the file cannot be written.
        """
        writer = TraceWriter.create(path, **self.header())
        try:
            for start in range(0, len(self), CHUNK_ROWS):
                part = slice(start, start + CHUNK_ROWS)
                writer.write({name: getattr(self, name)[part] for name in COLUMNS})
        finally:
            target = writer.close(
                tx_sent=self.tx_sent,
                chunks_sent=self.chunks_sent,
                held_before=self.held_before.tobytes(),
            )
        return target

    def header(self) -> dict[str, Any]:
        """The scalars a streamed trace's header holds."""
        return {
            "chunk_count": self.chunk_count,
            "chunk_size": self.chunk_size,
            "file_size": self.file_size,
            "mode": self.mode,
            "started_ns": self.started_ns,
        }

    @classmethod
    def load(cls, path: Path) -> Trace:
        """Read a trace written by ``save``.

        Raises:
            UsageError: the file is missing, unreadable, not a trace or inconsistent.
        """
        try:
            with map_os_errors(UsageError, f"cannot read trace {path}"), path.open("rb") as handle:
                stream = is_stream(handle.read(8))
                handle.seek(0)
                fields = _read_stream(handle) if stream else _read_fields(handle)
            return cls(**fields)
        except (
            ValueError,
            EOFError,
            zipfile.BadZipFile,
            zlib.error,
            pickle.UnpicklingError,
        ) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "pickle" in reason:  # numpy's advice to load it unsafely is not ours to give
                reason = "it holds Python objects, which udpxfer never loads"
            raise UsageError(f"bad trace file {path}: {reason}") from exc
