"""`iron-defer-trio tasks list|get|cancel`, run as the console script against a fresh
database; tasks are created through the engine and outcomes asserted on the rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from iron_defer_trio.http._schemas import TaskOut, TaskPage
from tests.e2e.test_cli_migrate import assert_one_error_line, cli_async, cli_env, ok_json

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import EngineFactory
    from tests.pg import Db

MISSING_ID = "0190f3a2-5b7c-7d3e-8f10-2a3b4c5d6e7f"


async def test_list_pages_newest_first_with_a_cursor(
    database_url: str, open_test_engine: EngineFactory, tmp_path: Path
) -> None:
    """--json pages are the REST API's TaskPage of the engine's records; the human view is a
    table with the next cursor; the cursor leads to the older rest; filters apply."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[], run_workers=False) as engine:
            for n in range(3):
                await engine.enqueue_payload("work", "job", {"n": n}, validate=False)
            await engine.enqueue_payload("other", "job", {"n": 9}, validate=False)
            newest_first = await engine.list(queue="work")
            everything = await engine.list()
        wire = [TaskOut.from_record(record).to_json() for record in newest_first]
        env = cli_env(DATABASE_URL=database_url)

        first = ok_json(
            await cli_async(
                "tasks", "list", "--queue", "work", "--limit", "2", "--json", cwd=tmp_path, env=env
            )
        )
        assert (
            first
            == TaskPage.model_validate({"items": wire[:2], "nextCursor": wire[1]["id"]}).to_json()
        )
        rest = ok_json(
            await cli_async(
                "tasks",
                "list",
                "--queue",
                "work",
                "--limit",
                "2",
                "--cursor",
                first["nextCursor"],
                "--json",
                cwd=tmp_path,
                env=env,
            )
        )
        assert rest == {"items": wire[2:], "nextCursor": None}

        human = await cli_async("tasks", "list", "--limit", "2", cwd=tmp_path, env=env)
        assert human.returncode == 0, human.stderr
        lines = human.stdout.splitlines()
        assert lines[0].split() == [
            "ID",
            "QUEUE",
            "KIND",
            "STATUS",
            "ATTEMPTS",
            "PRIORITY",
            "SCHEDULED_AT",
            "CREATED_AT",
        ]
        assert len(lines) == 4
        assert lines[1].split()[:6] == [
            str(everything[0].id),
            "other",
            "job",
            "pending",
            "0/3",
            "0",
        ]
        assert lines[2].split()[0] == str(everything[1].id)
        assert lines[3] == f"next cursor: {everything[1].id}"

        none = ok_json(
            await cli_async("tasks", "list", "--status", "RUNNING", "--json", cwd=tmp_path, env=env)
        )
        assert none == {"items": [], "nextCursor": None}


async def test_get_and_cancel_report_not_found_and_conflicts(
    database_url: str, db: Db, open_test_engine: EngineFactory, tmp_path: Path
) -> None:
    """Cancel turns a pending row cancelled (exit 0); a running task gets its cancellation
    requested (exit 0, says so); an already cancelled task is a conflict (exit 4); an unknown
    id is exit 3 for get and cancel alike."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[], run_workers=False) as engine:
            pending = await engine.enqueue_payload(None, "job", {}, validate=False)
            running = await engine.enqueue_payload(None, "job", {}, validate=False)
        await db.execute(
            "UPDATE iron_defer.tasks SET status = 'running', attempts = 1, started_at = now(),"
            " claimed_by = gen_random_uuid(), claimed_until = now() + interval '1 hour'"
            " WHERE id = $1",
            running.id,
        )
        env = cli_env(DATABASE_URL=database_url)

        cancelled = await cli_async("tasks", "cancel", str(pending.id), cwd=tmp_path, env=env)
        assert (cancelled.returncode, cancelled.stdout) == (0, f"cancelled task {pending.id}\n")
        row = await db.fetchrow(
            "SELECT status, finished_at FROM iron_defer.tasks WHERE id = $1", pending.id
        )
        assert row["status"] == "cancelled"
        assert row["finished_at"] is not None

        again = await cli_async("tasks", "cancel", str(pending.id), "--json", cwd=tmp_path, env=env)
        assert_one_error_line(again, 4, "it is cancelled")
        busy = await cli_async("tasks", "cancel", str(running.id), cwd=tmp_path, env=env)
        assert (busy.returncode, busy.stdout) == (
            0,
            f"cancellation requested for running task {running.id}: "
            "it ends cancelled once its handler stops\n",
        )
        row = await db.fetchrow(
            "SELECT status, cancel_requested_at FROM iron_defer.tasks WHERE id = $1", running.id
        )
        assert row["status"] == "running"
        assert row["cancel_requested_at"] is not None

        detail = await cli_async("tasks", "get", str(pending.id), cwd=tmp_path, env=env)
        assert detail.returncode == 0, detail.stderr
        fields = dict(line.split(None, 1) for line in detail.stdout.splitlines()[1:])
        assert fields["id"] == str(pending.id)
        assert fields["status"] == "cancelled"
        assert fields["payload"] == "{}"

        for command in ("get", "cancel"):
            missing = await cli_async("tasks", command, MISSING_ID, cwd=tmp_path, env=env)
            assert_one_error_line(missing, 3, f"task {MISSING_ID} not found")


async def test_tasks_list_finds_tasks_by_the_beginning_of_their_id(
    database_url: str, open_test_engine: EngineFactory, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        async with open_test_engine(tasks=[], run_workers=False) as engine:
            first = await engine.enqueue_payload(None, "job", {}, validate=False)
            await engine.enqueue_payload(None, "job", {}, validate=False)
        env = cli_env(DATABASE_URL=database_url)
        whole = await cli_async(
            "tasks", "list", "--id-prefix", str(first.id), "--json", cwd=tmp_path, env=env
        )
        bad = await cli_async("tasks", "list", "--id-prefix", "zz", cwd=tmp_path, env=env)
    assert [item["id"] for item in ok_json(whole)["items"]] == [str(first.id)]
    assert_one_error_line(bad, 2, "invalid id prefix")
