"""`iron-defer-trio migrate`, run as the installed console script; and the helpers the other

CLI end-to-end modules share to run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from iron_defer_trio.store._migrate import load_migrations
from tests import pg

if TYPE_CHECKING:
    from collections.abc import Iterator

#: The console script installed next to this interpreter (the venv's bin/ need not be on PATH).
CLI = Path(sys.executable).parent / "iron-defer-trio"
#: Every shipped migration version, as `migrate` reports them.
ALL_VERSIONS = [m.version for m in load_migrations()]


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any setting of its own, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_URL", "PORT"} and not name.startswith("IRON_DEFER")
    }
    env.update(extra)
    return env


def cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the console script in ``cwd`` with exactly ``env`` (default: no settings)."""
    assert CLI.is_file(), f"the console script is not installed at {CLI}"
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=cli_env() if env is None else env,
        input=stdin,
    )


async def cli_async(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """:func:`cli` from a trio test, in a worker thread."""
    return await trio.to_thread.run_sync(partial(cli, *args, cwd=cwd, env=env, stdin=stdin))


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful command printed (failing with its stderr otherwise)."""
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout)


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """The command failed with ``code``: nothing on stdout, one ``error:`` line on stderr."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = pg.unique_name("iron_defer_empty")
    pg.run_admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg.dsn_for(name)
    finally:
        pg.run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_applies_then_reports_up_to_date(empty_database: str, tmp_path: Path) -> None:
    """The first run applies every migration, the second finds nothing to do; the URL is
    accepted after the command, before it, and from DATABASE_URL."""
    first = cli("migrate", "--database-url", empty_database, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"applied migrations {ALL_VERSIONS}" in first.stdout
    second = cli("migrate", cwd=tmp_path, env=cli_env(DATABASE_URL=empty_database))
    assert second.returncode == 0, second.stderr
    assert "is up to date" in second.stdout
    third = cli("--database-url", empty_database, "migrate", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "is up to date" in third.stdout


def test_migrate_without_a_database_is_a_usage_error(tmp_path: Path) -> None:
    """No URL anywhere: exit 2 with one clear line on stderr, no traceback."""
    assert_one_error_line(cli("migrate", cwd=tmp_path), 2, "no database")


def test_migrate_against_an_unreachable_server_fails_cleanly(tmp_path: Path) -> None:
    """A refused connection is exit 1 with a one-line error and the password masked."""
    result = cli("migrate", "--database-url", "postgresql://app:s3cret@127.0.0.1:1/x", cwd=tmp_path)
    assert_one_error_line(result, 1, "cannot reach the database")
    assert "s3cret" not in result.stderr + result.stdout


def test_commands_never_migrate_and_say_how_to(empty_database: str, tmp_path: Path) -> None:
    """Against a database without the schema, a command fails (exit 1) naming `migrate`,
    and leaves the database as it was."""
    result = cli("tasks", "list", cwd=tmp_path, env=cli_env(DATABASE_URL=empty_database))
    assert_one_error_line(
        result, 1, "the database has no iron-defer schema; run `iron-defer-trio migrate`"
    )
    again = cli("migrate", cwd=tmp_path, env=cli_env(DATABASE_URL=empty_database))
    assert f"applied migrations {ALL_VERSIONS}" in again.stdout
