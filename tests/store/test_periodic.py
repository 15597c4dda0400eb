"""Periodic schedules in the store: registration keeps the fence, and the fire statement
lets exactly one caller enqueue each fire time (the fence only moves forward).

Every test has an absolute ``trio.fail_after`` and checks the rows through ``db``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import trio

from iron_defer_trio.config import DatabaseSettings
from iron_defer_trio.domain.periodic import ScheduleDefinition
from iron_defer_trio.store import open_postgres_store

if TYPE_CHECKING:
    from iron_defer_trio.store.protocol import PeriodicFire
    from tests.pg import Db

T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _schedule(queue: str = "reports") -> ScheduleDefinition:
    return ScheduleDefinition(
        name="hourly",
        cron="0 * * * *",
        timezone="UTC",
        queue=queue,
        kind="report",
        missed="run_once",
        payload_json='{"to": "ops"}',
        priority=3,
        max_attempts=2,
    )


async def test_concurrent_fires_of_one_time_enqueue_exactly_one_task(
    database_url: str, db: Db
) -> None:
    """Ten callers fire the same time at once: one advances the fence and inserts the task
    (scheduled at the fire time, with the schedule's queue, kind, payload, priority and
    attempts); the nine others insert nothing."""
    results: list[PeriodicFire] = []
    with trio.fail_after(15):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            await store.register_periodic([(_schedule(), T0)])

            async def fire() -> None:
                results.append(await store.fire_periodic(_schedule(), T0, T0 + HOUR))

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(fire)
        tasks = await db.fetch("SELECT * FROM iron_defer.tasks")
        schedule = await db.fetchrow("SELECT * FROM iron_defer.periodic_schedules")
    assert sorted(r.fenced for r in results) == [False] * 9 + [True]
    (winner,) = [r for r in results if r.fenced]
    (task,) = tasks
    assert task["id"] == winner.task_id
    assert (task["queue"], task["kind"], task["payload"]) == ("reports", "report", '{"to": "ops"}')
    assert (task["priority"], task["max_attempts"], task["scheduled_at"]) == (3, 2, T0)
    assert (schedule["last_fire_at"], schedule["next_fire_at"]) == (T0, T0 + HOUR)


async def test_the_fence_never_moves_back(database_url: str, db: Db) -> None:
    """Once a later fire time was handled (here skipped: no task), an earlier one is
    refused: nothing is inserted and the fence stays."""
    with trio.fail_after(15):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            await store.register_periodic([(_schedule(), T0)])
            skipped = await store.fire_periodic(
                _schedule(), T0 + HOUR, T0 + 2 * HOUR, enqueue=False
            )
            late = await store.fire_periodic(_schedule(), T0, T0 + HOUR)
        count = await db.fetchval("SELECT count(*) FROM iron_defer.tasks")
        fence = await db.fetchval("SELECT last_fire_at FROM iron_defer.periodic_schedules")
    assert (skipped.fenced, skipped.task_id) == (True, None)
    assert (late.fenced, late.task_id) == (False, None)
    assert count == 0
    assert fence == T0 + HOUR


async def test_registering_again_updates_the_definition_and_keeps_the_fence(
    database_url: str,
) -> None:
    """An engine starting with a changed schedule updates its row; the fence and creation
    time stay, so no fire time is repeated."""
    with trio.fail_after(15):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            (first,) = await store.register_periodic([(_schedule(), T0)])
            await store.fire_periodic(_schedule(), T0, T0 + HOUR)
            (again,) = await store.register_periodic([(_schedule(queue="other"), T0 + HOUR)])
            listed = await store.periodic_schedules()
    assert again.queue == "other" and again.last_fire_at == T0
    assert again.created_at == first.created_at
    assert listed == [again]
