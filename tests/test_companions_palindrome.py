"""The palindrome protocol: normalisation table, line framing, the server and the client."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import pytest
from companion_helpers import run_cli, running, wait_for
from hypothesis import given
from hypothesis import strategies as st

from udpxfer.companions.palindrome import (
    MAX_LINE_BYTES,
    Line,
    LineFramer,
    LineTooLong,
    answer,
    is_palindrome,
    normalise,
)
from udpxfer.companions.palindrome_tcp import run_palindrome_client, run_palindrome_server

P, N = True, False

# (line, palindrome by default, palindrome with --strict)
CASES: list[tuple[str, bool, bool]] = [
    ("", P, P),
    ("   ", P, P),
    ("\t \t", P, P),
    ("!!!,,,", P, N),
    ("a", P, P),
    ("aa", P, P),
    ("ab", N, N),
    ("abba", P, P),
    ("abcba", P, P),
    ("abca", N, N),
    ("Abba", P, N),
    ("RaceCar", P, N),
    ("racecar", P, P),
    ("A man, a plan, a canal: Panama", P, N),
    ("Was it a car or a cat I saw?", P, N),
    ("No 'x' in Nixon", P, N),
    ("Madam, I'm Adam", P, N),
    ("hello, world", N, N),
    ("12321", P, P),
    ("12 3 21", P, P),
    ("123456", N, N),
    ("1a2", N, N),
    ("Ésope reste ici et se repose", P, N),
    ("été", P, P),  # precomposed: symmetric code points
    ("e\u0301te\u0301", P, N),  # decomposed: the accent follows its letter
    ("Niño", N, N),
    ("Straße ssarts", P, N),  # ß casefolds to ss
    ("İi", P, N),  # dotted capital I: i + combining dot, dropped
    ("ﬁ if", P, N),  # ligature splits into f, i
    ("Ⅻ", N, P),  # roman numeral twelve: xii
    ("ΑΒΑ", P, P),  # noqa: RUF001  (Greek capitals)
    ("Νίψον ἀνομήματα μὴ μόναν ὄψιν", P, N),
    ("А роза упала на лапу Азора", P, N),  # noqa: RUF001  (Cyrillic)
    ("たけやぶやけた", P, P),
    ("다시 합창합시다", N, N),  # NFKD splits syllables into jamo, which do not mirror
    ("ㅁㅏㅁ", P, P),  # compatibility jamo read the same both ways
    ("١٢١", P, P),  # Arabic-Indic digits
    ("😀x😀", P, P),
    ("😀ab", N, N),
    ("👍🏽👍🏽", P, N),  # no letters at all; strictly, the skin tone follows the thumb
    ("Ab\u200bBA", P, N),  # zero-width space
    ("a\x00a", P, P),
    ("x" * MAX_LINE_BYTES, P, P),  # the longest line allowed
    ("é" * (MAX_LINE_BYTES // 2), P, P),  # 65,536 bytes of two-byte characters
    ("a" * 30_000 + "b" + "a" * 29_999, N, N),
]


@pytest.mark.parametrize(("text", "default", "strict"), CASES, ids=[c[0][:24] for c in CASES])
def test_case_table_in_both_modes(text: str, default: bool, strict: bool) -> None:
    assert is_palindrome(text) is default
    assert is_palindrome(text, strict=True) is strict
    verdict = answer(Line(text.encode()), strict=False).split("\t")[0]
    assert verdict == ("PALINDROME" if default else "NOT PALINDROME")
    strict_verdict = answer(Line(text.encode()), strict=True)
    assert strict_verdict == ("PALINDROME" if strict else "NOT PALINDROME")


def test_answers_are_bare_verdicts_by_default() -> None:
    assert answer(Line(b"A man, a plan, a canal: Panama")) == "PALINDROME"
    assert answer(Line("Ésope".encode())) == "NOT PALINDROME"
    assert answer(Line(b"Abba"), strict=True) == "NOT PALINDROME"


def test_explained_answers_carry_the_normalised_form_after_a_tab() -> None:
    explained = answer(Line(b"A man, a plan, a canal: Panama"), explain=True)
    assert explained == "PALINDROME\tamanaplanacanalpanama"
    assert answer(Line("Ésope".encode()), explain=True) == "NOT PALINDROME\tesope"
    assert answer(Line(b" ,. "), explain=True) == "PALINDROME"  # nothing left to show
    assert answer(Line(b"Abba"), strict=True, explain=True) == "NOT PALINDROME"


def test_errors_name_their_reason() -> None:
    assert answer(Line(b"ab\xffba")) == "ERROR invalid UTF-8 at byte 2"
    assert answer(Line(b"\xed\xa0\x80")).startswith("ERROR invalid UTF-8")  # a lone surrogate
    assert answer(LineTooLong(MAX_LINE_BYTES)) == "ERROR line longer than 65536 bytes"


@given(st.text())
def test_normal_form_is_lowercase_letters_and_digits(text: str) -> None:
    form = normalise(text)
    assert all(c.isalnum() for c in form)
    assert normalise(form) == form


@given(st.text())
def test_strict_mirror_is_a_palindrome(text: str) -> None:
    assert is_palindrome(text + text[::-1], strict=True)


# ---------------------------------------------------------------- framing


def feed_all(data: bytes, chunks: list[int] | None = None) -> list[object]:
    framer = LineFramer()
    out: list[object] = []
    if chunks is None:
        out += framer.feed(data)
    else:
        pos = 0
        for size in chunks:
            out += framer.feed(data[pos : pos + size])
            pos += size
        out += framer.feed(data[pos:])
    return out + framer.finish()


def test_terminators_and_unterminated_last_line() -> None:
    assert feed_all(b"abba\nxy\r\n\n\r\nlast") == [
        Line(b"abba"),
        Line(b"xy"),
        Line(b""),
        Line(b""),
        Line(b"last"),
    ]
    assert feed_all(b"a\rb\n") == [Line(b"a\rb")]  # only a \r right before \n is a terminator


def test_limit_is_65536_bytes_before_the_terminator() -> None:
    limit = MAX_LINE_BYTES
    assert feed_all(b"x" * limit + b"\n") == [Line(b"x" * limit)]
    assert feed_all(b"x" * limit + b"\r\n") == [Line(b"x" * limit)]
    assert feed_all(b"x" * (limit + 1) + b"\n") == [LineTooLong(limit)]
    assert feed_all(b"x" * (limit + 1) + b"\r\n") == [LineTooLong(limit)]


def test_an_oversize_line_gets_one_error_and_its_rest_is_discarded() -> None:
    data = b"y" * 200_000 + b"\nabba\n"
    expected = [LineTooLong(MAX_LINE_BYTES), Line(b"abba")]
    assert feed_all(data) == expected
    assert feed_all(data, [1000] * 201) == expected
    assert feed_all(data, [65_537, 1, 100_000]) == expected


def test_an_oversize_line_is_answered_before_its_newline_arrives() -> None:
    framer = LineFramer()
    assert framer.feed(b"z" * MAX_LINE_BYTES) == []
    assert framer.feed(b"z") == [LineTooLong(MAX_LINE_BYTES)]
    assert framer.feed(b"z" * 100_000) == []
    assert framer.feed(b"\nok\n") == [Line(b"ok")]


@given(
    st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\xff", "é".encode(), b"b" * 40_000])),
    st.lists(st.integers(1, 70_000), max_size=10),
)
def test_chunking_never_changes_the_requests(pieces: list[bytes], chunks: list[int]) -> None:
    data = b"".join(pieces)
    assert feed_all(data, chunks) == feed_all(data)


# ---------------------------------------------------------------- over TCP


async def _ask_all(port: int, lines: list[bytes]) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    answers = []
    try:
        for line in lines:
            writer.write(line + b"\n")
            await writer.drain()
            answers.append((await reader.readline()).decode().rstrip("\n"))
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


def _verdicts(answers: list[str]) -> list[str]:
    return [a.split("\t")[0] for a in answers]


@pytest.mark.parametrize("strict", [False, True])
def test_fifty_concurrent_clients_get_their_answers_in_order(strict: bool) -> None:
    lines = [text.encode() for text, _, _ in CASES]
    expected = ["PALINDROME" if c[2 if strict else 1] else "NOT PALINDROME" for c in CASES]

    async def clients(port: int) -> list[list[str]]:
        orders = [random.Random(i).sample(range(len(lines)), len(lines)) for i in range(50)]
        results = await asyncio.gather(
            *(_ask_all(port, [lines[i] for i in order]) for order in orders)
        )
        return [
            [got for _, got in sorted(zip(order, _verdicts(result), strict=True))]
            for order, result in zip(orders, results, strict=True)
        ]

    with running(run_palindrome_server, strict=strict) as server:
        results = asyncio.run(asyncio.wait_for(clients(server.control.port), 30))
        stats = server.stop()
    assert all(result == expected for result in results)
    assert stats.clients == 50
    assert stats.requests == 50 * len(CASES)
    assert server.logged("Client connected 50 ")
    assert sum("Client disconnected: " in line for line in server.logs) == 50


def test_bad_lines_are_answered_and_the_connection_stays_usable() -> None:
    long_line = b"q" * (MAX_LINE_BYTES + 1)
    with running(run_palindrome_server) as server:
        answers = asyncio.run(
            _ask_all(server.control.port, [b"abba", long_line, b"\xff\xfe", b"\xc3", b"kayak\r"])
        )
        with socket.create_connection(("127.0.0.1", server.control.port), timeout=10) as sock:
            # A huge line in one go, then a request on the same connection.
            sock.sendall(b"w" * 1_000_000 + b"\nnoon\n")
            sock.shutdown(socket.SHUT_WR)
            replies = sock.makefile("rb").read().decode().splitlines()
    assert _verdicts(answers) == [
        "PALINDROME",
        "ERROR line longer than 65536 bytes",
        "ERROR invalid UTF-8 at byte 0",
        "ERROR invalid UTF-8 at byte 0",
        "PALINDROME",
    ]
    assert replies == ["ERROR line longer than 65536 bytes", "PALINDROME"]


def test_server_survives_resets_and_junk() -> None:
    rng = random.Random(7)
    with running(run_palindrome_server) as server:
        port = server.control.port
        for i in range(20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(rng.randbytes(rng.randrange(1, 200_000)))
            if i % 2:  # close with RST, unread answers pending
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        wait_for(lambda: sum("disconnected" in line for line in server.logs) == 20)
        assert _verdicts(asyncio.run(_ask_all(port, [b"Never odd or even"]))) == ["PALINDROME"]
        server.stop()


def test_library_client_reads_long_answers() -> None:
    text = "\ufdfa" * 1000  # NFKD turns each character into 18 (15 letters and 3 spaces)
    answers: list[str] = []
    with running(run_palindrome_server, explain=True) as server:
        count = run_palindrome_client(
            server.address, [text.encode(), b"abc"], on_answer=answers.append
        )
    assert count == 2
    assert len(answers[0]) == len("NOT PALINDROME\t") + 15_000
    assert _verdicts(answers)[1] == "NOT PALINDROME"


def test_cli_client_prints_one_answer_per_argument() -> None:
    with running(run_palindrome_server) as server:
        port = str(server.control.port)
        done = run_cli(
            "tcp", "palindrome-client", "--to", port, "Ésope reste ici et se repose", "hello", ""
        )
        piped = run_cli("tcp", "palindrome-client", "--to", port, input=b"abba\r\nabc\nxyzyx")
        bad = run_cli("tcp", "palindrome-client", "--to", port, "two\nlines")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["PALINDROME", "NOT PALINDROME", "PALINDROME"]
    assert piped.returncode == 0, piped.stderr
    assert _verdicts(piped.stdout.splitlines()) == ["PALINDROME", "NOT PALINDROME", "PALINDROME"]
    assert bad.returncode == 2
    assert len(bad.stderr.splitlines()) == 1
    assert "newline" in bad.stderr


def test_cli_client_without_server_is_a_one_line_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        done = run_cli("tcp", "palindrome-client", "--to", str(port), "abba")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "refused" in done.stderr
    assert "Traceback" not in done.stderr
