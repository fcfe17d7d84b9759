"""The udpxfer wire format, version 2: the header layout, its constants, and a dataclass per packet.

Every datagram is a 40-byte header (network byte order), a body, and a trailer; docs/PROTOCOL.md
has the same layout as a table.

    offset size field
    0      4    magic        b"UDPX"
    4      1    version      2
    5      1    type         PacketType
    6      1    flags        Flags: RESENT, ACK_REQUESTED (DATA); KEYED, ENCRYPTED (trailer kind)
    7      1    pass_no      DATA: 0 for a first transmission, k for a resend in repair round k
    8      8    session      random session id chosen by the sender
    16     8    seq          DATA: chunk index; END/NACK: round; META: copy; MANIFEST: first block
    24     8    pn           packet number: DATA the sender's data transmission counter (0, 1, ...);
                             any other type the sending side's control counter; < 2^62
    32     8    sent_ns      the sending side's monotonic clock, nanoseconds; < 2^63
    40     ...  body         per packet type (``bodies``)
    end-4  4    check        keyless: CRC-32 (zlib) of every byte before it (one contiguous span)
    end-16 16   tag          KEYED: AEAD tag (udpxfer.protocol.keys), the header as associated data

The header is fixed-size and the check covers one contiguous span so that a receive buffer of
equal-sized segments can be decoded by a numpy structured view in one step.

What works on these types sits beside this module: ``framing`` parses a header and seals or
checks a trailer, ``bodies`` holds each control body's layout and codec, ``codec`` encodes and
decodes any packet, ``batch`` decodes a receive buffer of DATA at once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

MAGIC = b"UDPX"
VERSION = 2

HEADER = struct.Struct("!4sBBBBQQQQ")
HEADER_BYTES = HEADER.size  # 40
CRC_BYTES = 4
TAG_BYTES = 16  # an AEAD tag (udpxfer.protocol.keys.TAG_BYTES)

MAX_PN = (1 << 62) - 1  # packet numbers above this are refused: they stay int64-safe
MAX_STAMP_NS = (1 << 63) - 1
MAX_DATAGRAM_BYTES = 65507  # largest UDP payload over IPv4
MAX_CHUNK_BYTES = MAX_DATAGRAM_BYTES - HEADER_BYTES - TAG_BYTES
# 1500-byte Ethernet MTU - 40 (IPv6 header) - 8 (UDP header) = 1452 for the datagram:
# keyless 1400 + 40 + 4 = 1444; keyed 1392 + 40 + 16 = 1448.
DEFAULT_CHUNK_BYTES = 1400
DEFAULT_KEYED_CHUNK_BYTES = 1392
PATH_DATAGRAM_BYTES = 1452
SHA256_BYTES = 32
NO_DIGEST = bytes(SHA256_BYTES)  # META's digest before a large file's sender knows it
MAX_BLOCK_REPAIRS = 8  # times a transfer may fetch bad blocks again before it is a mismatch
# What one UDP GSO send (and so one GRO receive) carries at most on Linux: the sender cuts its
# data into runs of this many datagrams so that each send, and each receive, is a full one.
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels (newer allow 128)
GSO_MAX_BYTES = 65000  # the whole run must fit one IP packet: below 65,507 bytes over IPv4
NONCE_BYTES = 16
TOKEN_BYTES = 16
MAX_NAME_BYTES = 1024
MAX_REASON_BYTES = 512
MAX_BLOCKS = 4096  # blocks a file's manifest is cut into at most
BLOCK_TARGET_BYTES = 1 << 20
MANIFEST_HASHES = 40  # block hashes per MANIFEST datagram (1280 bytes of body)


class PacketType(IntEnum):
    """What a datagram is."""

    META = 1  # sender -> receiver: file metadata and the handshake, repeated
    DATA = 2  # sender -> receiver: one chunk
    END = 3  # sender -> receiver: a pass is over (round in seq)
    STATUS = 4  # receiver -> sender: progress and flow-control window
    NACK = 5  # receiver -> sender: ranges still missing after a round
    DONE = 6  # receiver -> sender: the verdict
    ABORT = 7  # either way: the session is over, with a reason
    HELLO = 8  # receiver -> sender: answer to META (address token, or accepted)
    MANIFEST = 9  # sender -> receiver: SHA-256 of blocks of the file
    HAVE = 10  # receiver -> sender: chunk ranges already verified on disk (resume)


class Flags(IntFlag):
    """Header flag bits."""

    NONE = 0
    RESENT = 0x01  # DATA: not the chunk's first transmission
    ACK_REQUESTED = 0x02  # DATA: answer with a STATUS now
    KEYED = 0x04  # the trailer is a 16-byte AEAD tag, not a CRC-32
    ENCRYPTED = 0x08  # KEYED: the body is encrypted


# Plain ints on the per-datagram path: IntFlag arithmetic costs some microseconds a time.
DATA_ONLY_FLAGS = int(Flags.RESENT | Flags.ACK_REQUESTED)
KEYED_FLAG = int(Flags.KEYED)
ENCRYPTED_FLAG = int(Flags.ENCRYPTED)
DATA_TYPE = int(PacketType.DATA)


class HelloFlags(IntFlag):
    """What a HELLO says."""

    NONE = 0
    RETRY = 0x01  # echo the token in META before anything else: the address is not validated
    ACCEPTED = 0x02  # the transfer is on: the window is open, the receiver nonce is final
    RESUMING = 0x04  # ACCEPTED, and ``held`` chunks are already on disk (HAVE lists them)
    NEED_KEY = 0x08  # this receiver only takes keyed transfers
    NO_KEY = 0x10  # this receiver has no key: it cannot take a keyed transfer
    AUTH_FAILED = 0x20  # a datagram from you failed authentication (wrong key?)


class RangeKind(IntEnum):
    """What the ranges of a NACK or HAVE count."""

    CHUNKS = 0
    BLOCKS = 1  # NACK: manifest entries (block hashes) still missing


class Mode(IntEnum):
    """Transfer mode announced in META."""

    RELIABLE = 0
    BLAST = 1

    @property
    def label(self) -> str:
        """The mode's name as users type it."""
        return self.name.lower()


class Verdict(IntEnum):
    """The receiver's conclusion in DONE."""

    VERIFIED = 0  # every chunk held and the SHA-256 matches
    MISMATCH = 1  # every chunk held but the SHA-256 differs
    INCOMPLETE = 2  # chunks are missing (blast mode, or the receiver gave up)


class AbortCode(IntEnum):
    """Why a session was aborted."""

    CANCELLED = 1  # the user stopped it
    REFUSED = 2  # the receiver will not take this transfer (limits, disk)
    PROTOCOL = 3  # the peer broke the protocol
    TIMEOUT = 4  # the peer went silent
    BUSY = 5  # the receiver has no room for another transfer now
    CLOSED = 6  # sender -> receiver after the verdict: it arrived, stop lingering


@dataclass(frozen=True, slots=True)
class Meta:
    """File metadata; sent several times so that losing some copies is harmless."""

    session: int
    name: str
    size: int
    chunk_size: int
    chunk_count: int
    sha256: bytes
    mode: Mode
    copy: int = 0
    sent_ns: int = 0
    block_chunks: int = 0  # chunks per manifest block (0: no manifest)
    mtime_ns: int = 0  # the source's modification time: a changed source never resumes
    nonce: bytes = bytes(NONCE_BYTES)  # the sender's session nonce (key derivation)
    token: bytes = bytes(TOKEN_BYTES)  # the receiver's address token echoed (zeros: none)
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Data:
    """One chunk of the file."""

    session: int
    index: int
    tx: int
    payload: bytes | memoryview
    pass_no: int = 0
    flags: int = 0  # Flags bits, kept as a plain int on the hot path
    sent_ns: int = 0

    @property
    def resent(self) -> bool:
        """True when this is not the chunk's first transmission."""
        return bool(self.flags & Flags.RESENT)


@dataclass(frozen=True, slots=True)
class End:
    """The sender finished pass ``round`` (0 is the first pass)."""

    session: int
    round: int
    chunks_sent: int
    tx_sent: int
    sent_ns: int = 0
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Status:
    """Receiver progress: the highest tx seen, chunks held and the flow-control window."""

    session: int
    echo_ns: int
    highest_tx: int
    held: int
    window: int
    sent_ns: int = 0
    received: int = 0  # DATA datagrams of this session received so far (loss signal)
    queued_ns: int = 0  # how long the echoed datagram waited in the receiver's socket
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Nack:
    """Chunks (or manifest blocks) still missing after round ``round``, as inclusive ranges."""

    session: int
    round: int
    echo_ns: int
    ranges: tuple[tuple[int, int], ...]
    sent_ns: int = 0
    kind: RangeKind = RangeKind.CHUNKS
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Have:
    """Chunk ranges the receiver already holds, verified on disk (a resumed transfer)."""

    session: int
    ranges: tuple[tuple[int, int], ...]
    echo_ns: int = 0
    sent_ns: int = 0
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    """The receiver's verdict on the whole file."""

    session: int
    verdict: Verdict
    held: int
    sha256: bytes
    echo_ns: int = 0
    sent_ns: int = 0
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Abort:
    """The session is over."""

    session: int
    code: AbortCode
    reason: str
    sent_ns: int = 0
    chunks_sent: int = 0  # sender: how far its first pass got (honest loss accounting)
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Hello:
    """The receiver's answer to META."""

    session: int
    flags: HelloFlags
    echo_ns: int = 0
    window: int = 0
    held: int = 0
    token: bytes = bytes(TOKEN_BYTES)
    nonce: bytes = bytes(NONCE_BYTES)
    sent_ns: int = 0
    pn: int = 0


@dataclass(frozen=True, slots=True)
class Manifest:
    """SHA-256 digests of consecutive blocks, starting at block ``first``."""

    session: int
    first: int
    hashes: tuple[bytes, ...]
    sent_ns: int = 0
    pn: int = 0


Packet = Meta | Data | End | Status | Nack | Have | Done | Abort | Hello | Manifest
ControlPacket = Meta | End | Status | Nack | Have | Done | Abort | Hello | Manifest


def datagrams_per_run(datagram_bytes: int) -> int:
    """How many datagrams of ``datagram_bytes`` one GSO send carries."""
    return max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // max(1, datagram_bytes)))


def chunk_count_for(size: int, chunk_size: int) -> int:
    """Number of chunks a file of ``size`` bytes is cut into."""
    return -(-size // chunk_size)


def block_chunks_for(chunk_count: int, chunk_size: int) -> int:
    """Chunks per manifest block: about 1 MiB, and never more than ``MAX_BLOCKS`` blocks."""
    if chunk_count == 0:
        return 0
    per_target = max(1, BLOCK_TARGET_BYTES // chunk_size)
    return max(per_target, -(-chunk_count // MAX_BLOCKS))
