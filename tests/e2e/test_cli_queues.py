"""`iron-defer-trio queues`, run as the console script against a fresh database."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from iron_defer_trio.http._schemas import QueueList, QueueOut
from tests.e2e.test_cli_migrate import cli_async, cli_env, ok_json

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
        ]
        assert emails[:9] == ["emails", "2", "0", "0", "0", "0", "0", "0", "0"]
        assert emails[9].endswith("s")
        assert reports == ["reports", "0", "0", "0", "0", "0", "0", "1", "0", "-"]
