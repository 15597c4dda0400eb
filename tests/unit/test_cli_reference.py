"""docs/reference/cli.md documents exactly the commands, arguments and options the typer app
has (nothing missing, nothing stale), and every exit code the CLI can return."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from iron_defer_trio.cli import PROG, app
from iron_defer_trio.cli._common import ExitCode

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "cli.md"
#: A command's section: "## `iron-defer-trio tasks list`".
_SECTION = re.compile(r"^## `(iron-defer-trio[^`]*)`\n(.*?)(?=^## |\Z)", re.MULTILINE | re.DOTALL)
#: First cell of a table row: "| `--queue NAME` |" -> "--queue"; "| `KIND` |" -> "KIND".
_ROW = re.compile(r"^\| `([^` ]+)[^`]*` \|", re.MULTILINE)
_EXIT_ROW = re.compile(r"^\| `(\d+)` \|", re.MULTILINE)


def _commands(command: Any, path: str) -> dict[str, Any]:
    """Every command that can be run (the root's section holds the global options; a group
    that runs without a subcommand, like ``queues``, is a command too), by path."""
    runnable = not hasattr(command, "commands") or getattr(command, "invoke_without_command", False)
    found = {path: command} if path == PROG or runnable else {}
    for name, sub in getattr(command, "commands", {}).items():
        found.update(_commands(sub, f"{path} {name}"))
    return found


COMMANDS = _commands(typer.main.get_command(app), PROG)


def _names(command: Any) -> set[str]:
    names = set()
    for param in command.params:
        if param.param_type_name == "argument":
            names.add(param.metavar or param.name.upper())
        else:
            names.update(opt for opt in [*param.opts, *param.secondary_opts] if opt != "--help")
    return names


def _sections() -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _SECTION.finditer(PAGE.read_text(encoding="utf-8"))}


def test_every_command_has_a_section_and_every_section_a_command() -> None:
    """No undocumented command, and no documented command that does not exist."""
    assert sorted(_sections()) == sorted(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_each_section_lists_exactly_the_commands_options(path: str) -> None:
    """The option table of a command names each of its arguments and options, and only
    those (the names are what the table's first column starts with)."""
    section = _sections().get(path, "")
    assert set(_ROW.findall(section)) == _names(COMMANDS[path])


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_and_option_has_help_text(path: str) -> None:
    """Docstrings and option help are the --help text: none may be empty."""
    command = COMMANDS[path]
    assert (command.help or "").strip(), path
    for param in command.params:
        if param.param_type_name == "option":
            assert (param.help or "").strip(), f"{path} {param.opts}"


def test_every_exit_code_is_documented() -> None:
    """The exit-code table is the ExitCode enum, code for code."""
    page = PAGE.read_text(encoding="utf-8")
    table = page.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    assert sorted(int(code) for code in _EXIT_ROW.findall(table)) == sorted(ExitCode)
