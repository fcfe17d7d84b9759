"""The palindrome protocol without sockets: line framing, normalisation and answers.

One UTF-8 line per request (``\\n``, ``\\r\\n`` accepted), one line per answer: ``PALINDROME``,
``NOT PALINDROME`` or ``ERROR <reason>``, optionally followed by a tab and more text (here: the
normalised form). See docs/PROTOCOL.md. Bytes go in, answers come out; nothing here blocks.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

MAX_LINE_BYTES = 65_536  # "over 64 KiB" = more than this many bytes before the terminator
PALINDROME = "PALINDROME"
NOT_PALINDROME = "NOT PALINDROME"
ERROR = "ERROR"


def normalise(text: str) -> str:
    """The form the default comparison reads: no case, no accents, letters and digits only.

    NFKD splits accented letters and compatibility forms (``ﬁ`` -> ``fi``, ``²`` -> ``2``);
    casefold removes case (``ß`` -> ``ss``); the second NFKD decomposes what casefolding
    produced (Unicode's canonical caseless matching, D145; for every single code point the
    result is the same as without it); combining marks are dropped, and of the rest only
    ``str.isalnum`` characters are kept (DESIGN.md's definition, applied literally: Hangul
    syllables are compared as the jamo NFKD splits them into).
    """
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return "".join(c for c in folded if c.isalnum() and not unicodedata.category(c).startswith("M"))


def is_palindrome(text: str, *, strict: bool = False) -> bool:
    """Whether ``text`` reads the same both ways, by code point.

    Args:
        text: one request line, without its terminator.
        strict: compare the code points as they are instead of the normalised form.
    """
    form = text if strict else normalise(text)
    return form == form[::-1]


@dataclass(frozen=True, slots=True)
class Line:
    """A complete request line, terminator removed (``\\n``, ``\\r\\n``, or end of stream)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line of more than ``MAX_LINE_BYTES`` bytes: answered once, the rest of it discarded."""

    limit: int


Request = Line | LineTooLong


class LineFramer:
    """Cuts a byte stream into request lines, with a bounded buffer.

    ``feed`` returns the requests completed by the new bytes, in order. A line longer than the
    limit yields one :class:`LineTooLong` as soon as that is certain; its remaining bytes, up
    to and including the next ``\\n``, are skipped. ``finish`` flushes an unterminated last line.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already known to hold no newline
        self._discarding = False

    def feed(self, data: bytes) -> list[Request]:
        """Add received bytes; return the requests they complete."""
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return []
            self._discarding = False
            data = data[newline + 1 :]
        self._buffer += data
        return self._drain()

    def _drain(self) -> list[Request]:
        requests: list[Request] = []
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                break
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            self._scanned = 0
            requests.append(self._complete(line))
        self._scanned = len(self._buffer)
        # A \r may still turn out to be half of a \r\n terminator, so allow one extra byte.
        over = len(self._buffer) > self.max_line_bytes + 1 or (
            len(self._buffer) == self.max_line_bytes + 1 and not self._buffer.endswith(b"\r")
        )
        if over:
            requests.append(LineTooLong(self.max_line_bytes))
            self._buffer.clear()
            self._scanned = 0
            self._discarding = True
        return requests

    def _complete(self, line: bytes) -> Request:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line_bytes:
            return LineTooLong(self.max_line_bytes)
        return Line(line)

    def finish(self) -> list[Request]:
        """The peer closed its side: an unterminated last line still counts as a request."""
        if self._discarding or not self._buffer:
            self._buffer.clear()
            return []
        line = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return [self._complete(line)]


def answer(request: Request, *, strict: bool = False, explain: bool = False) -> str:
    """The answer line (without ``\\n``) to one request.

    ``PALINDROME`` / ``NOT PALINDROME`` (with ``explain``, in the default mode, followed by a
    tab and the normalised form when it is not empty); ``ERROR <reason>`` for a line that is
    too long or not UTF-8.
    """
    if isinstance(request, LineTooLong):
        return f"{ERROR} line longer than {request.limit} bytes"
    try:
        text = request.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{ERROR} invalid UTF-8 at byte {exc.start}"
    if strict:
        return PALINDROME if is_palindrome(text, strict=True) else NOT_PALINDROME
    form = normalise(text)
    verdict = PALINDROME if form == form[::-1] else NOT_PALINDROME
    return f"{verdict}\t{form}" if form and explain else verdict
