"""`iron-defer-trio queues`, run as the console script against a fresh database."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from iron_defer_trio.http._schemas import QueueList, QueueOut
from tests.e2e.test_cli_migrate import assert_one_error_line, cli_async, cli_env, ok_json

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import EngineFactory

AGE = "oldestPendingAgeSeconds"


async def test_queues_shows_the_engines_statistics(
    database_url: str, open_test_engine: EngineFactory, tmp_path: Path
) -> None:
    """--json is the REST API's QueueList of the engine's statistics (the age aside, which
    grows between the two reads); the human view has one row per queue."""
    with trio.fail_after(30):
        env = cli_env(DATABASE_URL=database_url)
        empty = await cli_async("queues", cwd=tmp_path, env=env)
        assert (empty.returncode, empty.stdout) == (
            0,
            "no queues yet (a queue appears once a task is submitted to it)\n",
        )

        async with open_test_engine(tasks=[], run_workers=False) as engine:
            for _ in range(2):
                await engine.enqueue_payload("emails", "send", {}, validate=False)
            doomed = await engine.enqueue_payload("reports", "build", {}, validate=False)
            await engine.cancel(doomed.id)
            stats = await engine.queue_stats()
        expected = QueueList(queues=[QueueOut.from_statistics(s) for s in stats]).to_json()

        shown = ok_json(await cli_async("queues", "--json", cwd=tmp_path, env=env))
        emails_age, reports_age = (queue.pop(AGE) for queue in shown["queues"])
        assert emails_age >= 0
        assert reports_age is None  # nothing waits there
        for queue in expected["queues"]:
            queue.pop(AGE)
        assert shown == expected

        human = await cli_async("queues", cwd=tmp_path, env=env)
        assert human.returncode == 0, human.stderr
        header, emails, reports = (line.split() for line in human.stdout.splitlines())
        assert header == [
            "QUEUE",
            "PENDING",
            "SCHEDULED",
            "RUNNING",
            "SUSPENDED",
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "WORKERS",
            "OLDEST_PENDING",
            "PAUSED",
        ]
        assert emails[:9] == ["emails", "2", "0", "0", "0", "0", "0", "0", "0"]
        assert emails[9].endswith("s") and emails[10] == "-"
        assert reports == ["reports", "0", "0", "0", "0", "0", "0", "1", "0", "-", "-"]


async def test_queues_pause_and_resume_and_the_by_region_view(
    database_url: str, open_test_engine: EngineFactory, tmp_path: Path
) -> None:
    """pause/resume print what they did (or the REST shape with --json) and the library sees
    the change; --by-region lists a row per queue and region; a bad name is a usage error."""
    with trio.fail_after(30):
        env = cli_env(DATABASE_URL=database_url)
        submit = ["submit", "send", "--raw", "--payload", "{}", "--queue", "emails"]
        pinned = ok_json(
            await cli_async(*submit, "--region", "eu-west", "--json", cwd=tmp_path, env=env)
        )
        assert pinned["region"] == "eu-west"
        refused = await cli_async(*submit, "--region", "Bad_Label", cwd=tmp_path, env=env)
        assert_one_error_line(refused, 2, "invalid region")
        async with open_test_engine(tasks=[], run_workers=False) as engine:
            await engine.enqueue_payload("emails", "send", {}, validate=False)
            assert (await engine.get(pinned["id"])).region == "eu-west"

        paused = await cli_async("queues", "pause", "emails", cwd=tmp_path, env=env)
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.startswith("paused queue emails (since ")
        listed = ok_json(await cli_async("queues", "--json", cwd=tmp_path, env=env))
        [emails] = listed["queues"]
        assert (emails["paused"], emails["pending"]) == (True, 2)
        human = await cli_async("queues", cwd=tmp_path, env=env)
        assert human.stdout.splitlines()[1].split()[-1] == "yes"

        regional = ok_json(
            await cli_async("queues", "--by-region", "--json", cwd=tmp_path, env=env)
        )
        assert [(q["region"], q["pending"]) for q in regional["queues"]] == [
            (None, 1),
            ("eu-west", 1),
        ]
        table = await cli_async("queues", "--by-region", cwd=tmp_path, env=env)
        rows = [line.split() for line in table.stdout.splitlines()]
        assert rows[0][:2] == ["QUEUE", "REGION"]
        assert [row[:3] for row in rows[1:]] == [["emails", "-", "1"], ["emails", "eu-west", "1"]]

        resumed = ok_json(
            await cli_async("queues", "resume", "emails", "--json", cwd=tmp_path, env=env)
        )
        assert (resumed["queue"], resumed["paused"], resumed["pausedAt"]) == (
            "emails",
            False,
            None,
        )
        async with open_test_engine(tasks=[], run_workers=False) as engine:
            [after] = await engine.queue_stats()
        assert after.paused_at is None

        bad = await cli_async("queues", "pause", "not a queue", cwd=tmp_path, env=env)
        assert_one_error_line(bad, 2, "invalid queue name")
