"""`iron-defer-trio submit`, run as the console script against a fresh database: what it
stores (asserted on the rows), what it prints, and what it refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import trio

from iron_defer_trio.http._schemas import TaskOut
from tests.e2e.test_cli_migrate import assert_one_error_line, cli_async, cli_env, ok_json

if TYPE_CHECKING:
    from pathlib import Path

    from tests.pg import Db

TASKS_MODULE = """
from typing import ClassVar

import iron_defer_trio as iron_defer


class SendEmail(iron_defer.Task):
    KIND: ClassVar[str] = "send_email"
    QUEUE: ClassVar[str | None] = "emails"
    to: str
    subject: str = "hello"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        pass
"""


def write_tasks_module(directory: Path, name: str = "mytasks") -> str:
    """A task module in ``directory`` (the CLI's cwd, hence importable); returns its name."""
    (directory / f"{name}.py").write_text(TASKS_MODULE, encoding="utf-8")
    return name


async def row_as_wire(db: Db, task_id: UUID | str) -> dict[str, Any]:
    """The task's row, converted exactly as the REST API converts a record."""
    row = await db.fetchrow("SELECT * FROM iron_defer.tasks WHERE id = $1", UUID(str(task_id)))
    assert row is not None, f"no row for {task_id}"
    data = dict(row)
    data["payload"] = json.loads(data["payload"])  # the test connection has no jsonb codec
    return TaskOut.model_validate(data).to_json()


async def test_a_validated_submit_stores_the_class_serialised_payload(
    database_url: str, db: Db, tmp_path: Path
) -> None:
    """Task modules from tasks.modules validate the payload; defaults come from the class;
    stdout is the id alone; `tasks get --json` is the row in the REST shape."""
    with trio.fail_after(30):
        module = write_tasks_module(tmp_path)
        (tmp_path / "config.toml").write_text(f'[tasks]\nmodules = ["{module}"]\n')
        env = cli_env(DATABASE_URL=database_url)
        result = await cli_async(
            "submit",
            "send_email",
            "--payload",
            '{"to": "ada@example.com"}',
            "--priority",
            "7",
            "--max-attempts",
            "5",
            "--scheduled-at",
            "2030-01-31T09:00:00+02:00",
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        task_id = UUID(result.stdout.strip())
        assert result.stdout == f"{task_id}\n"

        row = await db.fetchrow("SELECT * FROM iron_defer.tasks WHERE id = $1", task_id)
        assert json.loads(row["payload"]) == {"to": "ada@example.com", "subject": "hello"}
        assert (row["queue"], row["kind"], row["status"]) == ("emails", "send_email", "pending")
        assert (row["priority"], row["max_attempts"]) == (7, 5)
        assert row["scheduled_at"] == datetime(2030, 1, 31, 7, tzinfo=UTC)

        shown = ok_json(
            await cli_async("tasks", "get", str(task_id), "--json", cwd=tmp_path, env=env)
        )
        assert shown == await row_as_wire(db, task_id)


async def test_payloads_come_from_files_and_stdin_and_json_is_the_stored_task(
    database_url: str, db: Db, tmp_path: Path
) -> None:
    """@file and - are read; --raw stores the payload as given; --json prints the task exactly
    as it is stored (the REST API's task object)."""
    with trio.fail_after(30):
        env = cli_env(DATABASE_URL=database_url)
        (tmp_path / "payload.json").write_text('{"from": "file", "n": [1, 2]}', encoding="utf-8")
        from_file = ok_json(
            await cli_async(
                "submit",
                "report",
                "--raw",
                "--payload",
                "@payload.json",
                "--json",
                cwd=tmp_path,
                env=env,
            )
        )
        from_stdin = ok_json(
            await cli_async(
                "submit",
                "report",
                "--raw",
                "--payload",
                "-",
                "--queue",
                "reports",
                "--json",
                cwd=tmp_path,
                env=env,
                stdin='{"from": "stdin", "extra": null}',
            )
        )
        assert from_file == await row_as_wire(db, from_file["id"])
        assert from_stdin == await row_as_wire(db, from_stdin["id"])
        assert from_file["payload"] == {"from": "file", "n": [1, 2]}
        assert (from_file["queue"], from_file["maxAttempts"]) == ("default", 3)
        assert from_stdin["payload"] == {"from": "stdin", "extra": None}
        assert from_stdin["queue"] == "reports"


async def test_invalid_submits_write_nothing(database_url: str, db: Db, tmp_path: Path) -> None:
    """Field errors are listed one per line; an unknown kind and a missing module list are
    each one line; all exit 2 and leave the table empty."""
    with trio.fail_after(30):
        module = write_tasks_module(tmp_path)
        env = cli_env(DATABASE_URL=database_url)
        fields = await cli_async(
            "submit",
            "send_email",
            "--app",
            module,
            "--payload",
            '{"to": 1, "cc": "x"}',
            cwd=tmp_path,
            env=env,
        )
        assert fields.returncode == 2
        assert fields.stdout == ""
        assert fields.stderr.splitlines() == [
            "error: the payload does not fit task kind 'send_email':",
            "  payload.to: Input should be a valid string",
            "  payload.cc: Extra inputs are not permitted",
        ]
        unknown = await cli_async(
            "submit", "send_mail", "--app", module, "--payload", "{}", cwd=tmp_path, env=env
        )
        assert_one_error_line(unknown, 2, "unknown task kind 'send_mail'")
        unconfigured = await cli_async(
            "submit", "send_email", "--payload", '{"to": "a@b.c"}', cwd=tmp_path, env=env
        )
        assert_one_error_line(unconfigured, 2, "pass --raw to submit it unvalidated")
        assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0
