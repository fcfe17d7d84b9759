"""Parsing of the sizes, rates and addresses users type on the command line, and their display."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any

from udpxfer.errors import UsageError

# Sizes are binary (64K = 65,536 bytes); rates are decimal bits per second (100M = 10**8 bit/s).
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KB": 1 << 10,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MB": 1 << 20,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GB": 1 << 30,
    "GIB": 1 << 30,
    "T": 1 << 40,
    "TB": 1 << 40,
    "TIB": 1 << 40,
}
_RATE_UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z/]*)\s*$")


def parse_size(text: str) -> int:
    """Parse a byte size such as ``1400``, ``64K``, ``1.5G`` or ``2MiB``.

    Raises:
        UsageError: the text is not a size.
    """
    match = _NUMBER.match(text)
    unit = match.group(2).upper() if match else ""
    value = _finite(match.group(1)) if match else None
    if value is None or unit not in _SIZE_UNITS:
        raise UsageError(f"bad size {text!r}: expected a number with an optional K, M or G suffix")
    return int(value * _SIZE_UNITS[unit])


def parse_rate(text: str) -> int:
    """Parse a rate in bits per second such as ``0``, ``100M`` or ``1.5G`` (decimal suffixes).

    ``bps``/``bit/s`` tails are accepted (``100Mbps``); a capital ``B/s`` tail means bytes
    per second (``12.5MB/s`` = ``100M``). Zero means unpaced.

    Raises:
        UsageError: the text is not a rate.
    """
    match = _NUMBER.match(text)
    raw_unit = match.group(2) if match else ""
    factor = 1
    if raw_unit.endswith("B/s") or raw_unit.endswith("Bps"):
        factor, raw_unit = 8, raw_unit[:-3]  # bytes per second
    unit = raw_unit.upper()
    for tail in ("BIT/S", "BPS", "B/S"):
        if unit.endswith(tail):
            unit = unit[: -len(tail)]
            break
    value = _finite(match.group(1)) if match else None
    if value is None or unit not in _RATE_UNITS:
        raise UsageError(
            f"bad rate {text!r}: expected bits per second with an optional K, M or G suffix"
        )
    return int(value * _RATE_UNITS[unit] * factor)


def _finite(number: str) -> float | None:
    """The number as a float, or None when it is too large to be one."""
    value = float(number)
    return value if math.isfinite(value) and value < 2.0**63 else None


def format_size(n_bytes: float) -> str:
    """Render a byte count with a binary suffix (``1.5 MiB``)."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_rate(bits_per_s: float) -> str:
    """Render a bit rate with a decimal suffix (``94.2 Mbit/s``)."""
    value = float(bits_per_s)
    for unit in ("bit/s", "kbit/s", "Mbit/s", "Gbit/s"):
        if abs(value) < 1000 or unit == "Gbit/s":
            return f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port as the user typed them; ``host`` has no brackets."""

    host: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        """True when the host is an IPv6 literal."""
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


def format_sockaddr(sockaddr: tuple[Any, ...]) -> str:
    """``host:port`` or ``[v6]:port``; IPv4-mapped IPv6 peers show as plain IPv4."""
    host, port = str(sockaddr[0]), int(sockaddr[1])
    if host.startswith("::ffff:") and "." in host:
        host = host.removeprefix("::ffff:")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, *, default_host: str) -> Address:
    """Parse ``HOST:PORT``, ``[v6addr]:PORT``, a bare ``PORT`` or a bare ``[v6addr]``-less host.

    A bare port takes ``default_host`` (loopback for a client, all interfaces for a server).

    Raises:
        UsageError: the text is not an address.
    """
    raw = text.strip()
    host: str
    port_text: str
    if raw.isdigit():
        host, port_text = default_host, raw
    elif raw.startswith("["):
        end = raw.find("]")
        if end < 0 or not raw[end + 1 :].startswith(":"):
            raise UsageError(f"bad address {text!r}: expected [v6addr]:PORT")
        host, port_text = raw[1:end], raw[end + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError as exc:
            raise UsageError(f"bad address {text!r}: {host!r} is not an IPv6 address") from exc
    else:
        if raw.count(":") != 1:
            raise UsageError(
                f"bad address {text!r}: expected HOST:PORT, [v6addr]:PORT or a bare PORT"
            )
        host, port_text = raw.split(":", 1)
        if not host:
            host = default_host
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"bad address {text!r}: port must be a number from 0 to 65535")
    return Address(host, int(port_text))


def parse_peer_address(text: str, *, default_host: str) -> Address:
    """``parse_address`` for a peer to send to: port 0 means nothing there.

    Raises:
        UsageError: the text is not an address, or its port is 0.
    """
    address = parse_address(text, default_host=default_host)
    if address.port == 0:
        raise UsageError(f"bad address {text!r}: port 0 cannot be sent to; give the peer's port")
    return address


# Durations: a bare number is milliseconds, the unit netem users think in (``delay 20ms``).
_DURATION_UNITS = {"": 1e-3, "MS": 1e-3, "S": 1.0, "US": 1e-6}


def parse_duration(text: str) -> float:
    """Parse a duration such as ``20ms``, ``0.5s``, ``250us`` or a bare ``20`` into seconds.

    A bare number means milliseconds; ``µs`` is accepted for ``us``.

    Raises:
        UsageError: the text is not a non-negative duration.
    """
    match = _NUMBER.match(text.replace("µ", "u"))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _DURATION_UNITS:
        raise UsageError(
            f"bad duration {text!r}: expected a number with an optional ms, s or us suffix "
            "(a bare number means milliseconds)"
        )
    return float(match.group(1)) * _DURATION_UNITS[unit]


def parse_probability(text: str) -> float:
    """Parse a probability given as a fraction (``0.05``) or a percentage (``5%``).

    Raises:
        UsageError: the text is not a number from 0 to 1 (or 0% to 100%).
    """
    raw = text.strip()
    scale = 100.0 if raw.endswith("%") else 1.0
    match = _NUMBER.match(raw.removesuffix("%"))
    if not match or match.group(2):
        raise UsageError(f"bad probability {text!r}: expected a number such as 0.05 or 5%")
    value = float(match.group(1)) / scale
    if value > 1.0:
        raise UsageError(
            f"bad probability {text!r}: must be from 0 to 1 (write 5% for a percentage)"
        )
    return value


def plural(n: int, noun: str) -> str:
    """``1 chunk``, ``2 chunks``: a count and its noun, in the number it takes."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
