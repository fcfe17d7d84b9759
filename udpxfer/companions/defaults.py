"""Default ports and sizes of the companion programs: here, so the CLI can show them cheaply."""

from __future__ import annotations

ECHO_PORT = 8000
PALINDROME_PORT = 8001
UDP_ECHO_PORT = 2222
UDP_ECHO_PAYLOAD_BYTES = 56  # ping's default
TCP_TRANSFER_PORT = 9001
