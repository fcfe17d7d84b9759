"""``udpxfer send``, ``recv`` and ``demo``."""

from __future__ import annotations
