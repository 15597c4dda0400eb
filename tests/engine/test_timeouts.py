"""Attempt timeouts: a class ``ATTEMPT_TIMEOUT`` or an enqueue ``attempt_timeout`` bounds
each attempt; one that runs longer is cancelled and counts as a failed attempt (normal retry
rules), with a last_error that says so."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db


class Slow(iron_defer.Task):
    KIND: ClassVar[str] = "slow"
    ATTEMPT_TIMEOUT: ClassVar[float | None] = 0.2
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = iron_defer.RetryPolicy(
        base_delay=0.01, max_delay=0.01
    )
    cancelled: ClassVar[int] = 0
    seconds: float

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        assert ctx.attempt_timeout is not None
        try:
            await trio.sleep(self.seconds)
        except trio.Cancelled:
            Slow.cancelled += 1
            raise


@pytest.fixture(autouse=True)
def _reset() -> None:
    Slow.cancelled = 0


async def _final(engine: iron_defer.Engine, task_id: object) -> iron_defer.TaskRecord:
    final = {iron_defer.TaskStatus.COMPLETED, iron_defer.TaskStatus.FAILED}
    while (record := await engine.get(str(task_id))).status not in final:
        await trio.sleep(0.02)
    return record


async def test_attempts_past_the_timeout_fail_are_retried_then_the_task_fails(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Slow]) as engine:
            record = await engine.enqueue(Slow(seconds=30), max_attempts=3)
            final = await _final(engine, record.id)
    assert record.attempt_timeout == 0.2
    assert (final.status, final.attempts, final.max_attempts) == ("failed", 3, 3)
    assert final.last_error == "timed out: the attempt ran longer than 0.2 s"
    assert Slow.cancelled == 3


async def test_an_enqueue_timeout_overrides_the_class_default(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Slow]) as engine:
            record = await engine.enqueue(Slow(seconds=0.3), attempt_timeout=5)
            final = await _final(engine, record.id)
    assert record.attempt_timeout == 5.0
    assert (final.status, final.attempts) == ("completed", 1)
    assert await db.fetchval("SELECT attempt_timeout FROM iron_defer.tasks") == 5.0


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan"), 3e6, True])
async def test_invalid_timeouts_are_refused_before_writing(
    open_test_engine: EngineFactory, db: Db, seconds: float
) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Slow], run_workers=False) as engine:
            with pytest.raises(iron_defer.InvalidTaskError, match="timeout"):
                await engine.enqueue(Slow(seconds=1), attempt_timeout=seconds)
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0
