"""The one exception tree of udpxfer, and the one place where ``OSError`` joins it.

    UdpxferError
    ├── UsageError           # bad input from the user: a size, an address, a missing file
    ├── ProtocolError
    │   ├── MalformedPacket      # undecodable datagram: drop and count, never ends a transfer
    │   │   ├── CorruptPacket        # ours (magic, version), but its CRC-32 or tag fails
    │   │   └── AuthenticationFailed  # keyed mode: forged, tampered or wrong-key datagram
    │   └── RemoteProtocolError  # decodable but illegal now: abort the session with a reason
    ├── TransferError            # gave up, hash mismatch, limits
    ├── TransportError           # wraps OSError: raise ... from exc (``map_os_errors``)
    └── LabError                 # the lab cannot be built here: not root, no TUN, no netem

    Interrupted (an Exception, not a UdpxferError)  # a signal to stop (cli.signals): unwind

Only the CLI turns a ``UdpxferError`` into a message and an exit code; any other exception
escaping is a bug and keeps its traceback. ``Interrupted`` stands outside the tree on purpose:
like ``KeyboardInterrupt`` it is a request to stop, which the CLI must not report as an error.
"""

from __future__ import annotations


class UdpxferError(Exception):
    """Base class of every error udpxfer raises on purpose."""


class UsageError(UdpxferError):
    """The user asked for something impossible: a bad size, address, path or option."""


class ProtocolError(UdpxferError):
    """Something about the bytes on the wire is wrong."""


class MalformedPacket(ProtocolError):
    """A datagram that cannot be decoded: dropped and counted, never fatal."""


class CorruptPacket(MalformedPacket):
    """A datagram with our magic and version whose integrity check fails."""

    def __init__(self, message: str, session: int) -> None:
        super().__init__(message)
        self.session = session


class AuthenticationFailed(MalformedPacket):
    """A datagram whose AEAD tag does not verify: forged, tampered or sealed under another key."""


class RemoteProtocolError(ProtocolError):
    """A decodable packet that is illegal at this point of the exchange."""


class TransferError(UdpxferError):
    """A transfer could not finish: the peer went silent, aborted, or the hash did not match."""


class TransportError(UdpxferError):
    """The operating system refused a socket or file operation."""


class LabError(UdpxferError):
    """The lab cannot be built here (not root, no TUN, no netem, a command failed)."""


class Interrupted(Exception):
    """A signal arrived where ``raise_interrupted`` handles it: unwind, so ``finally`` runs."""


class map_os_errors:  # lower case: a context manager, named like contextlib.suppress
    """Turn an ``OSError`` raised in a ``with`` block into a udpxfer error, keeping its cause.

    The message is ``"{doing}: {reason}"``, the reason in the system's own words (``strerror``);
    the ``OSError`` stays attached (``raise ... from exc``), as httpx's ``map_exceptions`` does.
    A class, not a generator: it guards writes made for every received batch, where creating a
    generator each time would show.

    Example::

        with map_os_errors(TransportError, f"cannot write {path}"):
            os.pwritev(fd, buffers, offset)
    """

    __slots__ = ("_doing", "_error")

    def __init__(self, error: type[UdpxferError], doing: str) -> None:
        self._error = error
        self._doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if isinstance(exc, OSError):
            raise self._error(f"{self._doing}: {exc.strerror or exc}") from exc
