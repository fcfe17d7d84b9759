"""Make tests/helpers.py importable as ``helpers``; validate every report tests write."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from schemas import is_udpxfer_document, validate

VALIDATED: list[Path] = []


@pytest.fixture(autouse=True)
def _reports_match_their_schema(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used ``tmp_path``, every udpxfer report (receiver or sender) it
    left there must validate against docs/schema/."""
    if "tmp_path" not in request.fixturenames or request.node.get_closest_marker("damaged_reports"):
        yield
        return
    root: Path = request.getfixturevalue("tmp_path")
    yield
    for path in sorted(root.rglob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not a report (a damaged one on purpose, a relay log...)
        if is_udpxfer_document(doc):
            validate(doc)
            VALIDATED.append(path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if VALIDATED:
        terminalreporter.write_line(f"{len(VALIDATED)} reports validated against docs/schema/")
