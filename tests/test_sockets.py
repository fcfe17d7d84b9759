"""Binding: all interfaces, fallbacks and one-line errors."""

from __future__ import annotations

import errno
import socket

import pytest

from udpxfer.errors import UsageError
from udpxfer.net.sockets import ALL_INTERFACES, bind_socket
from udpxfer.units import Address, format_sockaddr


def test_all_interfaces_falls_back_to_ipv4_without_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    real_socket = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", no_ipv6)
    sock = bind_socket(Address(ALL_INTERFACES, 0), socket.SOCK_DGRAM)
    try:
        assert sock.family == socket.AF_INET
        assert sock.getsockname()[0] == "0.0.0.0"
    finally:
        sock.close()


def test_all_interfaces_is_dual_stack_where_ipv6_works() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    sock = bind_socket(Address(ALL_INTERFACES, 0), socket.SOCK_DGRAM)
    try:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"v4 to a dual-stack socket", ("127.0.0.1", port))
        sock.settimeout(5)
        data, peer = sock.recvfrom(100)
        assert data == b"v4 to a dual-stack socket"
        assert format_sockaddr(peer).startswith("127.0.0.1:")  # not ::ffff:127.0.0.1
    finally:
        sock.close()


def test_a_busy_port_is_a_one_line_usage_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match="already in use"):
            bind_socket(Address("127.0.0.1", port), socket.SOCK_DGRAM)


def test_an_address_of_another_machine_is_not_available() -> None:
    with pytest.raises(UsageError, match="not available on this machine"):
        bind_socket(Address("192.0.2.1", 0), socket.SOCK_DGRAM)  # TEST-NET-1: never local
