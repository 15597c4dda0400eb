"""`iron-defer-trio tasks retry`, run as the console script against a fresh database: one task
by id, or a queue's failed (or cancelled) tasks after a confirmed count; outcomes asserted on
the rows and against what the library and REST API answer."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import trio

from iron_defer_trio.http._schemas import TaskOut
from tests.e2e.test_cli_migrate import assert_one_error_line, cli_async, cli_env, ok_json

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import EngineFactory
    from tests.pg import Db

MISSING_ID = "0190f3a2-5b7c-7d3e-8f10-2a3b4c5d6e7f"


async def _finished(db: Db, count: int, *, status: str = "failed", kind: str = "job") -> None:
    await db.add_finished(count, status, queue="work", kind=kind, ago=timedelta(0))


async def test_retry_by_id_prints_the_task_as_the_library_has_it(
    database_url: str, open_test_engine: EngineFactory, db: Db, tmp_path: Path
) -> None:
    """--json prints the REST shape of the task, pending with attempts 0; the human line names
    it; a pending task is a conflict (exit 4) and an unknown id exit 3."""
    await _finished(db, 2)
    first, second = [r["id"] for r in await db.fetch("SELECT id FROM iron_defer.tasks")]
    env = cli_env(DATABASE_URL=database_url)
    with trio.fail_after(60):
        printed = ok_json(
            await cli_async("tasks", "retry", str(first), "--json", cwd=tmp_path, env=env)
        )
        human = await cli_async("tasks", "retry", str(second), cwd=tmp_path, env=env)
        again = await cli_async("tasks", "retry", str(second), cwd=tmp_path, env=env)
        missing = await cli_async("tasks", "retry", MISSING_ID, cwd=tmp_path, env=env)
        async with open_test_engine(tasks=[], run_workers=False) as engine:
            stored = await engine.get(first)
    assert printed == TaskOut.from_record(stored).to_json()
    assert (printed["status"], printed["attempts"]) == ("pending", 0)
    assert human.returncode == 0, human.stderr
    assert human.stdout == f"retried task {second}: pending again (attempt budget 3)\n"
    assert_one_error_line(again, 4, "it is pending")
    assert_one_error_line(missing, 3, "not found")


async def test_bulk_retry_asks_for_confirmation_and_retries_the_counted_tasks(
    database_url: str, db: Db, tmp_path: Path
) -> None:
    """The count is printed and confirmed on the prompt (y retries them, anything else
    changes nothing with exit 1); --kind and --status narrow the filter."""
    await _finished(db, 3)
    await _finished(db, 2, kind="other")
    await _finished(db, 1, status="cancelled")
    env = cli_env(DATABASE_URL=database_url)
    with trio.fail_after(60):
        declined = await cli_async(
            "tasks", "retry", "--queue", "work", "--kind", "job", cwd=tmp_path, env=env, stdin="n\n"
        )
        assert declined.returncode == 1
        assert "3 failed task(s) of queue 'work' of kind 'job' match" in declined.stdout
        assert "not confirmed: nothing was retried" in declined.stderr
        assert await db.statuses() == {"failed": 5, "cancelled": 1}

        accepted = await cli_async(
            "tasks", "retry", "--queue", "work", "--kind", "job", cwd=tmp_path, env=env, stdin="y\n"
        )
        cancelled = await cli_async(
            "tasks", "retry", "--queue", "work", "--status", "cancelled", "--yes", "--json",
            cwd=tmp_path, env=env,
        )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert "Retry 3 task(s)?" in accepted.stderr
    assert accepted.stdout.endswith("retried 3 task(s): pending again\n")
    assert ok_json(cancelled) == {"matched": 1, "more": False, "retried": 1}
    rows = await db.fetch("SELECT kind, status, count(*) AS n FROM iron_defer.tasks GROUP BY 1, 2")
    assert {(r["kind"], r["status"]): r["n"] for r in rows} == {
        ("job", "pending"): 4,
        ("other", "failed"): 2,
    }


async def test_bulk_retry_with_a_stale_count_changes_nothing(
    database_url: str, db: Db, tmp_path: Path
) -> None:
    """--expect N retries only when exactly N match: another number is exit 4 with one error
    line and no change; the right number retries them without a prompt."""
    await _finished(db, 2)
    env = cli_env(DATABASE_URL=database_url)
    with trio.fail_after(60):
        stale = await cli_async(
            "tasks", "retry", "--queue", "work", "--expect", "3", cwd=tmp_path, env=env
        )
        assert_one_error_line(stale, 4, "2 tasks match the filter now, not the 3 confirmed")
        assert await db.statuses() == {"failed": 2}
        done = await cli_async(
            "tasks", "retry", "--queue", "work", "--expect", "2", "--json", cwd=tmp_path, env=env
        )
    assert ok_json(done) == {"matched": 2, "more": False, "retried": 2}
    assert await db.statuses() == {"pending": 2}


async def test_retry_needs_an_id_or_a_queue_but_not_both(database_url: str, tmp_path: Path) -> None:
    """Without ID and --queue, or with both, the command is a usage error (exit 2)."""
    env = cli_env(DATABASE_URL=database_url)
    with trio.fail_after(60):
        neither = await cli_async("tasks", "retry", cwd=tmp_path, env=env)
        both = await cli_async(
            "tasks", "retry", MISSING_ID, "--queue", "work", cwd=tmp_path, env=env
        )
    assert_one_error_line(neither, 2, "give a task ID, or --queue")
    assert_one_error_line(both, 2, "not both")
