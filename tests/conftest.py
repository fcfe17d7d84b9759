"""Make tests/helpers.py importable as ``helpers``; validate every report tests write."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from schemas import is_udpxfer_document, validate

VALIDATED: set[Path] = set()
DAMAGED: set[Path] = set()  # tmp_path of tests that leave invalid reports on purpose


def _validate_reports_under(root: Path) -> None:
    """Validate every udpxfer report (receiver, sender, stream) in a JSON file under ``root``."""
    for path in sorted(root.rglob("*.json")):
        if path in VALIDATED or any(path.is_relative_to(damaged) for damaged in DAMAGED):
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not a report (a relay log, a damaged one on purpose...)
        if is_udpxfer_document(doc):
            validate(doc)
            VALIDATED.add(path)


@pytest.fixture(autouse=True)
def _reports_match_their_schema(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used ``tmp_path``, every udpxfer report it left there must
    validate against docs/schema/."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    root: Path = request.getfixturevalue("tmp_path")
    if request.node.get_closest_marker("damaged_reports"):
        DAMAGED.add(root)
        yield
        return
    yield
    _validate_reports_under(root)


@pytest.fixture(autouse=True, scope="session")
def _every_report_matches_its_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end, the reports left in directories of module and session fixtures
    (``tmp_path_factory``: resumed transfers, comparison runs) too."""
    yield
    _validate_reports_under(tmp_path_factory.getbasetemp())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if VALIDATED:
        terminalreporter.write_line(f"{len(VALIDATED)} reports validated against docs/schema/")
