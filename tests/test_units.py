"""Sizes, rates, addresses, durations and probabilities as users type them: tables both ways."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from udpxfer.errors import UsageError
from udpxfer.units import (
    Address,
    format_rate,
    format_size,
    parse_address,
    parse_duration,
    parse_probability,
    parse_rate,
    parse_size,
)


def assert_rejected(parse: Callable[[str], object], text: str, what: str, hint: str) -> None:
    """``parse(text)`` raises a UsageError that quotes the text and says what was expected."""
    with pytest.raises(UsageError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith(f"bad {what} {text!r}: ")
    assert hint in message


SIZES = [
    ("1400", 1400),
    ("0", 0),
    ("1400B", 1400),
    ("64K", 65536),
    ("64k", 65536),
    ("64KB", 65536),
    ("64KiB", 65536),
    ("1.5G", 3 << 29),
    ("2MiB", 2 << 20),
    ("2mb", 2 << 20),
    ("1T", 1 << 40),
    ("1TiB", 1 << 40),
    (".5K", 512),
    ("1.", 1),
    ("  8 M  ", 8 << 20),
    ("1.1K", 1126),  # whole bytes, rounded down
]


@pytest.mark.parametrize(("text", "expected"), SIZES)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


BAD_SIZES = [
    "",
    " ",
    "K",
    "-1",
    "+1",
    "1.2.3",
    "12X",
    "1e3",
    "64 KBB",
    "64Kbps",
    "1,000",
    "abc",
    "٣",  # a digit, but not an ASCII one
    pytest.param("9" * 400, id="400 digits: too large for a float"),
]


@pytest.mark.parametrize("text", BAD_SIZES)
def test_parse_size_rejects(text: str) -> None:
    assert_rejected(parse_size, text, "size", "K, M or G")


RATES = [
    ("100M", 10**8),
    ("0", 0),
    ("1.5Gbps", 15 * 10**8),
    ("1.5G", 15 * 10**8),
    ("100Mbit/s", 10**8),
    ("100mbps", 10**8),
    ("100Mb/s", 10**8),
    ("10k", 10**4),
    ("10K", 10**4),
    ("2T", 2 * 10**12),
    ("9600", 9600),
    ("9600bps", 9600),
    ("9600 bit/s", 9600),
]


@pytest.mark.parametrize(("text", "expected"), RATES)
def test_parse_rate(text: str, expected: int) -> None:
    assert parse_rate(text) == expected


BAD_RATES = [
    *["", "fast", "100X", "-5", "100Mbpss", "M", "bps", "100MiB", "1e9"],
    pytest.param("9" * 400, id="400 digits: too large for a float"),
]


@pytest.mark.parametrize("text", BAD_RATES)
def test_parse_rate_rejects(text: str) -> None:
    assert_rejected(parse_rate, text, "rate", "bits per second")


ADDRESSES = [
    ("example.org:9000", "127.0.0.1", Address("example.org", 9000)),
    ("192.0.2.1:1", "127.0.0.1", Address("192.0.2.1", 1)),  # parsed only, never contacted
    ("[::1]:9000", "127.0.0.1", Address("::1", 9000)),
    ("[2001:db8::7]:65535", "", Address("2001:db8::7", 65535)),
    ("[fe80::1%eth0]:1", "", Address("fe80::1%eth0", 1)),
    ("9000", "127.0.0.1", Address("127.0.0.1", 9000)),
    ("9000", "", Address("", 9000)),
    (" 9000 ", "", Address("", 9000)),
    (":9000", "127.0.0.1", Address("127.0.0.1", 9000)),
    ("host:0", "", Address("host", 0)),
]


@pytest.mark.parametrize(("text", "default_host", "expected"), ADDRESSES)
def test_parse_address(text: str, default_host: str, expected: Address) -> None:
    assert parse_address(text, default_host=default_host) == expected


BAD_ADDRESSES = [
    ("host:", "port must be a number"),
    (":", "port must be a number"),
    ("", "expected HOST:PORT"),
    ("host", "expected HOST:PORT"),
    ("[::1]", "expected [v6addr]:PORT"),
    ("[::1", "expected [v6addr]:PORT"),
    ("[::1]9000", "expected [v6addr]:PORT"),
    ("[::1]:", "port must be a number"),
    ("[]:9000", "is not an IPv6 address"),
    ("[1.2.3.4]:9000", "is not an IPv6 address"),
    ("[nothex::]:9000", "is not an IPv6 address"),
    ("1.2.3.4:70000", "from 0 to 65535"),
    ("65536", "from 0 to 65535"),
    ("host:-1", "port must be a number"),
    ("host:+1", "port must be a number"),
    ("host:80x", "port must be a number"),
    ("a:b:c", "expected HOST:PORT"),
    ("::1:9000", "expected HOST:PORT"),
    ("host:²", "port must be a number"),  # str.isdigit() says yes, int() says no
    ("¹", "port must be a number"),
]


@pytest.mark.parametrize(("text", "hint"), BAD_ADDRESSES)
def test_parse_address_rejects(text: str, hint: str) -> None:
    assert_rejected(lambda t: parse_address(t, default_host="127.0.0.1"), text, "address", hint)


@pytest.mark.parametrize(
    ("address", "text", "is_ipv6"),
    [
        (Address("127.0.0.1", 80), "127.0.0.1:80", False),
        (Address("::1", 9000), "[::1]:9000", True),
        (Address("fe80::1%eth0", 1), "[fe80::1%eth0]:1", True),
        (Address("", 9000), ":9000", False),
    ],
)
def test_address_str_and_round_trip(address: Address, text: str, is_ipv6: bool) -> None:
    assert str(address) == text
    assert address.is_ipv6 == is_ipv6
    assert parse_address(text, default_host="") == address


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (65536, "64.0 KiB"),
        (3 << 19, "1.5 MiB"),
        (20 * 1024**2, "20.0 MiB"),
        (3 << 29, "1.5 GiB"),
        (5 * 1024**4, "5120.0 GiB"),
        (-2048, "-2.0 KiB"),
        (1234.6, "1.2 KiB"),
    ],
)
def test_format_size(n_bytes: float, text: str) -> None:
    assert format_size(n_bytes) == text


@pytest.mark.parametrize(
    ("bits_per_s", "text"),
    [
        (0, "0.0 bit/s"),
        (999, "999.0 bit/s"),
        (1000, "1.0 kbit/s"),
        (17_700_000, "17.7 Mbit/s"),
        (94.2e6, "94.2 Mbit/s"),
        (10**8, "100.0 Mbit/s"),
        (3.3e9, "3.3 Gbit/s"),
        (1e13, "10000.0 Gbit/s"),
    ],
)
def test_format_rate(bits_per_s: float, text: str) -> None:
    assert format_rate(bits_per_s) == text


@pytest.mark.parametrize("text", ["64K", "1.5G", "2MiB", "1400", "100M"])
def test_format_size_reads_back_close_to_the_size(text: str) -> None:
    n = parse_size(text)
    value, unit = format_size(n).split()
    scale = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
    assert float(value) * scale == pytest.approx(n, rel=0.05)


DURATIONS = [
    ("20ms", 0.020),
    ("20MS", 0.020),
    ("20", 0.020),
    ("0", 0.0),
    ("0.5s", 0.5),
    ("2S", 2.0),
    ("250us", 250e-6),
    ("250µs", 250e-6),
    (" 1.5 ms ", 0.0015),
    (".5s", 0.5),
]


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "-1", "1m", "1h", "1min", "fast", "ms", "1 ms s", "1e3"])
def test_parse_duration_rejects(text: str) -> None:
    assert_rejected(parse_duration, text, "duration", "bare number means milliseconds")


PROBABILITIES = [
    ("0.05", 0.05),
    ("5%", 0.05),
    ("0", 0.0),
    ("0%", 0.0),
    ("1", 1.0),
    ("100%", 1.0),
    ("0.5 %", 0.005),
    (" .25 ", 0.25),
]


@pytest.mark.parametrize(("text", "value"), PROBABILITIES)
def test_parse_probability(text: str, value: float) -> None:
    assert parse_probability(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "such as 0.05 or 5%"),
        ("%", "such as 0.05 or 5%"),
        ("5%%", "such as 0.05 or 5%"),
        ("-0.1", "such as 0.05 or 5%"),
        ("0.5x", "such as 0.05 or 5%"),
        ("half", "such as 0.05 or 5%"),
        ("1.5", "write 5% for a percentage"),
        ("5", "write 5% for a percentage"),
        ("101%", "must be from 0 to 1"),
    ],
)
def test_parse_probability_rejects(text: str, hint: str) -> None:
    assert_rejected(parse_probability, text, "probability", hint)
