"""Suspend and signal: a handler parks its task until someone answers.

Rules: ``ctx.suspend()`` ends the attempt at once (code after it never runs), frees the slot
and leaves the task ``suspended`` without counting the attempt; ``engine.signal`` makes it
pending at once and wakes a worker through NOTIFY (well under a second with a 5 s poll); the
next attempt reads the payload; signalling anything else is InvalidTransition; a suspended
task can be cancelled; the sweeper fails tasks suspended longer than the suspend timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer
from tests.conftest import FAST_WORKER

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db


class Approval(iron_defer.Task):
    """Asks for approval on its first run; acts on the answer after the signal."""

    KIND: ClassVar[str] = "approval"
    asked: ClassVar[int] = 0
    after_suspend: ClassVar[int] = 0
    answers: ClassVar[list[object]] = []
    resumed_at: ClassVar[float | None] = None
    checkpoints: ClassVar[list[object]] = []
    invoice: int

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        if ctx.signal_payload is None:
            Approval.asked += 1
            await ctx.suspend(checkpoint={"asked": True})
            Approval.after_suspend += 1  # type: ignore[unreachable]  # the point: never runs
        Approval.resumed_at = trio.current_time()
        Approval.answers.append(ctx.signal_payload)
        Approval.checkpoints.append(ctx.last_checkpoint)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Approval.asked = Approval.after_suspend = 0
    Approval.answers = []
    Approval.resumed_at = None
    Approval.checkpoints = []


async def _status(engine: iron_defer.Engine, task_id: object) -> iron_defer.TaskStatus:
    return (await engine.get(str(task_id))).status


async def _wait_for(engine: iron_defer.Engine, task_id: object, status: str) -> None:
    while await _status(engine, task_id) != status:
        await trio.sleep(0.01)


async def test_suspend_then_signal_resumes_with_the_payload_within_a_second(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(20):
        async with open_test_engine(
            tasks=[Approval], poll_interval=5.0, queues={"default": 1}
        ) as engine:
            while not engine.statistics().listening:
                await trio.sleep(0.01)
            record = await engine.enqueue(Approval(invoice=42), max_attempts=1)
            await _wait_for(engine, record.id, "suspended")
            parked = await db.fetchrow(
                "SELECT attempts, suspended_at, claimed_by FROM iron_defer.tasks WHERE id = $1",
                record.id,
            )
            assert engine.statistics().queues[0].running == 0  # the slot is free
            signalled = await engine.signal(record.id, {"approved": True, "by": "ada"})
            sent = trio.current_time()
            await _wait_for(engine, record.id, "completed")
            delay = (Approval.resumed_at or 0) - sent
            final = await engine.get(record.id)
    assert signalled.status is iron_defer.TaskStatus.PENDING
    assert (parked["attempts"], parked["claimed_by"]) == (0, None)
    assert parked["suspended_at"] is not None
    assert (Approval.asked, Approval.after_suspend) == (1, 0)
    assert Approval.answers == [{"approved": True, "by": "ada"}]
    assert Approval.checkpoints == [{"asked": True}]
    # max_attempts=1: the suspended attempt was not counted, so the resumed one could run.
    assert (final.attempts, final.max_attempts) == (1, 1)
    assert 0 <= delay < 1.0, delay
    print(f"signal to resumed handler: {delay * 1000:.1f} ms")


async def test_only_a_suspended_task_can_be_signalled(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Approval], run_workers=False) as engine:
            pending = await engine.enqueue(Approval(invoice=1))
            with pytest.raises(iron_defer.InvalidTransition) as caught:
                await engine.signal(pending.id, "yes")
            with pytest.raises(iron_defer.TaskNotFound):
                await engine.signal("00000000-0000-7000-8000-000000000000", "yes")
            with pytest.raises(iron_defer.InvalidTaskError, match="JSON"):
                await engine.signal(pending.id, float("nan"))
    assert caught.value.status == "pending"
    assert await db.fetchval("SELECT signal_payload FROM iron_defer.tasks") is None


async def test_a_suspended_task_can_be_cancelled_and_then_not_signalled(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Approval]) as engine:
            record = await engine.enqueue(Approval(invoice=2))
            await _wait_for(engine, record.id, "suspended")
            cancelled = await engine.cancel(record.id)
            with pytest.raises(iron_defer.InvalidTransition):
                await engine.signal(record.id, "too late")
    assert cancelled.status is iron_defer.TaskStatus.CANCELLED
    assert cancelled.suspended_at is None and cancelled.finished_at is not None
    assert Approval.answers == []


async def test_a_task_suspended_past_the_timeout_fails_with_a_clear_error(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Approval], suspend_timeout=0.5) as engine:
            record = await engine.enqueue(Approval(invoice=3))
            await _wait_for(engine, record.id, "failed")
            final = await engine.get(record.id)
    assert final.last_error is not None
    assert final.last_error.startswith("no signal within the suspend timeout (0.5 s)")
    assert (final.attempts, final.suspended_at) == (0, None)
    assert Approval.answers == []


async def test_suspend_and_signal_are_audited(database_url: str) -> None:
    settings = iron_defer.Settings.build(
        database={"url": database_url, "audit_log": True}, worker=FAST_WORKER
    )
    with trio.fail_after(15):
        async with iron_defer.open_engine(settings, tasks=[Approval], migrate=False) as engine:
            record = await engine.enqueue(Approval(invoice=4))
            await _wait_for(engine, record.id, "suspended")
            await engine.signal(record.id, "yes")
            await _wait_for(engine, record.id, "completed")
            trail = await engine.audit_log(record.id)
    assert [(e.event, e.from_status, e.to_status, e.attempt) for e in trail] == [
        ("enqueue", None, "pending", 0),
        ("claim", "pending", "running", 1),
        ("suspend", "running", "suspended", 1),
        ("signal", "suspended", "pending", 0),
        ("claim", "pending", "running", 1),
        ("complete", "running", "completed", 1),
    ]
