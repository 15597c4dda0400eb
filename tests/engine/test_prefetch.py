"""Fetch-ahead (``worker.prefetch``): short tasks claimed while every slot is busy wait in a
local buffer. The buffer must never cost a guarantee: buffered tasks go back to the queue
at once when the engine drains, one whose lease was lost while it waited never starts, and
slow tasks are not hoarded away from other engines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar
from uuid import UUID

import pytest
import trio

import iron_defer_trio as iron_defer

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db


class Quick(iron_defer.Task):
    """Returns at once; remembers which of them ran."""

    KIND: ClassVar[str] = "quick"
    ran: ClassVar[set[int]] = set()
    n: int

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Quick.ran.add(self.n)


class Blocker(iron_defer.Task):
    """Holds its slot for a while."""

    KIND: ClassVar[str] = "blocker"
    started: ClassVar[int] = 0
    finished: ClassVar[int] = 0
    seconds: float

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Blocker.started += 1
        await trio.sleep(self.seconds)
        Blocker.finished += 1


class Slow(iron_defer.Task):
    """Takes 0.3 s; remembers which engine ran it."""

    KIND: ClassVar[str] = "slow"
    runs: ClassVar[list[UUID]] = []

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await trio.sleep(0.3)
        Slow.runs.append(ctx.worker_id)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Quick.ran = set()
    Blocker.started = Blocker.finished = 0
    Slow.runs = []


async def _buffer_behind_a_blocker(engine: iron_defer.Engine, seconds: float) -> list[UUID]:
    """Teach the engine that quick tasks are quick, occupy its only slot with a Blocker, and
    enqueue ten Quick tasks that it fetches ahead into its buffer. Returns their ids."""
    await engine.enqueue_many([Quick(n=n) for n in range(20)])
    while len(Quick.ran) < 20:
        await trio.sleep(0.01)
    await engine.enqueue(Blocker(seconds=seconds))
    while Blocker.started < 1:
        await trio.sleep(0.01)
    records = await engine.enqueue_many([Quick(n=100 + n) for n in range(10)])
    while engine.statistics().queues[0].buffered < 10:
        await trio.sleep(0.01)
    return [record.id for record in records]


async def test_buffered_tasks_go_back_to_the_queue_at_once_when_the_engine_drains(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """While the blocker still runs out its shutdown time, the fetched-ahead tasks are
    already pending again with their attempt not counted, and they never ran here."""
    seen_released_while_blocked: list[bool] = []

    async def watch(ids: list[UUID]) -> None:
        while True:
            released = await db.fetchval(
                "SELECT count(*) FROM iron_defer.tasks WHERE id = ANY($1) "
                "AND status = 'pending' AND attempts = 0 AND claimed_by IS NULL",
                ids,
            )
            if released == len(ids):
                seen_released_while_blocked.append(Blocker.finished == 0)
                return
            await trio.sleep(0.02)

    with trio.fail_after(30):
        async with (
            trio.open_nursery() as nursery,
            open_test_engine(tasks=[Quick, Blocker], queues={"default": 1}, prefetch=10) as engine,
        ):
            ids = await _buffer_behind_a_blocker(engine, seconds=2.0)
            nursery.start_soon(watch, ids)
        assert seen_released_while_blocked == [True]
        assert Blocker.finished == 1
        assert Quick.ran.isdisjoint(range(100, 110))
        assert await db.statuses() == {"completed": 21, "pending": 10}


async def test_a_buffered_task_whose_lease_was_lost_never_starts(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Buffered tasks taken over by another worker while they waited (as after a database
    outage longer than the lease) are dropped from the buffer: they never run here and this
    engine never writes an outcome over the new owner's attempt."""
    with trio.fail_after(30):
        async with open_test_engine(
            tasks=[Quick, Blocker], queues={"default": 1}, prefetch=10
        ) as engine:
            ids = await _buffer_behind_a_blocker(engine, seconds=1.5)
            thief = await db.fetchval("SELECT gen_random_uuid()")
            # The thief's lease outlives the test: a loaded machine must not let the sweeper
            # recover the stolen tasks before the assertions (a flaky CI run saw exactly that).
            await db.execute(
                "UPDATE iron_defer.tasks SET claimed_by = $2, attempts = attempts + 1, "
                "claimed_until = now() + interval '10 minutes' WHERE id = ANY($1)",
                ids,
                thief,
            )
            while Blocker.finished < 1 or engine.statistics().in_flight:
                await trio.sleep(0.01)
            stats = engine.statistics().queues[0]
            await trio.sleep(0.5)  # a stale outcome, had one been queued, would land now
        rows = await db.fetch(
            "SELECT status, attempts, claimed_by FROM iron_defer.tasks WHERE id = ANY($1)", ids
        )
    assert Quick.ran.isdisjoint(range(100, 110))
    assert (stats.buffered, stats.released) == (0, 10)
    assert {(r["status"], r["attempts"], r["claimed_by"]) for r in rows} == {("running", 2, thief)}


async def test_slow_tasks_are_not_fetched_ahead_so_other_engines_share_them(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """With 0.3 s tasks the fetch-ahead shrinks to nothing: an engine claims only for its
    free slots, and a second engine gets its share of the work."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Slow], queues={"default": 2}, prefetch=100) as first:
            await first.enqueue_many([Slow() for _ in range(2)])
            while len(Slow.runs) < 2:
                await trio.sleep(0.01)
            async with open_test_engine(
                tasks=[Slow], queues={"default": 2}, prefetch=100
            ) as second:
                await first.enqueue_many([Slow() for _ in range(16)])
                most_buffered = 0
                while len(Slow.runs) < 18:
                    most_buffered = max(
                        most_buffered,
                        first.statistics().queues[0].buffered,
                        second.statistics().queues[0].buffered,
                    )
                    await trio.sleep(0.005)
                second_id = second.statistics().worker_id
    assert most_buffered == 0
    assert Slow.runs.count(second_id) >= 6
    assert await db.statuses() == {"completed": 18}
