"""Commands of the companions part of the CLI (registered on import)."""

from __future__ import annotations
