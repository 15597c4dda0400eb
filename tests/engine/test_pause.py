"""Pausing queues: ``engine.pause_queue`` stops every engine claiming from the queue (the
state is in the database: it holds across nodes and restarts); the queue still accepts tasks
and running tasks finish; ``resume_queue`` wakes the workers at once (NOTIFY, not the poll).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db


class Job(iron_defer.Task):
    KIND: ClassVar[str] = "job"
    done: ClassVar[list[str]] = []
    done_at: ClassVar[dict[str, float]] = {}
    name: str
    seconds: float = 0.0

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await trio.sleep(self.seconds)
        Job.done.append(self.name)
        Job.done_at[self.name] = trio.current_time()


@pytest.fixture(autouse=True)
def _reset() -> None:
    Job.done = []
    Job.done_at = {}


async def _wait_done(*names: str) -> None:
    while not set(names) <= set(Job.done):
        await trio.sleep(0.01)


async def test_pause_stops_every_engine_and_resume_restarts_them(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Two engines; a long task is running when the queue is paused: it finishes; new tasks
    are accepted but stay pending although every enqueue wakes both engines; after resume
    they all run within a second (poll 5 s: only the notification explains it)."""
    with trio.fail_after(40):
        async with (
            open_test_engine(tasks=[Job], poll_interval=5.0) as one,
            open_test_engine(tasks=[Job], poll_interval=5.0) as two,
        ):
            while not (one.statistics().listening and two.statistics().listening):
                await trio.sleep(0.01)
            running = await one.enqueue(Job(name="running", seconds=1.0))
            while (await one.get(running.id)).status != "running":
                await trio.sleep(0.01)
            paused = await two.pause_queue("default")
            waiting = []
            # Each enqueue notifies the queue: both engines wake and claim, and get nothing.
            for n in range(6):
                waiting.append(await one.enqueue(Job(name=f"w{n}")))
                await trio.sleep(0.15)
            await _wait_done("running")
            statuses = {(await one.get(r.id)).status for r in waiting}
            stats = {s.queue: s for s in await one.queue_stats()}
            resumed_at = trio.current_time()
            resumed = await one.resume_queue("default")
            await _wait_done(*(f"w{n}" for n in range(6)))
    assert paused.paused_at is not None and paused.queue == "default"
    assert statuses == {iron_defer.TaskStatus.PENDING}
    assert stats["default"].paused_at == paused.paused_at and stats["default"].pending == 6
    assert resumed.paused_at is None
    assert max(Job.done_at[f"w{n}"] for n in range(6)) - resumed_at < 1.0


async def test_a_pause_holds_across_engine_restarts(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Job]) as first:
            await first.pause_queue("default")
            record = await first.enqueue(Job(name="held"))
        async with open_test_engine(tasks=[Job]) as second:
            for _ in range(5):
                await trio.sleep(0.25)  # > poll interval (0.2 s) each time
                assert (await second.get(record.id)).status == "pending"
            await second.wait_until_idle()  # a paused queue is not work it could run
            await second.resume_queue("default")
            await _wait_done("held")


async def test_pausing_is_idempotent_and_only_affects_that_queue(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """A second pause keeps the first time; resuming an unpaused queue changes nothing; a
    paused empty queue is listed; other queues keep running."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Job], queues={"a": 2, "b": 2}) as engine:
            first = await engine.pause_queue("a")
            second = await engine.pause_queue("a")
            listed = await engine.queue_stats()
            await engine.enqueue("b", Job(name="b-runs"))
            await _wait_done("b-runs")
            not_paused = await engine.resume_queue("b")
            await engine.resume_queue("a")
            again = await engine.resume_queue("a")
            with pytest.raises(iron_defer.InvalidTaskError, match="invalid queue name"):
                await engine.pause_queue("no spaces")
        rows = await db.fetchval("SELECT count(*) FROM iron_defer.queue_pauses")
    assert second.paused_at == first.paused_at
    assert [(s.queue, s.pending, s.paused_at) for s in listed] == [("a", 0, first.paused_at)]
    assert not_paused.paused_at is None and again.paused_at is None
    assert rows == 0
