"""The README's two set-up commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _shell_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"^```sh\n(.*?)^```", readme, re.M | re.S)]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """.ci/run ends with the README's test command, character for character."""
    commands = _shell_commands()
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line]
    assert ci_lines[-1] == test_command


def main_job_arguments() -> list[str]:
    """The arguments the README's main command gives ``iron-defer-trio`` (the e2e test of the
    zero-setup database runs exactly these)."""
    main = _shell_commands()[0]
    run = main.split("&&")[-1].split()
    assert run[0].endswith("iron-defer-trio"), main
    return run[1:]


def test_readme_main_command_installs_and_runs_the_server() -> None:
    """The first command installs the package (without dev tools) and serves the demo."""
    main = _shell_commands()[0]
    assert "pip install" in main
    assert "[dev]" not in main
    assert main_job_arguments() == ["serve", "--app", "examples.demo_tasks"]


def test_ci_script_starts_postgres_when_it_is_down() -> None:
    """.ci/run checks PostgreSQL and starts the local cluster if needed."""
    script = (ROOT / ".ci" / "run").read_text()
    assert "pg_isready" in script and "pg_ctlcluster" in script
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script
