"""Shutdown: drain within the deadline, hand back what is left, leave nothing running, and
come out of ``open_engine`` with the right exception.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.store import PostgresStore, open_postgres_store
from tests.conftest import EngineFactory, fast_settings

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime
    from uuid import UUID

    from iron_defer_trio.store.protocol import RecoveredTask
    from tests.pg import Db


class Nap(iron_defer.Task):
    """Sleeps; remembers whether it finished or was cancelled."""

    KIND: ClassVar[str] = "nap"
    started: ClassVar[int] = 0
    finished: ClassVar[int] = 0
    cancelled: ClassVar[int] = 0
    seconds: float

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Nap.started += 1
        try:
            await trio.sleep(self.seconds)
        except trio.Cancelled:
            Nap.cancelled += 1
            raise
        Nap.finished += 1


@pytest.fixture(autouse=True)
def _reset() -> None:
    Nap.started = Nap.finished = Nap.cancelled = 0


async def _wait_started(count: int) -> None:
    while Nap.started < count:
        await trio.sleep(0.01)


async def test_exit_lets_running_tasks_finish(open_test_engine: EngineFactory, db: Db) -> None:
    """Tasks in flight when the block exits complete within shutdown_timeout."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Nap], shutdown_timeout=10.0) as engine:
            await engine.enqueue_many([Nap(seconds=0.3) for _ in range(3)])
            await _wait_started(3)
            exit_started = trio.current_time()
        drained_in = trio.current_time() - exit_started
        assert await db.statuses() == {"completed": 3}
    assert (Nap.finished, Nap.cancelled) == (3, 0)
    assert drained_in < 5.0


async def test_tasks_past_the_deadline_are_cancelled_and_handed_back(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """After shutdown_timeout, handlers are cancelled and their tasks are pending again with
    the interrupted attempt not counted; no row stays running."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Nap], shutdown_timeout=0.5) as engine:
            records = await engine.enqueue_many([Nap(seconds=60) for _ in range(2)])
            await _wait_started(2)
            exit_started = trio.current_time()
        took = trio.current_time() - exit_started
        rows = await db.fetch(
            "SELECT status, attempts, claimed_by, scheduled_at <= now() AS due "
            "FROM iron_defer.tasks WHERE id = ANY($1)",
            [r.id for r in records],
        )
    assert Nap.cancelled == 2
    assert [(r["status"], r["attempts"], r["claimed_by"], r["due"]) for r in rows] == [
        ("pending", 0, None, True)
    ] * 2
    assert 0.5 <= took < 3.0


async def test_stop_drains_while_the_block_keeps_running(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """engine.stop() starts the shutdown; wait_stopped() returns once it is complete."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Nap], shutdown_timeout=5.0) as engine:
            await engine.enqueue(Nap(seconds=0.2))
            await _wait_started(1)
            engine.stop()
            assert engine.state is iron_defer.EngineState.DRAINING
            # producers keep working while draining
            late = await engine.enqueue(Nap(seconds=0))
            with trio.move_on_after(10):
                while engine.statistics().in_flight:
                    await trio.sleep(0.01)
        assert (
            await db.fetchval("SELECT status FROM iron_defer.tasks WHERE id = $1", late.id)
            == "pending"
        )
    assert Nap.finished == 1


async def test_cancelled_surrounding_scope_still_hands_tasks_back(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Cancelling the scope around open_engine stops at once, yet leaves nothing running."""
    with trio.fail_after(20):
        with trio.CancelScope() as scope:
            async with open_test_engine(tasks=[Nap], shutdown_timeout=30.0) as engine:
                await engine.enqueue_many([Nap(seconds=60) for _ in range(3)])
                await _wait_started(3)
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert await db.statuses() == {"pending": 3}
        assert await db.fetchval("SELECT max(attempts) FROM iron_defer.tasks") == 0


async def test_exception_in_the_block_comes_out_unwrapped_after_a_graceful_drain(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """A user's exception propagates as itself, not in an exception group, and running
    tasks were still given their chance to finish."""

    async def block_that_fails() -> None:
        async with open_test_engine(tasks=[Nap]) as engine:
            await engine.enqueue(Nap(seconds=0.2))
            await _wait_started(1)
            raise KeyError("boom")

    with trio.fail_after(20):
        with pytest.raises(KeyError, match="boom") as raised:
            await block_that_fails()
        assert raised.type is KeyError
        assert await db.statuses() == {"completed": 1}


async def test_unreachable_database_at_startup_raises_store_unavailable() -> None:
    """Nothing listens on the port: the error is StoreUnavailable, not a group."""
    settings = fast_settings("postgresql://postgres@127.0.0.1:1/none")
    with trio.fail_after(20), pytest.raises(iron_defer.StoreUnavailable):
        async with iron_defer.open_engine(settings, tasks=[Nap]):
            pytest.fail("the block must not run")


class _BrokenSweeperStore(PostgresStore):
    """A real store whose sweeper query hits a bug."""

    async def recover_expired(
        self, *, limit: int, worker_id: UUID | None = None, now: datetime | None = None
    ) -> list[RecoveredTask]:
        raise RuntimeError("bug in the sweeper")


async def test_internal_failure_surfaces_as_engine_crashed(database_url: str) -> None:
    """A bug in a background service ends the block with EngineCrashed, cause chained."""
    settings = fast_settings(database_url)
    with trio.fail_after(20):
        async with open_postgres_store(settings.database) as real:
            broken = _BrokenSweeperStore(real._bridge, real._pool, settings.database, "unused")
            with pytest.raises(iron_defer.EngineCrashed) as crashed:
                async with iron_defer.open_engine(
                    settings, tasks=[Nap], store=broken, rng=random.Random(0)
                ):
                    await trio.sleep_forever()
    assert isinstance(crashed.value.__cause__, RuntimeError)
    assert "bug in the sweeper" in str(crashed.value)


async def test_outcomes_are_written_before_the_engine_exits(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Many tasks finishing right at shutdown all have their outcome persisted."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Nap], queues={"default": 50}) as engine:
            await engine.enqueue_many([Nap(seconds=0.1) for _ in range(200)])
            await _wait_started(50)
        statuses = await db.statuses()
    # whatever was claimed finished and was written; the rest was never claimed
    assert set(statuses) <= {"completed", "pending"}
    assert statuses["completed"] == Nap.finished >= 50
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks WHERE attempts > 1") == 0


def _ids(records: Sequence[iron_defer.TaskRecord]) -> list[UUID]:
    return [r.id for r in records]
