"""`iron-defer-trio migrate`, run as the installed console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests import pg

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = pg.unique_name("iron_defer_empty")
    pg.run_admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg.dsn_for(name)
    finally:
        pg.run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: The console script installed next to this interpreter (the venv's bin/ need not be on PATH).
CLI = Path(sys.executable).parent / "iron-defer-trio"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert CLI.is_file(), f"the console script is not installed at {CLI}"
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_migrate_applies_then_reports_up_to_date(empty_database: str) -> None:
    """The first run applies every migration, the second finds nothing to do."""
    first = _cli("migrate", "--database-url", empty_database)
    assert first.returncode == 0, first.stderr
    assert "applied migrations [1]" in first.stdout
    second = _cli("migrate", env={"DATABASE_URL": empty_database})
    assert second.returncode == 0, second.stderr
    assert "is up to date" in second.stdout


def test_migrate_without_a_database_is_a_usage_error() -> None:
    """No URL anywhere: exit 2 with one clear line on stderr, no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [str(CLI), "migrate"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 2
    assert "no database" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_against_an_unreachable_server_fails_cleanly() -> None:
    """A refused connection is exit 1 with a one-line error and the password masked."""
    result = _cli("migrate", "--database-url", "postgresql://app:s3cret@127.0.0.1:1/x")
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
