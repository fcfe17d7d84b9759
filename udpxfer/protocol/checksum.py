"""CRC-32 (the zlib polynomial) of the wire format's check, as fast as the machine allows.

zlib-ng computes it with carry-less multiplication (PCLMULQDQ/VPCLMULQDQ, ARM PMULL): about
seven times the speed of the zlib the interpreter links, which matters at one call per datagram
(0.08 us instead of 0.5 us for 1444 bytes). Where zlib-ng is not installed, the standard
library's zlib gives the same values.
"""

from __future__ import annotations

try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - zlib-ng is a dependency; a bare checkout may lack it
    from zlib import crc32

__all__ = ["crc32"]
