"""``--help`` that teaches: at 80 columns, nothing cut, metavars that say what an option takes."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from udpxfer.cli import app

ROOT: Any = typer.main.get_command(app)


def command_paths(command: Any = ROOT, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, (*prefix, name))
    return paths


def help_text(*words: str) -> str:
    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("words", command_paths(), ids=lambda w: " ".join(w) or "udpxfer")
def test_help_fits_80_columns_and_names_what_options_take(words: tuple[str, ...]) -> None:
    text = help_text(*words)
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert not too_wide
    assert "…" not in text  # nothing cut short
    # Python types are no metavars: an option says ADDR, SIZE, RATE, SECONDS, PATH...
    assert not re.search(r"<(str|bool|int|float|path|list\[[^>]*\])[^>]*>", text), text
    assert "\\[" not in text  # no escapes left over from rich markup
    if "Commands:" in text:  # each command's one-line help whole, not cut with "..."
        commands = text.split("Commands:", 1)[1].strip().splitlines()
        assert not [line for line in commands if line.rstrip().endswith("...")]


def test_impair_examples_paste_as_they_are() -> None:
    text = help_text("impair")
    lines = [line.strip() for line in text.splitlines()]
    assert "udpxfer impair --listen 9000 --to 9001 --loss 5% --delay 20ms --jitter 5ms &" in lines
    assert "udpxfer impair --listen 9000 --to 9001 --direction both \\" in lines
    assert "--gilbert 1%,25% --rate 100M --queue 64K --seed 7 --log lab.jsonl" in lines
    assert "--jitter-distribution <uniform|normal>" in text  # the whole name, not cut


def options(*words: str) -> dict[str, Any]:
    command = ROOT
    for word in words:
        command = command.commands[word]
    return {p.name: p for p in command.params if p.param_type_name == "option"}


def test_recv_and_tcp_recv_share_flags_and_defaults() -> None:
    udp, tcp = options("recv"), options("tcp", "recv")
    for name in ("bind", "out", "report", "once", "idle_timeout", "quiet"):
        assert udp[name].opts == tcp[name].opts, name
        assert udp[name].secondary_opts == tcp[name].secondary_opts == [], name
        assert udp[name].metavar == tcp[name].metavar, name
    assert udp["idle_timeout"].default == tcp["idle_timeout"].default
    assert udp["out"].default == tcp["out"].default


def test_chunk_size_example_is_a_size_that_works() -> None:
    text = " ".join(help_text("send").split())
    assert "64K" not in text
    assert "(e.g. 1200, 8K; at most 65451)" in text
