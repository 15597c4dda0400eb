"""Cancelling a running task, in the store: the request is recorded and announced, and every
way the running attempt can end (outcome, shutdown release, lease recovery) ends it cancelled,
unless it completed first.

Rules: ``cancel`` of a running task sets ``cancel_requested_at`` once (a repeat keeps the first
time), leaves the lease and status alone and sends the task id on ``iron_defer_cancel`` at
commit, every time. The heartbeat reports the request. An attempt's end other than completion
becomes ``cancelled`` with the attempt counted; completion stays completion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import uuid4

import pytest
import trio

from iron_defer_trio.config import DatabaseSettings
from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.store import open_postgres_store
from iron_defer_trio.store.protocol import HeldLease, NotificationKind, Outcome, OutcomeKind
from tests.store._support import db_now, new_task, row, seconds

if TYPE_CHECKING:
    from tests.pg import Db

AUDITED = {"audit_log": True}


async def test_cancel_of_a_running_task_records_and_announces_the_request(
    database_url: str, db: Db
) -> None:
    """The task stays running under its lease with cancel_requested_at set; its id arrives on
    the cancel channel; a repeat keeps the first time and announces again."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task()])
            [claimed] = await store.claim("default", worker, kinds=["job"], limit=1, lease=60)
            async with store.listen() as listener:
                first = await store.cancel(record.id)
                announced = await listener.notifications.receive()
                again = await store.cancel(record.id)
                announced_again = await listener.notifications.receive()
        stored = await row(db, record.id)
    assert first.cancelled is None and first.current is None
    assert first.requested is not None
    assert first.requested.status is TaskStatus.RUNNING
    assert first.requested.claimed_by == worker
    assert first.requested.cancel_requested_at is not None
    assert announced.kind is NotificationKind.CANCEL
    assert announced.value == str(record.id)
    assert announced_again == announced
    assert again.requested is not None
    assert again.requested.cancel_requested_at == first.requested.cancel_requested_at
    assert stored["status"] == "running"
    assert stored["claimed_by"] == worker
    assert stored["claimed_until"] == claimed.claimed_until
    assert stored["cancel_requested_at"] == first.requested.cancel_requested_at
    assert stored["finished_at"] is None


async def test_cancel_of_a_pending_task_announces_nothing(database_url: str, db: Db) -> None:
    """Only running tasks are announced: a pending one is cancelled on the spot (the marker
    wake-up proves nothing came before it)."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task(scheduled_at=None)])
            async with store.listen() as listener:
                result = await store.cancel(record.id)
                await store.enqueue([new_task("marker")])
                first = await listener.notifications.receive()
    assert result.cancelled is not None and result.requested is None
    assert result.cancelled.cancel_requested_at is None
    assert (first.kind, first.value) == (NotificationKind.WAKE, "marker")


async def test_heartbeat_reports_the_cancel_request(database_url: str, db: Db) -> None:
    """The heartbeat renews the lease of a cancel-requested task and says so, for the engine
    that missed the notification."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            asked, other = await store.enqueue([new_task(), new_task()])
            await store.claim("default", worker, kinds=["job"], limit=2, lease=60)
            await store.cancel(asked.id)
            beat = await store.heartbeat(worker, [asked.id, other.id], lease=60)
    assert beat == {asked.id: HeldLease(1, cancel_requested=True), other.id: HeldLease(1)}


@pytest.mark.parametrize(
    "kind", [OutcomeKind.RETRY, OutcomeKind.FAILED, OutcomeKind.RELEASED, OutcomeKind.SUSPENDED]
)
async def test_any_end_but_completion_of_a_cancel_requested_attempt_cancels_it(
    kind: OutcomeKind, database_url: str, db: Db
) -> None:
    """Retry, final failure, shutdown release and suspension all end the task cancelled, the
    attempt counted, finished now, the handler's error kept, audited as cancel; nothing is
    due again."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url, **AUDITED)) as store:
            [record] = await store.enqueue([new_task(max_attempts=3)])
            await store.claim("default", worker, kinds=["job"], limit=1, lease=60)
            await store.cancel(record.id)
            error = None if kind in (OutcomeKind.RELEASED, OutcomeKind.SUSPENDED) else "boom"
            [result] = await store.finish(worker, [Outcome(record.id, 1, kind, error=error)])
            trail = await store.audit_log(record.id, after=None, limit=10)
        stored = await row(db, record.id)
    assert result.status is TaskStatus.CANCELLED
    assert stored["status"] == "cancelled"
    assert stored["attempts"] == 1
    assert stored["finished_at"] is not None
    assert stored["claimed_by"] is None and stored["suspended_at"] is None
    assert stored["last_error"] == error
    assert [(e.event, e.from_status, e.to_status) for e in trail] == [
        ("enqueue", None, TaskStatus.PENDING),
        ("claim", TaskStatus.PENDING, TaskStatus.RUNNING),
        ("cancel_request", TaskStatus.RUNNING, TaskStatus.RUNNING),
        ("cancel", TaskStatus.RUNNING, TaskStatus.CANCELLED),
    ]
    assert trail[-1].worker_id == worker


async def test_completion_wins_over_a_cancel_request(database_url: str, db: Db) -> None:
    """A handler that returned before it saw the request completed: the task is completed and
    keeps the request's time as a record."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task()])
            await store.claim("default", worker, kinds=["job"], limit=1, lease=60)
            await store.cancel(record.id)
            [result] = await store.finish(worker, [Outcome(record.id, 1, OutcomeKind.COMPLETED)])
            refused = await store.cancel(record.id)
        stored = await row(db, record.id)
    assert result.status is TaskStatus.COMPLETED
    assert stored["status"] == "completed"
    assert stored["cancel_requested_at"] is not None
    assert refused.current is not None and refused.current.status is TaskStatus.COMPLETED


async def test_the_cancelled_outcome_needs_the_lease(database_url: str, db: Db) -> None:
    """A cancelled outcome is fenced like any other: another worker's write is refused."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task()])
            await store.claim("default", worker, kinds=["job"], limit=1, lease=60)
            await store.cancel(record.id)
            refused = await store.finish(uuid4(), [Outcome(record.id, 1, OutcomeKind.CANCELLED)])
            [applied] = await store.finish(worker, [Outcome(record.id, 1, OutcomeKind.CANCELLED)])
    assert refused == []
    assert applied.status is TaskStatus.CANCELLED


async def test_release_worker_cancels_cancel_requested_tasks(database_url: str, db: Db) -> None:
    """At shutdown a cancel-requested task is cancelled (attempt counted), the others are
    handed back."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url, **AUDITED)) as store:
            asked, other = await store.enqueue([new_task(), new_task()])
            await store.claim("default", worker, kinds=["job"], limit=2, lease=60)
            await store.cancel(asked.id)
            released = await store.release_worker(worker)
            trail = await store.audit_log(asked.id, after=None, limit=10)
        asked_row, other_row = await row(db, asked.id), await row(db, other.id)
    assert released == {asked.id: TaskStatus.CANCELLED, other.id: TaskStatus.PENDING}
    assert (asked_row["status"], asked_row["attempts"]) == ("cancelled", 1)
    assert asked_row["finished_at"] is not None
    assert (other_row["status"], other_row["attempts"]) == ("pending", 0)
    assert trail[-1].event == "cancel" and trail[-1].attempt == 1


async def test_the_sweeper_cancels_an_expired_cancel_requested_task(
    database_url: str, db: Db
) -> None:
    """A cancel-requested task whose engine died is cancelled by lease recovery, never made
    pending again, and audited as cancel by the sweeping worker."""
    worker, sweeper = uuid4(), uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url, **AUDITED)) as store:
            [record] = await store.enqueue([new_task(max_attempts=3, scheduled_at=now)])
            await store.claim("default", worker, kinds=["job"], limit=1, lease=5, now=now)
            await store.cancel(record.id)
            [recovered] = await store.recover_expired(
                limit=10, worker_id=sweeper, now=now + seconds(10)
            )
            claimable = await store.claim(
                "default", uuid4(), kinds=["job"], limit=1, lease=5, now=now + seconds(20)
            )
            trail = await store.audit_log(record.id, after=None, limit=10)
        stored = await row(db, record.id)
    assert recovered.status is TaskStatus.CANCELLED
    assert claimable == []
    assert (stored["status"], stored["attempts"]) == ("cancelled", 1)
    assert stored["finished_at"] == now + seconds(10)
    assert (trail[-1].event, trail[-1].worker_id) == ("cancel", sweeper)
    assert trail[-1].metadata is not None
    assert trail[-1].metadata["previous_worker"] == str(worker)


async def test_a_pending_task_cannot_carry_a_cancel_request(database_url: str, db: Db) -> None:
    """The schema refuses a cancel request on a task that is not running or finished."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task()])
        with pytest.raises(Exception, match="tasks_cancel_request_status"):
            await db.execute(
                "UPDATE iron_defer.tasks SET cancel_requested_at = now() WHERE id = $1", record.id
            )
