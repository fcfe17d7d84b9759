"""Per-datagram trace rows of a receiver session: appended cheaply, taken out as numpy columns."""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]


class TraceRecorder:
    """Per-datagram records, appended cheaply and taken out in chunks (``drain``): the rows
    waiting for the statistics, or for the driver to write them to a trace file."""

    __slots__ = ("arrival_ns", "flags", "index", "pass_no", "sent_ns", "tx")

    def __init__(self) -> None:
        self.index = array("q")
        self.tx = array("q")
        self.sent_ns = array("q")
        self.arrival_ns = array("q")
        self.pass_no = array("B")
        self.flags = array("B")

    def __len__(self) -> int:
        return len(self.index)

    def extend(
        self,
        index: I64,
        tx: I64,
        sent_ns: I64,
        arrival_ns: int,
        pass_no: npt.NDArray[np.integer[Any]],
        flags: npt.NDArray[np.integer[Any]],
    ) -> None:
        """Append a batch of records (columns of equal length)."""
        self.index.frombytes(index.astype(np.int64, copy=False).tobytes())
        self.tx.frombytes(tx.astype(np.int64, copy=False).tobytes())
        self.sent_ns.frombytes(sent_ns.astype(np.int64, copy=False).tobytes())
        self.arrival_ns.frombytes(np.full(index.size, arrival_ns, dtype=np.int64).tobytes())
        self.pass_no.frombytes(pass_no.astype(np.uint8, copy=False).tobytes())
        self.flags.frombytes(flags.astype(np.uint8, copy=False).tobytes())

    def append(
        self, index: int, tx: int, sent_ns: int, arrival_ns: int, pass_no: int, flags: int
    ) -> None:
        """Append one record."""
        self.index.append(index)
        self.tx.append(tx)
        self.sent_ns.append(sent_ns)
        self.arrival_ns.append(arrival_ns)
        self.pass_no.append(pass_no)
        self.flags.append(flags)

    def drain(self) -> dict[str, npt.NDArray[Any]]:
        """The records so far as numpy columns (copies); the recorder starts empty again."""
        out: dict[str, npt.NDArray[Any]] = {}
        for name, dtype in _RECORDER_COLUMNS:
            column = getattr(self, name)
            out[name] = np.frombuffer(column, dtype=dtype).copy()
            setattr(self, name, array(column.typecode))
        return out


_RECORDER_COLUMNS = (
    ("index", np.int64),
    ("tx", np.int64),
    ("sent_ns", np.int64),
    ("arrival_ns", np.int64),
    ("pass_no", np.uint8),
    ("flags", np.uint8),
)
