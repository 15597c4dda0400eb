"""Execution: tasks run once, in claim order, within the concurrency limit, across engines.

Rules: every test has an absolute ``trio.fail_after``; waiting is on conditions, never on a
sleep; outcomes are checked on the rows in the database.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

import pydantic
import pytest
import structlog
import trio
import trio.lowlevel

import iron_defer_trio as iron_defer

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db


class Record(iron_defer.Task):
    """Appends its label to a shared list, so tests see the execution order."""

    KIND: ClassVar[str] = "record"
    seen: ClassVar[list[str]] = []
    label: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Record.seen.append(self.label)


class Slow(iron_defer.Task):
    """Sleeps a little while counting how many run at once."""

    KIND: ClassVar[str] = "slow"
    active: ClassVar[Counter[str]] = Counter()
    peak: ClassVar[Counter[str]] = Counter()
    seconds: float = 0.05

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Slow.active[ctx.queue] += 1
        Slow.peak[ctx.queue] = max(Slow.peak[ctx.queue], Slow.active[ctx.queue])
        try:
            await trio.sleep(self.seconds)
        finally:
            Slow.active[ctx.queue] -= 1


class Count(iron_defer.Task):
    """Counts executions per number, across every engine of the test."""

    KIND: ClassVar[str] = "count"
    runs: ClassVar[Counter[int]] = Counter()
    n: int

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Count.runs[self.n] += 1
        await trio.lowlevel.checkpoint()


class Inspect(iron_defer.Task):
    """Keeps the context it was given."""

    KIND: ClassVar[str] = "inspect"
    contexts: ClassVar[list[iron_defer.TaskContext]] = []
    data: dict[str, object]

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Inspect.contexts.append(ctx)


class Defaults(iron_defer.Task):
    """Carries per-class defaults."""

    KIND: ClassVar[str] = "defaults"
    QUEUE: ClassVar[str | None] = "reports"
    PRIORITY: ClassVar[int] = 7
    MAX_ATTEMPTS: ClassVar[int | None] = 9

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


@pytest.fixture(autouse=True)
def _reset_class_state() -> None:
    Record.seen.clear()
    Slow.active.clear()
    Slow.peak.clear()
    Count.runs.clear()
    Inspect.contexts.clear()


async def test_handler_receives_payload_and_context(open_test_engine: EngineFactory) -> None:
    """The handler gets its fields back from JSON and a context describing the attempt."""
    payload = {"nested": {"list": [1, 2.5, "three", None, True]}, "text": "héllo ✓"}
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Inspect], queues={"q1": 2}) as engine:
            record = await engine.enqueue("q1", Inspect(data=payload), max_attempts=4)
            await engine.wait_until_idle()
    (ctx,) = Inspect.contexts
    assert ctx.task_id == record.id
    assert (ctx.queue, ctx.kind, ctx.attempt, ctx.max_attempts) == ("q1", "inspect", 1, 4)
    assert ctx.worker_id == engine.worker_id
    assert record.payload == {"data": payload}


async def test_claim_order_is_priority_then_scheduled_at_then_id(
    open_test_engine: EngineFactory,
) -> None:
    """With one slot, due tasks run by priority (high first), then earliest scheduled_at,
    then enqueue order; future tasks wait."""
    now = datetime.now(UTC)
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Record], run_workers=False) as producer:
            await producer.enqueue(Record(label="low"), priority=-1)
            await producer.enqueue(Record(label="p0-second"))
            await producer.enqueue(Record(label="p0-third"))
            await producer.enqueue(Record(label="high-later"), priority=5)
            await producer.enqueue(
                Record(label="high-earlier"), priority=5, scheduled_at=now - timedelta(minutes=1)
            )
            await producer.enqueue(
                Record(label="p0-first"), scheduled_at=now - timedelta(seconds=30)
            )
            await producer.enqueue(
                Record(label="future"), priority=100, scheduled_at=now + timedelta(hours=1)
            )
        async with open_test_engine(tasks=[Record], queues={"default": 1}) as worker:
            await worker.wait_until_idle()
    assert Record.seen == [
        "high-earlier",
        "high-later",
        "p0-first",
        "p0-second",
        "p0-third",
        "low",
    ]


async def test_queue_concurrency_is_reached_and_never_exceeded(
    open_test_engine: EngineFactory,
) -> None:
    """Under a backlog each queue runs exactly as many tasks at once as its limit."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Slow], queues={"narrow": 3, "wide": 8}) as engine:
            await engine.enqueue_many("narrow", [Slow(seconds=0.05) for _ in range(40)])
            await engine.enqueue_many("wide", [Slow(seconds=0.05) for _ in range(80)])
            await engine.wait_until_idle()
            stats = {q.queue: q for q in engine.statistics().queues}
    assert Slow.peak == Counter({"narrow": 3, "wide": 8})
    assert stats["narrow"].completed == 40
    assert stats["wide"].completed == 80


async def test_thousand_tasks_on_two_queues_and_three_engines_run_exactly_once(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """1,000 tasks spread over 2 queues, drained by 3 engines at once: each runs once."""
    queues = {"alpha": 6, "beta": 6}
    with trio.fail_after(90):
        async with (
            open_test_engine(tasks=[Count], queues=queues, seed=1) as e1,
            open_test_engine(tasks=[Count], queues=queues, seed=2) as e2,
            open_test_engine(tasks=[Count], queues=queues, seed=3) as e3,
        ):
            await e1.enqueue_many("alpha", [Count(n=i) for i in range(500)])
            await e2.enqueue_many("beta", [Count(n=i) for i in range(500, 1000)])
            for engine in (e1, e2, e3):
                await engine.wait_until_idle()
            per_engine = [
                sum(q.completed for q in engine.statistics().queues) for engine in (e1, e2, e3)
            ]
        assert await db.statuses() == {"completed": 1000}
        assert await db.fetchval("SELECT max(attempts) FROM iron_defer.tasks") == 1
    assert sorted(Count.runs) == list(range(1000))
    assert set(Count.runs.values()) == {1}
    assert sum(per_engine) == 1000
    assert all(n > 0 for n in per_engine), per_engine  # every engine took part


async def test_class_defaults_apply_and_enqueue_arguments_override_them(
    open_test_engine: EngineFactory,
) -> None:
    """QUEUE, PRIORITY and MAX_ATTEMPTS on the class are used unless enqueue says otherwise."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Defaults], run_workers=False) as engine:
            plain = await engine.enqueue(Defaults())
            explicit = await engine.enqueue("other", Defaults(), priority=-3, max_attempts=1)
    assert (plain.queue, plain.priority, plain.max_attempts) == ("reports", 7, 9)
    assert (explicit.queue, explicit.priority, explicit.max_attempts) == ("other", -3, 1)


async def test_a_mixed_batch_gives_each_task_the_defaults_of_its_own_class(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """enqueue_many validates each class's options once per call: tasks of different classes,
    interleaved, still get their own class's queue, priority and attempts, and the call's
    options override every class alike."""
    with trio.fail_after(15):
        async with open_test_engine(
            tasks=[Defaults, Record], run_workers=False, max_attempts=4
        ) as engine:
            batch = [Defaults(), Record(label="a"), Defaults(), Record(label="b")]
            records = await engine.enqueue_many(batch)
            overridden = await engine.enqueue_many(
                [Record(label="c"), Defaults()], priority=-2, max_attempts=2
            )
    assert [(r.kind, r.queue, r.priority, r.max_attempts) for r in records] == [
        ("defaults", "reports", 7, 9),
        ("record", "default", 0, 4),
        ("defaults", "reports", 7, 9),
        ("record", "default", 0, 4),
    ]
    assert [(r.kind, r.queue, r.priority, r.max_attempts) for r in overridden] == [
        ("record", "default", -2, 2),
        ("defaults", "reports", -2, 2),
    ]
    rows = await db.fetch(
        "SELECT kind, queue, priority, max_attempts, payload FROM iron_defer.tasks ORDER BY id"
    )
    assert [(r["kind"], r["queue"], r["priority"], r["max_attempts"]) for r in rows] == [
        (r.kind, r.queue, r.priority, r.max_attempts) for r in [*records, *overridden]
    ]
    assert [r["payload"] for r in rows if r["kind"] == "record"] == [
        '{"label": "a"}',
        '{"label": "b"}',
        '{"label": "c"}',
    ]


async def test_engine_default_max_attempts_comes_from_settings(
    open_test_engine: EngineFactory,
) -> None:
    """A class without MAX_ATTEMPTS gets worker.max_attempts."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Record], run_workers=False, max_attempts=6) as engine:
            record = await engine.enqueue(Record(label="x"))
    assert record.max_attempts == 6


async def test_bad_enqueue_arguments_raise_and_write_nothing(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Invalid input raises a precise error before anything reaches the database."""

    class Unregistered(iron_defer.Task):
        KIND: ClassVar[str] = "unregistered"

        async def execute(self, ctx: iron_defer.TaskContext) -> None:
            return None

    with trio.fail_after(15):
        async with open_test_engine(tasks=[Record], run_workers=False) as engine:
            with pytest.raises(iron_defer.UnknownTaskKind, match="unregistered"):
                await engine.enqueue(Unregistered())
            with pytest.raises(iron_defer.InvalidTaskError, match="queue name"):
                await engine.enqueue("bad queue!", Record(label="x"))
            with pytest.raises(iron_defer.InvalidTaskError, match="priority"):
                await engine.enqueue(Record(label="x"), priority=40000)
            with pytest.raises(iron_defer.InvalidTaskError, match="max_attempts"):
                await engine.enqueue(Record(label="x"), max_attempts=0)
            with pytest.raises(iron_defer.InvalidTaskError, match="timezone"):
                await engine.enqueue(Record(label="x"), scheduled_at=datetime(2030, 1, 1))
            with pytest.raises(iron_defer.InvalidTaskError, match="payload"):
                await engine.enqueue(Record(label="x" * (1024 * 1024 + 1)))
            with pytest.raises(iron_defer.UnknownTaskKind):
                # one bad task in a batch: nothing of the batch is written
                await engine.enqueue_many([Record(label="ok"), Unregistered()])
        assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0


async def test_producer_only_engine_runs_nothing(open_test_engine: EngineFactory, db: Db) -> None:
    """run_workers=False enqueues and reads, but never claims."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Record], run_workers=False) as engine:
            record = await engine.enqueue(Record(label="waits"))
            assert engine.queues == ()
            assert engine.statistics().queues == ()
            with pytest.raises(iron_defer.ConfigError):
                await engine.wait_until_idle()
        row = await db.fetchrow("SELECT status FROM iron_defer.tasks WHERE id = $1", record.id)
    assert row["status"] == "pending"
    assert Record.seen == []


async def test_kinds_an_engine_does_not_know_stay_pending_for_one_that_does(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """An engine only claims kinds it registered; another engine picks the rest up."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Record, Count], run_workers=False) as producer:
            other = await producer.enqueue(Count(n=1))
            mine = await producer.enqueue(Record(label="mine"))
        async with open_test_engine(tasks=[Record]) as records_only:
            await records_only.wait_until_idle()
            assert (await records_only.get(mine.id)).status == "completed"
            assert (await records_only.get(other.id)).status == "pending"
        async with open_test_engine(tasks=[Count]) as counts:
            await counts.wait_until_idle()
        assert await db.statuses() == {"completed": 2}
    assert Count.runs == Counter({1: 1})


async def test_payload_that_no_longer_fits_its_class_fails_at_once(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """A stored payload that does not validate fails the task without retrying."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Record]) as engine:
            record = await engine.enqueue(Record(label="fine"), scheduled_at=_far_future())
            await db.execute(
                'UPDATE iron_defer.tasks SET payload = \'{"label": 42, "extra": 1}\', '
                "scheduled_at = now() WHERE id = $1",
                record.id,
            )
            await engine.wait_until_idle()
            stored = await engine.get(record.id)
    assert stored.status == "failed"
    assert stored.attempts == 1
    assert stored.last_error is not None
    assert "payload does not match Record" in stored.last_error
    assert "label" in stored.last_error and "extra" in stored.last_error
    assert Record.seen == []


async def test_get_list_cancel_and_queue_stats(open_test_engine: EngineFactory) -> None:
    """The read and cancel API reports what the database holds."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Record], run_workers=False) as engine:
            first = await engine.enqueue("a", Record(label="1"))
            second = await engine.enqueue("a", Record(label="2"))
            third = await engine.enqueue("b", Record(label="3"), scheduled_at=_far_future())

            assert (await engine.get(str(first.id))).id == first.id
            with pytest.raises(iron_defer.TaskNotFound):
                await engine.get("00000000-0000-0000-0000-000000000000")

            newest_first = await engine.list()
            assert [r.id for r in newest_first] == [third.id, second.id, first.id]
            assert [r.id for r in await engine.list(queue="a")] == [second.id, first.id]
            page = await engine.list(queue="a", limit=1)
            assert [r.id for r in await engine.list(queue="a", before=page[-1].id)] == [first.id]
            with pytest.raises(iron_defer.InvalidTaskError):
                await engine.list(status="nope")

            cancelled = await engine.cancel(second.id)
            assert cancelled.status == "cancelled" and cancelled.finished_at is not None
            with pytest.raises(iron_defer.InvalidTransition, match="cancelled") as refused:
                await engine.cancel(second.id)
            assert refused.value.status == "cancelled"
            with pytest.raises(iron_defer.TaskNotFound):
                await engine.cancel("00000000-0000-0000-0000-000000000000")
            assert [r.id for r in await engine.list(status="cancelled")] == [second.id]

            stats = {s.queue: s for s in await engine.queue_stats()}
    assert (stats["a"].pending, stats["a"].cancelled, stats["a"].scheduled) == (1, 1, 0)
    assert (stats["b"].pending, stats["b"].scheduled) == (1, 1)
    assert stats["a"].oldest_pending_age is not None and stats["a"].oldest_pending_age >= 0
    assert stats["b"].oldest_pending_age is None


async def test_engine_refuses_calls_after_it_stopped(open_test_engine: EngineFactory) -> None:
    """Using an engine after its block exited raises EngineClosed."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Record]) as engine:
            pass
        assert engine.state is iron_defer.EngineState.STOPPED
        with pytest.raises(iron_defer.EngineClosed):
            await engine.enqueue(Record(label="late"))
        with pytest.raises(iron_defer.EngineClosed):
            await engine.get("00000000-0000-0000-0000-000000000000")


def _far_future() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)


class Explosive(iron_defer.Task):
    """Its class raises something other than a validation error while being built."""

    KIND: ClassVar[str] = "explosive"
    armed: bool = False

    @pydantic.model_validator(mode="after")
    def _explode(self) -> Explosive:
        if self.armed and Explosive.ready_to_blow:
            raise RuntimeError("exploded while loading the payload")
        return self

    ready_to_blow: ClassVar[bool] = False

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


async def test_an_unexpected_error_around_one_task_fails_it_not_the_engine(
    open_test_engine: EngineFactory,
) -> None:
    """A failure outside the handler's own code (here: loading the payload raises a
    RuntimeError) fails that task with an internal error; the engine keeps running."""
    Explosive.ready_to_blow = False
    with trio.fail_after(15), structlog.testing.capture_logs() as logs:
        async with open_test_engine(tasks=[Explosive, Record]) as engine:
            bomb = await engine.enqueue(Explosive(armed=True))
            Explosive.ready_to_blow = True
            await engine.wait_until_idle()
            after = await engine.enqueue(Record(label="still working"))
            await engine.wait_until_idle()
            failed = await engine.get(bomb.id)
            fine = await engine.get(after.id)
    assert failed.status == "failed"
    assert failed.last_error == "internal error while running the task: RuntimeError"
    assert fine.status == "completed"
    assert any(e["event"] == "task_internal_error" for e in logs)
