"""The one exception tree of udpxfer.

    UdpxferError
    ├── UsageError           # bad input from the user: a size, an address, a missing file
    ├── ProtocolError
    │   ├── MalformedPacket      # undecodable datagram: drop and count, never ends a transfer
    │   │   └── AuthenticationFailed  # keyed mode: forged, tampered or wrong-key datagram
    │   └── RemoteProtocolError  # decodable but illegal now: abort the session with a reason
    ├── TransferError            # gave up, hash mismatch, limits
    └── TransportError           # wraps OSError: raise ... from exc

Only the CLI turns a ``UdpxferError`` into a message and an exit code; any other exception
escaping is a bug and keeps its traceback.
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


class AuthenticationFailed(MalformedPacket):
    """A datagram whose AEAD tag does not verify: forged, tampered or sealed under another key."""


class RemoteProtocolError(ProtocolError):
    """A decodable packet that is illegal at this point of the exchange."""


class TransferError(UdpxferError):
    """A transfer could not finish: the peer went silent, aborted, or the hash did not match."""


class TransportError(UdpxferError):
    """The operating system refused a socket or file operation."""
