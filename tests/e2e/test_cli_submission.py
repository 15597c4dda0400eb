"""The CLI's side of submission safety, run as the console script: ``submit
--idempotency-key``, ``tasks audit`` and ``migrate --logged/--unlogged``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from tests.e2e.test_cli_migrate import assert_one_error_line, cli_async, cli_env, ok_json

if TYPE_CHECKING:
    from pathlib import Path

    from tests.pg import Db


async def _submit(env: dict[str, str], cwd: Path, payload: str, key: str) -> tuple[int, str, str]:
    result = await cli_async(
        "submit", "report", "--raw", "--payload", payload, "--idempotency-key", key,
        cwd=cwd, env=env,
    )  # fmt: skip
    return result.returncode, result.stdout.strip(), result.stderr


async def test_submit_with_a_key_twice_prints_the_same_id_and_stores_one_task(
    database_url: str, db: Db, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=database_url)
    with trio.fail_after(30):
        first = await _submit(env, tmp_path, '{"day": 1}', "report-day-1")
        again = await _submit(env, tmp_path, '{"day": 1}', "report-day-1")
        conflict = await cli_async(
            "submit", "report", "--raw", "--payload", '{"day": 2}',
            "--idempotency-key", "report-day-1", cwd=tmp_path, env=env,
        )  # fmt: skip
    assert first[0] == 0 and first[2] == ""
    assert again[0] == 0 and again[1] == first[1]
    assert "already submitted" in again[2] and first[1] in again[2]
    assert_one_error_line(conflict, 4, "idempotency key 'report-day-1'")
    rows = await db.fetch("SELECT id::text, idempotency_key FROM iron_defer.tasks")
    assert [(r["id"], r["idempotency_key"]) for r in rows] == [(first[1], "report-day-1")]


async def test_tasks_audit_prints_the_trail_as_a_table_and_as_json(
    database_url: str, db: Db, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=database_url, IRON_DEFER__DATABASE__AUDIT_LOG="true")
    with trio.fail_after(30):
        submitted = await cli_async(
            "submit", "report", "--raw", "--payload", "{}", cwd=tmp_path, env=env
        )
        task_id = submitted.stdout.strip()
        cancelled = await cli_async("tasks", "cancel", task_id, cwd=tmp_path, env=env)
        text = await cli_async("tasks", "audit", task_id, cwd=tmp_path, env=env)
        as_json = ok_json(
            await cli_async("tasks", "audit", task_id, "--json", cwd=tmp_path, env=env)
        )
        page = ok_json(
            await cli_async(
                "tasks", "audit", task_id, "--json", "--limit", "1", cwd=tmp_path, env=env
            )
        )
    assert submitted.returncode == 0 and cancelled.returncode == 0
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["ID", "AT", "EVENT", "FROM", "TO", "ATTEMPT", "WORKER", "DETAILS"]
    assert [line.split()[2:5] for line in lines[1:]] == [
        ["enqueue", "-", "pending"],
        ["cancel", "pending", "cancelled"],
    ]
    assert [e["event"] for e in as_json["items"]] == ["enqueue", "cancel"]
    assert as_json["nextCursor"] is None
    assert page["nextCursor"] == str(as_json["items"][0]["id"])
    assert await db.fetchval("SELECT count(*) FROM iron_defer.task_audit") == 2


async def test_migrate_logged_and_unlogged_switch_the_table(
    database_url: str, db: Db, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=database_url)
    query = "SELECT relpersistence::text FROM pg_class WHERE oid = 'iron_defer.tasks'::regclass"
    with trio.fail_after(30):
        unlogged = await cli_async("migrate", "--unlogged", cwd=tmp_path, env=env)
        after_unlogged = await db.fetchval(query)
        logged = await cli_async("migrate", "--logged", cwd=tmp_path, env=env)
    assert unlogged.returncode == 0, unlogged.stderr
    assert "the tasks table is UNLOGGED" in unlogged.stdout
    assert after_unlogged == "u"
    assert logged.returncode == 0 and "the tasks table is logged" in logged.stdout
    assert await db.fetchval(query) == "p"


async def test_tasks_signal_resumes_a_suspended_task_and_conflicts_otherwise(
    database_url: str, db: Db, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=database_url)
    with trio.fail_after(30):
        submitted = await cli_async(
            "submit", "report", "--raw", "--payload", "{}", cwd=tmp_path, env=env
        )
        task_id = submitted.stdout.strip()
        conflict = await cli_async("tasks", "signal", task_id, cwd=tmp_path, env=env)
        await db.execute(
            "UPDATE iron_defer.tasks SET status = 'suspended', suspended_at = now() "
            "WHERE id = $1::uuid",
            task_id,
        )
        command = ["tasks", "signal", task_id, "--payload", '{"ok": 1}', "--json"]
        resumed = ok_json(await cli_async(*command, cwd=tmp_path, env=env))
    assert_one_error_line(conflict, 4, "cannot signal task")
    assert (resumed["status"], resumed["signalPayload"]) == ("pending", {"ok": 1})
