"""A report as a document: the mapping type the renderers read and dotted-path lookups into it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Report = Mapping[str, Any]


def lookup(doc: Report, path: str) -> Any:
    """``doc["a"]["b"]`` for ``"a.b"``, or ``None`` where any step is missing."""
    node: Any = doc
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node
