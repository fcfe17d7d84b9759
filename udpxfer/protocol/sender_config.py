"""The tunables of a sender session."""

from __future__ import annotations

from dataclasses import dataclass

from udpxfer.errors import UsageError
from udpxfer.protocol.wire import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, Mode


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """Tunables of a sender session (defaults suit loopback and LANs)."""

    chunk_size: int = DEFAULT_CHUNK_BYTES
    mode: Mode = Mode.RELIABLE
    rate_bps: int = 0
    max_window: int = 16384  # datagrams beyond the receiver's last report, at most
    initial_window: int = 64  # before the receiver has reported its window
    # Model-based congestion control (congestion.BbrController: its pace and window) on top
    # of flow control, for unpaced sending; with an explicit rate the user sets the pace.
    congestion_control: bool = True
    give_up_s: float = 20.0  # silence from the receiver after which a reliable send fails
    refused_give_up_s: float = 3.0  # the same before any answer, when ICMP says nobody listens
    auth_give_up_s: float = 1.0  # a key mismatch notice, and no authenticated answer since
    meta_copies: int = 3  # META copies sent before the first chunk
    meta_every: int = 256  # and one more every so many chunks until the receiver reports
    end_copies: int = 3  # blast mode: END copies, spaced by end_spacing_s
    end_spacing_s: float = 0.02
    verdict_wait_s: float = 3.0  # blast mode: how long to wait for the receiver's verdict
    open_loop_after_s: float = 1.0  # blast mode: go on without feedback after this long
    batch: int = 128  # DATA datagrams returned per transmit call at most (whole GSO runs)
    # Runs of resent chunks per transmit call at most: scattered repairs are a short run each,
    # and building one touches its part of the file, which the driver lets go between calls
    # (source.SentPages), so that a call's repairs do not map much of the file at once.
    repair_runs: int = 16
    min_rto_s: float = 0.05
    max_rto_s: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_BYTES:
            raise UsageError(f"chunk size must be between 1 and {MAX_CHUNK_BYTES} bytes")
        if self.rate_bps < 0:
            raise UsageError("rate must not be negative")
        if self.give_up_s <= 0:
            raise UsageError("the give-up timeout must be positive")
