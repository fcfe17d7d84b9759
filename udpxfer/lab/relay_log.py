"""The relay's ground truth on disk: every datagram's fate as JSON Lines or CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO, Any

from udpxfer.errors import UsageError, map_os_errors
from udpxfer.lab.impair.records import LOG_COLUMNS, Record


class RecordLog:
    """Writes ground-truth records to a file: JSON Lines, or CSV when the name ends in .csv.

    Raises:
        UsageError: the file cannot be created.
    """

    def __init__(self, path: Path, epoch: float = 0.0) -> None:
        self.path = path
        self.epoch = epoch  # the clock reading log times count from (``Relay.epoch``)
        self._csv = path.suffix.lower() == ".csv"
        with map_os_errors(UsageError, f"cannot write the log {str(path)!r}"):
            self._file: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._writer: Any = None
        if self._csv:
            self._writer = csv.DictWriter(self._file, fieldnames=LOG_COLUMNS)
            self._writer.writeheader()

    def write(self, records: list[Record]) -> None:
        """Append ``records`` (the relay's ``on_records`` callback)."""
        rows = (record.as_row(self.epoch) for record in records)
        if self._writer is not None:
            self._writer.writerows(rows)
        else:
            self._file.write("".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows))

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
