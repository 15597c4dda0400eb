"""Operators' retries and retention.

Rules: ``engine.retry`` makes a failed or cancelled task pending and due now with a new
attempt budget (attempts 0), keeping last_error and the checkpoint, and its handler really runs
again; any other status is InvalidTransition and an unknown id TaskNotFound. ``retry_many``
counts without ``expect`` and changes nothing; with ``expect`` it retries exactly the matching
tasks, or, when another number matches, raises CountChanged and changes nothing. The sweeper
deletes finished tasks older than their status's retention, batch by batch, and nothing else;
audit rows outlive them and their idempotency keys are free again. Time moves through
``run_once(now=...)``; every test has an absolute ``trio.fail_after``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import uuid4

import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.engine._health import DatabaseHealth
from iron_defer_trio.engine._sweeper import Sweeper
from iron_defer_trio.observability import default_logger
from iron_defer_trio.observability.metrics import metrics_for
from iron_defer_trio.store import open_postgres_store
from tests.conftest import FAST_WORKER

if TYPE_CHECKING:
    from collections.abc import Mapping
    from uuid import UUID

    from iron_defer_trio.store.protocol import TaskStore
    from tests.conftest import EngineFactory
    from tests.pg import Db


class Flaky(iron_defer.Task):
    """Fails while ``failing`` is set; saves a checkpoint on its first run and records what
    each run found."""

    KIND: ClassVar[str] = "flaky"
    failing: ClassVar[bool] = True
    runs: ClassVar[list[tuple[int, Any]]] = []

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Flaky.runs.append((ctx.attempt, ctx.last_checkpoint))
        if ctx.last_checkpoint is None:
            await ctx.checkpoint({"step": 1})
        if Flaky.failing:
            raise RuntimeError("still broken")


class Noop(iron_defer.Task):
    KIND: ClassVar[str] = "noop"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


@pytest.fixture(autouse=True)
def _reset() -> None:
    Flaky.failing = True
    Flaky.runs = []


async def _wait_for(engine: iron_defer.Engine, task_id: UUID, status: TaskStatus) -> Any:
    while (record := await engine.get(task_id)).status is not status:
        await trio.sleep(0.02)
    return record


# --- retry ----------------------------------------------------------------------------------


async def test_retry_runs_a_failed_task_again_with_a_new_attempt_budget(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """A task that used up its attempts is pending again with attempts 0 and its last error
    and checkpoint kept; the handler runs again (resuming from the checkpoint) and the task
    completes on its first new attempt."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Flaky]) as engine:
            task = await engine.enqueue(Flaky(), max_attempts=2)
            failed = await _wait_for(engine, task.id, TaskStatus.FAILED)
            assert failed.attempts == 2
            assert len(Flaky.runs) == 2

            Flaky.failing = False
            retried = await engine.retry(task.id)
            assert retried.status is TaskStatus.PENDING
            assert retried.attempts == 0
            assert retried.max_attempts == 2
            assert retried.finished_at is None
            assert retried.last_error is not None and "still broken" in retried.last_error
            assert retried.checkpoint == {"step": 1}

            done = await _wait_for(engine, task.id, TaskStatus.COMPLETED)
    assert done.attempts == 1
    assert Flaky.runs[-1] == (1, {"step": 1})
    assert len(Flaky.runs) == 3
    assert await db.fetchval("SELECT status FROM iron_defer.tasks WHERE id = $1", task.id) == (
        "completed"
    )


async def test_retry_runs_a_cancelled_task(open_test_engine: EngineFactory) -> None:
    """A task cancelled before it ran is pending and due now after a retry (a future
    scheduled_at is replaced), with its cancel cleared, and then it runs."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Noop]) as engine:
            later = datetime.now(UTC) + timedelta(hours=1)
            task = await engine.enqueue(Noop(), scheduled_at=later)
            cancelled = await engine.cancel(task.id)
            assert cancelled.status is TaskStatus.CANCELLED
            retried = await engine.retry(task.id)
            assert retried.status is TaskStatus.PENDING
            assert retried.cancel_requested_at is None
            assert retried.scheduled_at < task.scheduled_at
            done = await _wait_for(engine, task.id, TaskStatus.COMPLETED)
    assert done.attempts == 1


async def test_retry_of_an_active_or_completed_task_is_a_conflict(
    open_test_engine: EngineFactory,
) -> None:
    """Pending, running and completed tasks cannot be retried (InvalidTransition names the
    status); an unknown id is TaskNotFound."""

    class Holder(iron_defer.Task):
        KIND: ClassVar[str] = "holder"

        async def execute(self, ctx: iron_defer.TaskContext) -> None:
            await trio.sleep_forever()

    with trio.fail_after(30):
        async with open_test_engine(tasks=[Noop, Holder]) as engine:
            done = await engine.enqueue(Noop())
            await _wait_for(engine, done.id, TaskStatus.COMPLETED)
            running = await engine.enqueue(Holder())
            await _wait_for(engine, running.id, TaskStatus.RUNNING)
            pending = await engine.enqueue(
                Noop(), scheduled_at=datetime.now(UTC) + timedelta(hours=1)
            )
            for task, status in (
                (pending, "pending"),
                (running, "running"),
                (done, "completed"),
            ):
                with pytest.raises(iron_defer.InvalidTransition) as caught:
                    await engine.retry(task.id)
                assert caught.value.status == status
            with pytest.raises(iron_defer.TaskNotFound):
                await engine.retry(uuid4())
            await engine.cancel(running.id)


async def test_retry_is_audited_as_retry_manual(database_url: str) -> None:
    """With the audit log on, the retry writes a retry_manual entry (failed -> pending,
    attempt 0, the previous attempts as metadata) in the same statement."""
    settings = iron_defer.Settings.build(
        database={"url": database_url, "audit_log": True}, worker=FAST_WORKER
    )
    with trio.fail_after(30):
        async with iron_defer.open_engine(settings, tasks=[Flaky], migrate=False) as engine:
            task = await engine.enqueue(Flaky(), max_attempts=1)
            await _wait_for(engine, task.id, TaskStatus.FAILED)
            await engine.retry(task.id)
            entries = await engine.audit_log(task.id)
    manual = [entry for entry in entries if entry.event == "retry_manual"]
    assert len(manual) == 1
    assert manual[0].from_status is TaskStatus.FAILED
    assert manual[0].to_status is TaskStatus.PENDING
    assert manual[0].attempt == 0
    assert manual[0].metadata == {"previous_attempts": 1}


# --- retry_many -----------------------------------------------------------------------------


async def _finished(
    db: Db, count: int, status: str, *, queue: str = "q", kind: str = "noop"
) -> None:
    """``count`` tasks that finished with ``status`` an hour ago."""
    await db.add_finished(count, status, queue=queue, kind=kind)


async def _statuses(db: Db, queue: str = "q") -> dict[tuple[str, str], int]:
    rows = await db.fetch(
        "SELECT kind, status, count(*) AS n FROM iron_defer.tasks WHERE queue = $1"
        " GROUP BY kind, status",
        queue,
    )
    return {(r["kind"], r["status"]): r["n"] for r in rows}


async def test_bulk_retry_counts_then_retries_exactly_the_confirmed_tasks(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Without expect nothing changes and the matching tasks are counted (by queue, status
    and kind); with the confirmed count exactly those become pending with attempts 0."""
    await _finished(db, 5, "failed")
    await _finished(db, 2, "failed", kind="other")
    await _finished(db, 3, "cancelled")
    await _finished(db, 4, "failed", queue="elsewhere")
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Noop], run_workers=False) as engine:
            counted = await engine.retry_many(queue="q", status="failed", kind="noop")
            assert counted == iron_defer.BulkRetry(matched=5, more=False, retried=0)
            assert await _statuses(db) == {
                ("noop", "failed"): 5,
                ("other", "failed"): 2,
                ("noop", "cancelled"): 3,
            }
            done = await engine.retry_many(queue="q", status="failed", kind="noop", expect=5)
            cancelled = await engine.retry_many(queue="q", status=TaskStatus.CANCELLED)
            assert cancelled.matched == 3
            await engine.retry_many(queue="q", status=TaskStatus.CANCELLED, expect=3)
    assert done == iron_defer.BulkRetry(matched=5, more=False, retried=5)
    assert await _statuses(db) == {("noop", "pending"): 8, ("other", "failed"): 2}
    assert await _statuses(db, "elsewhere") == {("noop", "failed"): 4}
    attempts = await db.fetch(
        "SELECT DISTINCT attempts, finished_at IS NULL AS open, last_error"
        " FROM iron_defer.tasks WHERE status = 'pending'"
    )
    assert [(r["attempts"], r["open"], r["last_error"]) for r in attempts] == [(0, True, "boom")]


async def test_bulk_retry_changes_nothing_when_the_count_changed(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """A confirmed count that no longer matches (a task failed meanwhile, or one was retried
    alone) raises CountChanged with both numbers, and no task changes."""
    await _finished(db, 4, "failed")
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Noop], run_workers=False) as engine:
            counted = await engine.retry_many(queue="q")
            assert counted.matched == 4
            await _finished(db, 1, "failed")  # another failure arrives before the confirmation
            with pytest.raises(iron_defer.CountChanged) as caught:
                await engine.retry_many(queue="q", expect=counted.matched)
            assert (caught.value.expected, caught.value.matched) == (4, 5)
            assert await _statuses(db) == {("noop", "failed"): 5}

            one = (await engine.list(queue="q", status="failed", limit=1))[0]
            await engine.retry(one.id)
            with pytest.raises(iron_defer.CountChanged):
                await engine.retry_many(queue="q", expect=5)
    assert await _statuses(db) == {("noop", "failed"): 4, ("noop", "pending"): 1}


async def test_two_confirmations_of_one_count_retry_the_tasks_once(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Two operators confirming the same count at the same time: one retries the tasks, the
    other gets CountChanged (the rows were locked, then no longer failed) and changes
    nothing; every task is retried exactly once."""
    await _finished(db, 50, "failed")
    outcomes: list[str] = []

    async def confirm(engine: iron_defer.Engine) -> None:
        try:
            done = await engine.retry_many(queue="q", expect=50)
        except iron_defer.CountChanged as exc:
            outcomes.append(f"changed {exc.matched}")
        else:
            outcomes.append(f"retried {done.retried}")

    with trio.fail_after(30):
        async with (
            open_test_engine(tasks=[Noop], run_workers=False) as first,
            open_test_engine(tasks=[Noop], run_workers=False) as second,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(confirm, first)
            nursery.start_soon(confirm, second)
    assert sorted(outcomes) == ["changed 0", "retried 50"]
    assert await _statuses(db) == {("noop", "pending"): 50}


async def test_bulk_retry_refuses_other_statuses_and_out_of_range_counts(
    open_test_engine: EngineFactory,
) -> None:
    """Only failed and cancelled tasks can be retried in bulk; expect is 0..MAX_BULK_RETRY;
    the queue name must be valid."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Noop], run_workers=False) as engine:
            for status in ("pending", "completed", "nonsense"):
                with pytest.raises(iron_defer.InvalidTaskError, match="failed or cancelled"):
                    await engine.retry_many(queue="q", status=status)
            with pytest.raises(iron_defer.InvalidTaskError, match="expect"):
                await engine.retry_many(queue="q", expect=-1)
            with pytest.raises(iron_defer.InvalidTaskError, match="expect"):
                await engine.retry_many(queue="q", expect=10_001)
            with pytest.raises(iron_defer.InvalidTaskError):
                await engine.retry_many(queue="bad queue")


async def test_bulk_retry_takes_at_most_the_cap_oldest_first(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Beyond MAX_BULK_RETRY matching tasks the count says ``more`` and a retry takes the
    oldest-finished MAX_BULK_RETRY; the rest stay failed for the next call."""
    await _finished(db, 10_000, "failed")
    await db.add_finished(1, "failed", queue="q", kind="newest", ago=timedelta(0))
    with trio.fail_after(60):
        async with open_test_engine(tasks=[Noop], run_workers=False) as engine:
            counted = await engine.retry_many(queue="q")
            assert counted == iron_defer.BulkRetry(matched=10_000, more=True, retried=0)
            done = await engine.retry_many(queue="q", expect=10_000)
    assert done.retried == 10_000
    assert await _statuses(db) == {("noop", "pending"): 10_000, ("newest", "failed"): 1}


# --- retention ------------------------------------------------------------------------------


class CountingStore:
    """The store, counting the retention statements the sweeper runs and their results."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store
        self.deletes: list[tuple[TaskStatus, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def delete_finished(self, **kwargs: Any) -> int:
        deleted = await self._store.delete_finished(**kwargs)
        self.deletes.append((kwargs["status"], deleted))
        return deleted


async def _aged(db: Db, status: str, age: timedelta, count: int = 1) -> None:
    """``count`` tasks of ``status`` that finished ``age`` before the database's now (NULL
    finished_at for active statuses)."""
    await db.execute(
        "INSERT INTO iron_defer.tasks (id, queue, kind, payload, max_attempts, status, attempts,"
        " finished_at, claimed_by, claimed_until)"
        " SELECT gen_random_uuid(), 'q', 'noop', '{}', 3, $1, 1,"
        " CASE WHEN $1 IN ('completed', 'failed', 'cancelled') THEN now() - $2::interval END,"
        " CASE WHEN $1 = 'running' THEN gen_random_uuid() END,"
        " CASE WHEN $1 = 'running' THEN now() + interval '1 day' END"
        " FROM generate_series(1, $3)",
        status,
        age,
        count,
    )


def _sweeper(
    store: Any, retention: Mapping[TaskStatus, float | None], *, batch: int = 1000
) -> Sweeper:
    log = default_logger()
    return Sweeper(
        store,
        DatabaseHealth(log),
        log,
        random.Random(1),
        interval=60,
        metrics=metrics_for(),
        retention=retention,
        retention_batch=batch,
    )


async def test_retention_deletes_only_finished_tasks_past_their_statuss_age(
    database_url: str, db: Db
) -> None:
    """Completed tasks older than 24 h and failed/cancelled ones older than 7 d are deleted;
    younger finished tasks and every active task stay, however old."""
    day = timedelta(days=1)
    await _aged(db, "completed", day + timedelta(minutes=1), 3)
    await _aged(db, "completed", day - timedelta(minutes=1), 2)
    await _aged(db, "failed", 7 * day + timedelta(minutes=1), 4)
    await _aged(db, "failed", 2 * day, 5)
    await _aged(db, "cancelled", 8 * day, 6)
    await _aged(db, "cancelled", 6 * day, 7)
    await _aged(db, "pending", 30 * day, 1)
    await _aged(db, "running", 30 * day, 1)
    ages = {
        TaskStatus.COMPLETED: 86_400.0,
        TaskStatus.FAILED: 7 * 86_400.0,
        TaskStatus.CANCELLED: 7 * 86_400.0,
    }
    with trio.fail_after(30):
        async with open_postgres_store(iron_defer.DatabaseSettings(url=database_url)) as store:
            result = await _sweeper(store, ages).run_once()
    assert result.deleted == {
        TaskStatus.COMPLETED: 3,
        TaskStatus.FAILED: 4,
        TaskStatus.CANCELLED: 6,
    }
    assert await db.statuses() == {
        "completed": 2,
        "failed": 5,
        "cancelled": 7,
        "pending": 1,
        "running": 1,
    }


async def test_retention_deletes_in_batches_of_the_configured_size(
    database_url: str, db: Db
) -> None:
    """With batch_size 3 and 10 due tasks, four statements delete 3, 3, 3 and 1: no statement
    takes more than a batch, and one sweep works through the backlog."""
    await _aged(db, "completed", timedelta(days=2), 10)
    with trio.fail_after(30):
        async with open_postgres_store(iron_defer.DatabaseSettings(url=database_url)) as store:
            counting = CountingStore(store)
            result = await _sweeper(counting, {TaskStatus.COMPLETED: 3600.0}, batch=3).run_once()
    assert counting.deletes == [(TaskStatus.COMPLETED, n) for n in (3, 3, 3, 1)]
    assert result.deleted == {TaskStatus.COMPLETED: 10}
    assert await db.statuses() == {}


async def test_time_travel_decides_what_is_due_and_zero_keeps_tasks_forever(
    database_url: str, db: Db
) -> None:
    """Ages are measured from finished_at to the sweep's ``now``; a status whose retention
    is 0 (or None) is never deleted."""
    await _aged(db, "completed", timedelta(0), 2)
    await _aged(db, "failed", timedelta(0), 2)
    await _aged(db, "cancelled", timedelta(0), 2)
    now: datetime = await db.fetchval("SELECT now()")
    with trio.fail_after(30):
        async with open_postgres_store(iron_defer.DatabaseSettings(url=database_url)) as store:
            sweeper = _sweeper(
                store,
                {TaskStatus.COMPLETED: 60.0, TaskStatus.FAILED: 0, TaskStatus.CANCELLED: None},
            )
            early = await sweeper.run_once(now=now + timedelta(seconds=30))
            late = await sweeper.run_once(now=now + timedelta(days=365))
    assert early.deleted == {}
    assert late.deleted == {TaskStatus.COMPLETED: 2}
    assert await db.statuses() == {"failed": 2, "cancelled": 2}


async def test_deleted_tasks_leave_their_audit_trail_and_free_their_keys(
    database_url: str, db: Db
) -> None:
    """Audit rows outlive the task retention deletes; its idempotency key can be used again
    (a new task is created under it)."""
    settings = iron_defer.Settings.build(
        database={"url": database_url, "audit_log": True},
        worker=FAST_WORKER,
        retention={"completed": 60},
    )
    with trio.fail_after(30):
        async with iron_defer.open_engine(settings, tasks=[Noop], migrate=False) as engine:
            first = await engine.enqueue(Noop(), idempotency_key="nightly")
            await _wait_for(engine, first.id, TaskStatus.COMPLETED)
            now: datetime = await db.fetchval("SELECT now()")
            async with open_postgres_store(settings.database) as store:
                result = await _sweeper(store, {TaskStatus.COMPLETED: 60.0}).run_once(
                    now=now + timedelta(minutes=5)
                )
            assert result.deleted == {TaskStatus.COMPLETED: 1}
            with pytest.raises(iron_defer.TaskNotFound):
                await engine.get(first.id)
            trail = await engine.audit_log(first.id)
            second = await engine.enqueue(Noop(), idempotency_key="nightly")
    assert [entry.event for entry in trail] == ["enqueue", "claim", "complete"]
    assert second.created and second.id != first.id
