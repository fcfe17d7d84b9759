"""A trace on disk, written as it comes and read a chunk at a time (``udpxfer.trace/2``).

The file is a plain sequence of ``.npy`` arrays: a header (JSON in a uint8 array: chunk count,
chunk size, file size, mode, start), record chunks (structured arrays of ``RECORD``, the six
trace columns), then a footer (JSON: what is known only at the end) and, for a resumed
transfer, the packed bits of the chunks that were on disk already.

Why this and not ``.npz`` or Parquet: a zip archive cannot grow without rewriting its central
directory, so ``.npz`` meant holding the whole trace in memory until the transfer ended.
Appending ``.npy`` arrays is one plain write per chunk; a receiver killed mid-transfer leaves
every chunk written so far readable; ``numpy.load`` on an open file reads the arrays in order
with no udpxfer code (``np.load(f)`` again and again); and it needs no new dependency (pyarrow
weighs 100+ MB for six integer columns). The cost: no compression (34 bytes a datagram, about
26 MB per GiB transferred at 1,400-byte chunks).
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np
import numpy.typing as npt

from udpxfer.errors import TransportError, map_os_errors
from udpxfer.paths import unique_path

STREAM_FORMAT: Final = "udpxfer.trace/2"
NPY_MAGIC: Final = b"\x93NUMPY"
RECORD: Final = np.dtype(
    [
        ("index", "<i8"),
        ("tx", "<i8"),
        ("sent_ns", "<i8"),
        ("arrival_ns", "<i8"),
        ("pass_no", "u1"),
        ("flags", "u1"),
    ]
)
COLUMNS: Final = ("index", "tx", "sent_ns", "arrival_ns", "pass_no", "flags")
CHUNK_ROWS: Final = 1 << 16  # records per chunk the receiver writes (2.2 MB)
MAX_CHUNK_ROWS: Final = 1 << 20  # the most a reader takes in one chunk (34 MB)
MAX_META_BYTES: Final = 1 << 16
HEADER_KEYS: Final = ("chunk_count", "chunk_size", "file_size", "mode", "started_ns")


def _write_array(handle: BinaryIO, array: npt.NDArray[Any]) -> None:
    """One ``.npy`` array: its header, then its bytes (numpy's own writer asks the file for its
    position, which a FIFO does not have)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    handle.write(header.getvalue())
    handle.write(np.ascontiguousarray(array).data)


def _json_array(doc: dict[str, Any]) -> npt.NDArray[np.uint8]:
    return np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)


def records(columns: dict[str, npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """The six columns as one ``RECORD`` array."""
    out = np.empty(columns["index"].size, dtype=RECORD)
    for name in COLUMNS:
        out[name] = columns[name]
    return out


class TraceWriter:
    """Appends a trace to a binary file: the header now, chunks as they come, the footer."""

    def __init__(self, handle: BinaryIO, path: Path, **header: Any) -> None:
        self.handle = handle
        self.path = path
        self.rows = 0
        _write_array(handle, _json_array({"format": STREAM_FORMAT, **header}))

    @classmethod
    def create(cls, target: Path, **header: Any) -> TraceWriter:
        """A new trace at ``target`` (a free ``-N`` name if it is taken; a FIFO as it is).

        Raises:
            TransportError: the file cannot be created.
        """
        try:
            mode = os.stat(target).st_mode
        except OSError:
            mode = None
        with map_os_errors(TransportError, f"cannot write trace {target}"):
            if mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
                return cls(open(target, "wb"), target, **header)
            target.parent.mkdir(parents=True, exist_ok=True)
            while True:
                path = unique_path(target.parent, target.name)
                try:
                    handle = open(path, "xb")  # noqa: SIM115  O_EXCL: never over anything
                except FileExistsError:
                    continue
                return cls(handle, path, **header)

    def write(self, columns: dict[str, npt.NDArray[Any]]) -> None:
        """Append one chunk of records (nothing for an empty one)."""
        if columns["index"].size:
            self.rows += int(columns["index"].size)
            _write_array(self.handle, records(columns))

    def close(self, *, tx_sent: int, chunks_sent: int, held_before: bytes = b"") -> Path:
        """Write the footer and close; returns the path."""
        footer = {"end": True, "tx_sent": tx_sent, "chunks_sent": chunks_sent}
        footer["held_before"] = len(held_before)
        _write_array(self.handle, _json_array(footer))
        if held_before:
            _write_array(self.handle, np.frombuffer(held_before, dtype=np.uint8))
        self.handle.close()
        return self.path


def _read_array(handle: BinaryIO, limit_rows: int) -> npt.NDArray[Any] | None:
    """The next array of the stream (None at its end or a cut-off last array).

    Raises:
        ValueError: not an array of the trace's two kinds, or larger than allowed.
    """
    magic = handle.read(len(NPY_MAGIC))
    if len(magic) < len(NPY_MAGIC):
        return None
    if magic != NPY_MAGIC:
        raise ValueError("not a stream of .npy arrays")
    major = handle.read(2)
    if len(major) < 2:
        return None
    if major[0] == 1:
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    elif major[0] in (2, 3):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f"unknown .npy version {major[0]}")
    if len(shape) != 1 or fortran:
        raise ValueError("a trace holds 1-D arrays only")
    if dtype == RECORD:
        if shape[0] > MAX_CHUNK_ROWS:
            raise ValueError(f"a chunk of {shape[0]} records (at most {MAX_CHUNK_ROWS})")
    elif dtype == np.dtype(np.uint8):
        if shape[0] > limit_rows:
            raise ValueError(f"a metadata array of {shape[0]} bytes")
    else:
        raise ValueError(f"an array of {dtype}, not trace records")
    size = math.prod(shape) * dtype.itemsize
    data = handle.read(size)
    if len(data) < size:
        return None  # cut off: the writer was stopped mid-chunk
    return np.frombuffer(data, dtype=dtype)


def _json(array: npt.NDArray[Any] | None, what: str) -> dict[str, Any]:
    if array is None or array.dtype != np.uint8:
        raise ValueError(f"no {what}")
    try:
        doc = json.loads(array.tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"a damaged {what}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"a damaged {what}")
    return doc


class TraceReader:
    """Reads a streamed trace: ``header`` at once, ``chunks()`` one at a time, then
    ``footer`` (defaults where the writer was stopped before it)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        header = _json(_read_array(handle, MAX_META_BYTES), "trace header")
        if header.get("format") != STREAM_FORMAT:
            raise ValueError(f"not a {STREAM_FORMAT} stream")
        for key in HEADER_KEYS:
            value = header.get(key)
            if key == "mode":
                if not isinstance(value, str):
                    raise ValueError("the header has no mode")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"the header's {key} is not a whole number")
        self.header = header
        self.footer: dict[str, Any] = {"tx_sent": -1, "chunks_sent": -1}
        self.held_before = b""

    def chunks(self) -> Iterator[npt.NDArray[Any]]:
        """The record chunks in order (each at most ``MAX_CHUNK_ROWS`` records)."""
        limit = max(MAX_META_BYTES, (int(self.header["chunk_count"]) + 7) // 8)
        while (array := _read_array(self.handle, limit)) is not None:
            if array.dtype == RECORD:
                yield array
                continue
            footer = _json(array, "trace footer")
            for key in ("tx_sent", "chunks_sent"):
                value = footer.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    self.footer[key] = value
            if footer.get("held_before"):
                held = _read_array(self.handle, limit)
                if held is None or held.dtype != np.uint8:
                    raise ValueError("the resumed chunks' bits are missing")
                self.held_before = held.tobytes()
            return


def is_stream(head: bytes) -> bool:
    """True when a file starting with ``head`` is a streamed trace (not an ``.npz``)."""
    return head.startswith(NPY_MAGIC)
