"""The package's layout is its architecture: imports point down the layers, the sans-IO core
imports nothing that does I/O or keeps time, and every module is small enough to read at once.

Read from the source with ``ast`` (nothing is imported), module-level and function-level imports
alike, ``if TYPE_CHECKING:`` ones included. Each failure lists every offending import or module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "udpxfer"

# Bottom to top (STYLE.md section 2). A module may import from its own package or a lower one;
# the root's modules (errors, units, the package itself) are the bottom layer.
LAYERS = ["", "protocol", "analysis", "reports", "net", "companions", "lab", "cli"]
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}
# The package itself and `python -m udpxfer` stand outside the layers.
UNLAYERED = {"udpxfer", "udpxfer.__main__"}

# What the sans-IO core must not import: sockets, files, clocks, threads, randomness, processes.
IO_MODULES = {
    "socket", "os", "time", "threading", "select", "selectors", "mmap", "pathlib", "random",
    "secrets", "subprocess", "asyncio", "io", "signal", "shutil", "tempfile",
}  # fmt: skip

MAX_LINES = 450


@dataclass(frozen=True)
class Import:
    """One import statement's target, as written in a module."""

    module: str  # the importing module, dotted
    path: str  # its file, relative to the repository
    line: int
    target: str  # the imported module, dotted (``from a import b``: ``a.b`` if that is a module)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    """The layer a ``udpxfer`` module belongs to: its subpackage, or "" at the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else ""


def imports_of(module: str, source: str, shown: str) -> list[Import]:
    """Every import in ``source``, the text of ``module`` (whose file is ``shown``), in order."""
    tree = ast.parse(source, filename=shown)
    package = module if shown.endswith("__init__.py") else module.rpartition(".")[0]
    found: dict[Import, None] = {}  # one per module and line, in order
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(
                {Import(module, shown, node.lineno, alias.name): None for alias in node.names}
            )
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "__future__":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found[Import(module, shown, node.lineno, sub if sub in MODULES else base)] = None
    return sorted(found, key=lambda each: each.line)


ALL_IMPORTS = [
    found
    for module, path in MODULES.items()
    for found in imports_of(
        module, path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent))
    )
]


def upward(imports: list[Import]) -> list[Import]:
    """The imports of a ``udpxfer`` module from a higher layer than the importer's."""
    return [
        found
        for found in imports
        if found.module not in UNLAYERED
        and (found.target == "udpxfer" or found.target.startswith("udpxfer."))
        and RANK[layer_of(found.target)] > RANK[layer_of(found.module)]
    ]


def describe(found: Import) -> str:
    layer = layer_of(found.module) or "the root"
    return f"{found.path}:{found.line}: {found.module} ({layer}) imports {found.target}"


def test_the_layers_are_every_subpackage() -> None:
    subpackages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(LAYERS) - {""}


def test_the_walk_sees_nested_relative_and_from_imports() -> None:
    source = """
from __future__ import annotations
from typing import TYPE_CHECKING
from . import wire
from ..net import files
if TYPE_CHECKING:
    from udpxfer.lab.relay import Relay
def later():
    import udpxfer.cli.application, os.path
    from udpxfer import errors, __version__
"""
    found = imports_of("udpxfer.protocol.example", source, "udpxfer/protocol/example.py")
    assert [(each.line, each.target) for each in found] == [
        (3, "typing"),
        (4, "udpxfer.protocol.wire"),
        (5, "udpxfer.net.files"),
        (7, "udpxfer.lab.relay"),
        (9, "udpxfer.cli.application"),
        (9, "os.path"),
        (10, "udpxfer.errors"),
        (10, "udpxfer"),
    ]
    assert [each.target for each in upward(found)] == [
        "udpxfer.net.files",
        "udpxfer.lab.relay",
        "udpxfer.cli.application",
    ]


def test_imports_point_down_the_layers() -> None:
    offending = upward(ALL_IMPORTS)
    assert not offending, (
        "upward imports (order: root < "
        + " < ".join(LAYERS[1:])
        + "):\n"
        + ("\n".join(map(describe, offending)))
    )


def test_the_sans_io_core_imports_no_io() -> None:
    offending = [
        found
        for found in ALL_IMPORTS
        if layer_of(found.module) == "protocol" and found.target.split(".")[0] in IO_MODULES
    ]
    assert not offending, "protocol/ imports I/O, clocks or randomness:\n" + "\n".join(
        map(describe, offending)
    )


def line_count(path: Path) -> int:
    return len(path.read_bytes().splitlines())  # as `wc -l` counts a file ending in a newline


def test_no_module_is_over_the_line_limit() -> None:
    long = {
        module: line_count(path) for module, path in MODULES.items() if line_count(path) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{MODULES[module].relative_to(PACKAGE.parent)} ({count})"
        for module, count in sorted(long.items())
    )
