"""Engine basics against a fresh database: a task is enqueued, runs, and is completed.

Rules: every test has an absolute ``trio.fail_after``; waiting is on conditions (rows,
events), never on a sleep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import trio

import iron_defer_trio as iron_defer

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db

ran: list[str] = []


class Greet(iron_defer.Task):
    KIND: ClassVar[str] = "greet"
    name: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        ran.append(self.name)


async def test_enqueued_task_runs_once_and_is_completed(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """A task enqueued on a running engine is executed and its row ends completed."""
    ran.clear()
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Greet]) as engine:
            record = await engine.enqueue("default", Greet(name="ada"))
            assert record.status is iron_defer.TaskStatus.PENDING
            await engine.wait_until_idle()
        row = await db.fetchrow("SELECT * FROM iron_defer.tasks WHERE id = $1", record.id)
    assert ran == ["ada"]
    assert row["status"] == "completed"
    assert row["attempts"] == 1
    assert row["claimed_by"] is None and row["finished_at"] is not None
