"""Failure handling: retries with jittered exponential backoff, TaskError, RetryAfter,
exhaustion. Delays are read from the rows: the outcome write sets
``scheduled_at = now + delay`` and ``updated_at = now`` in one statement, so their difference
is exactly the delay the engine chose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db


class Flaky(iron_defer.Task):
    """Fails until attempt ``succeed_on``."""

    KIND: ClassVar[str] = "flaky"
    attempts_seen: ClassVar[list[int]] = []
    succeed_on: int

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Flaky.attempts_seen.append(ctx.attempt)
        if ctx.attempt < self.succeed_on:
            raise RuntimeError(f"attempt {ctx.attempt} failed")


class Fatal(iron_defer.Task):
    KIND: ClassVar[str] = "fatal"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        raise iron_defer.TaskError("card declined", retry=False)


class Later(iron_defer.Task):
    KIND: ClassVar[str] = "later"
    seconds: float

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        raise iron_defer.RetryAfter(self.seconds)


class Patient(iron_defer.Task):
    """Has its own retry policy."""

    KIND: ClassVar[str] = "patient"
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = iron_defer.RetryPolicy(
        base_delay=3.0, max_delay=3.0, jitter=0.0
    )

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        raise ValueError("not yet")


@pytest.fixture(autouse=True)
def _reset() -> None:
    Flaky.attempts_seen.clear()


async def _delay_of(db: Db, task_id: object) -> float:
    value = await db.fetchval(
        "SELECT extract(epoch FROM scheduled_at - updated_at)::float8 "
        "FROM iron_defer.tasks WHERE id = $1",
        task_id,
    )
    return float(value)


async def _wait_for(db: Db, task_id: object, condition: str) -> None:
    while not await db.fetchval(f"SELECT {condition} FROM iron_defer.tasks WHERE id = $1", task_id):
        await trio.sleep(0.01)


async def test_failed_task_is_retried_then_completes(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Any exception fails the attempt; the next attempt runs after the backoff."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Flaky], base_delay=0.05, max_delay=0.2) as engine:
            record = await engine.enqueue(Flaky(succeed_on=3))
            await _wait_for(db, record.id, "status = 'completed'")
        row = await db.fetchrow("SELECT * FROM iron_defer.tasks WHERE id = $1", record.id)
    assert Flaky.attempts_seen == [1, 2, 3]
    assert row["attempts"] == 3
    assert row["last_error"] == "RuntimeError: attempt 2 failed"


async def test_retry_delays_double_within_the_jitter_bounds(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Delay after attempt n is base * 2**(n-1), spread by at most +-25 %."""
    base = 0.4
    with trio.fail_after(30):
        async with open_test_engine(
            tasks=[Flaky], base_delay=base, max_delay=60.0, seed=None
        ) as engine:
            record = await engine.enqueue(Flaky(succeed_on=99), max_attempts=4)
            delays = []
            for attempt in (1, 2, 3):
                await _wait_for(db, record.id, f"attempts = {attempt} AND status = 'pending'")
                delays.append(await _delay_of(db, record.id))
            await _wait_for(db, record.id, "status = 'failed'")
    for attempt, delay in enumerate(delays, start=1):
        nominal = base * 2 ** (attempt - 1)
        assert nominal * 0.75 - 1e-3 <= delay <= nominal * 1.25 + 1e-3, (attempt, delay)


async def test_retry_delay_never_exceeds_max_delay(open_test_engine: EngineFactory, db: Db) -> None:
    """The cap holds after jitter too."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Flaky], base_delay=0.3, max_delay=0.3) as engine:
            record = await engine.enqueue(Flaky(succeed_on=99), max_attempts=3)
            for attempt in (1, 2):
                await _wait_for(db, record.id, f"attempts = {attempt} AND status = 'pending'")
                assert 0.3 * 0.75 - 1e-3 <= await _delay_of(db, record.id) <= 0.3 + 1e-6


async def test_exhausted_task_fails_with_last_error(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """After max_attempts failures the task is failed, never retried again."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Flaky], base_delay=0.01, max_delay=0.05) as engine:
            record = await engine.enqueue(Flaky(succeed_on=99), max_attempts=2)
            await engine.wait_until_idle(include_scheduled=True)
            stored = await engine.get(record.id)
    assert stored.status == "failed"
    assert stored.attempts == 2
    assert stored.last_error == "RuntimeError: attempt 2 failed"
    assert stored.finished_at is not None
    assert Flaky.attempts_seen == [1, 2]


async def test_task_error_without_retry_fails_at_once(open_test_engine: EngineFactory) -> None:
    """TaskError(retry=False) fails the task whatever attempts remain."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Fatal]) as engine:
            record = await engine.enqueue(Fatal(), max_attempts=5)
            await engine.wait_until_idle(include_scheduled=True)
            stored = await engine.get(record.id)
    assert (stored.status, stored.attempts, stored.last_error) == ("failed", 1, "card declined")


async def test_retry_after_reschedules_after_exactly_that_delay(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """RetryAfter(s) sets the next attempt s seconds out, not the policy's delay."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Later]) as engine:
            record = await engine.enqueue(Later(seconds=42.5), max_attempts=3)
            await _wait_for(db, record.id, "attempts = 1 AND status = 'pending'")
            assert await _delay_of(db, record.id) == pytest.approx(42.5, abs=1e-6)
            stored = await engine.get(record.id)
    assert stored.last_error == "retry requested after 42.5 s"


async def test_retry_after_on_the_last_attempt_fails(open_test_engine: EngineFactory) -> None:
    """RetryAfter counts as an attempt: with none left the task fails."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Later]) as engine:
            record = await engine.enqueue(Later(seconds=1), max_attempts=1)
            await engine.wait_until_idle()
            stored = await engine.get(record.id)
    assert (stored.status, stored.attempts) == ("failed", 1)


async def test_task_class_retry_policy_overrides_the_engine_default(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """RETRY on the class sets the backoff for its tasks."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Patient], base_delay=0.01, max_delay=0.01) as engine:
            record = await engine.enqueue(Patient())
            await _wait_for(db, record.id, "attempts = 1 AND status = 'pending'")
            assert await _delay_of(db, record.id) == pytest.approx(3.0, abs=1e-6)
