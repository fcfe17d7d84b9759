"""What the README promises agrees with the schemas and the commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from schemas import load

from udpxfer.cli import app
from udpxfer.reports.reading import REQUIRED

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def table_after(heading: str) -> list[tuple[str, str]]:
    """The rows (first cell, rest) of the first table after ``heading``."""
    text = README[README.index(heading) :]
    rows: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith("|---"):
            continue
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows.append((cells[0], " | ".join(cells[1:])))
        elif rows:
            break
    return rows[1:]  # without the header row


def ticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def properties(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node and node["$ref"].startswith("#/$defs/"):
        node = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
    props: dict[str, Any] = node.get("properties", {})
    return props


def test_readme_report_table_agrees_with_the_schema() -> None:
    schema = load("report.schema.json")
    rows = table_after("## The report")
    documented = {key: meaning for keys, meaning in rows for key in ticked(keys)}
    assert set(documented) == set(schema["properties"])
    for key, meaning in documented.items():
        node = schema["properties"][key]
        subkeys = set(properties(schema, node))
        if key in ("series", "tcp"):
            continue  # plot data; described in the schema
        assert subkeys <= ticked(meaning), (key, subkeys - ticked(meaning))
        for sub, subnode in properties(schema, node).items():
            nested = set(properties(schema, subnode))
            assert nested <= ticked(meaning), (key, sub, nested - ticked(meaning))


def test_required_keys_agree_between_reader_schema_and_design() -> None:
    schema = load("report.schema.json")
    required = set(schema["required"]) - {"schema"}
    assert required == set(REQUIRED)
    for key, expected in REQUIRED.items():
        if isinstance(expected, dict):
            node = schema["properties"][key]
            if "$ref" in node:
                node = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
            assert set(node["required"]) == set(expected), key


def test_readme_sender_report_lists_every_key_of_its_schema() -> None:
    schema = load("send-report.schema.json")
    start = README.index("`send --report PATH` writes the sender's report")
    text = README[start : README.index("\n- ", start + 1)]
    words = ticked(text)
    assert set(schema["properties"]) - {"schema", "started_unix_s"} <= words
    for section in ("chunks", "timing", "datagrams", "repair"):
        assert set(schema["properties"][section]["properties"]) <= words, section


def test_readme_stream_lists_every_key_of_its_schema() -> None:
    schema = load("stream.schema.json")
    start = README.index("`--json-stream` prints one JSON object")
    text = README[start : README.index("\n- ", start + 1)]
    words = ticked(text) | {w.strip("`") for w in re.findall(r"`[a-z_]+`/`[a-z_]+`", text)}
    for part in re.findall(r"`([a-z_]+)`/`([a-z_]+)`", text):
        words |= set(part)
    wanted = set(schema["required"]) - {"schema", "interval", "total"}
    assert wanted <= words
    assert set(schema["$defs"]["counters"]["properties"]) <= words


@pytest.mark.parametrize("command", ["send", "recv", "tcp send", "tcp recv"])
def test_every_transfer_option_is_in_the_readme_table(command: str) -> None:
    click_command: Any = typer.main.get_command(app)
    for word in command.split():
        click_command = click_command.commands[word]
    rows = table_after("| option | meaning | default |")
    options = {p.opts[0] for p in click_command.params if p.param_type_name == "option"}
    options -= {"--help"}
    for option in options:
        assert any(
            cell.startswith(f"`{command} ")
            and (f"{option} " in cell or f"{option}`" in cell or f"`{option}" in cell)
            for cell, _ in rows
        ), option
