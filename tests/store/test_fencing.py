"""Heartbeats, attempt outcomes and hand-backs, each fenced on the lease holder.

Rules: a change to a running task is applied only while the row is still running under the
same worker at the same attempt (``WHERE status = 'running' AND claimed_by = ... AND attempts
= ...``); a refused change is simply absent from the result and leaves the row byte-for-byte
unchanged. Time is driven by ``now=`` (never a sleep); every test has an absolute
``trio.fail_after`` and checks the rows through ``db``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import uuid4

import pytest
import trio

from iron_defer_trio.config import DatabaseSettings
from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.errors import StoreError
from iron_defer_trio.store import open_postgres_store
from iron_defer_trio.store.protocol import FinishResult, HeldLease, Outcome, OutcomeKind
from tests.store._support import db_now, new_task, row, seconds

if TYPE_CHECKING:
    from tests.pg import Db


# --- heartbeat ----------------------------------------------------------------------------


async def test_heartbeat_extends_only_the_leases_this_worker_holds(
    database_url: str, db: Db
) -> None:
    """The listed tasks running under the worker get claimed_until = now + lease and are
    returned with their attempt; another worker's, pending, finished and unknown ids are
    ignored."""
    me, other = uuid4(), uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            mine_a, mine_b, theirs, done, waiting = await store.enqueue(
                [new_task(kind=k, scheduled_at=now) for k in ("a", "b", "c", "d", "e")]
            )
            await store.claim("default", me, kinds=["a", "b", "d"], limit=3, lease=10, now=now)
            await store.claim("default", other, kinds=["c"], limit=1, lease=10, now=now)
            await store.finish(me, [Outcome(done.id, 1, OutcomeKind.COMPLETED)], now=now)
            before = {t.id: await row(db, t.id) for t in (theirs, done, waiting)}
            later = now + seconds(8)
            renewed = await store.heartbeat(
                me,
                [mine_a.id, mine_b.id, theirs.id, done.id, waiting.id, uuid4()],
                lease=10,
                now=later,
            )
            after = {t.id: await row(db, t.id) for t in (theirs, done, waiting)}
            mine = [await row(db, t.id) for t in (mine_a, mine_b)]
    assert renewed == {mine_a.id: HeldLease(1), mine_b.id: HeldLease(1)}
    for stored in mine:
        assert stored["claimed_until"] == later + seconds(10)
        assert stored["status"] == "running"
        assert stored["claimed_by"] == me
        assert stored["attempts"] == 1
    assert after == before


async def test_heartbeat_leaves_unlisted_tasks_alone(database_url: str, db: Db) -> None:
    """Only the ids passed are renewed, even among the worker's own tasks."""
    me = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            listed, unlisted = await store.enqueue(
                [new_task(scheduled_at=now), new_task(scheduled_at=now)]
            )
            await store.claim("default", me, kinds=["job"], limit=2, lease=5, now=now)
            renewed = await store.heartbeat(me, [listed.id], lease=60, now=now)
            assert await store.heartbeat(me, [], lease=60, now=now) == {}
        listed_row, unlisted_row = await row(db, listed.id), await row(db, unlisted.id)
    assert renewed == {listed.id: HeldLease(1)}
    assert listed_row["claimed_until"] == now + seconds(60)
    assert unlisted_row["claimed_until"] == now + seconds(5)


async def test_heartbeat_without_now_uses_the_database_clock(database_url: str, db: Db) -> None:
    """now=None renews from the database's now()."""
    me = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task()])
            await store.claim("default", me, kinds=["job"], limit=1, lease=1)
            before = await db_now(db)
            assert await store.heartbeat(me, [task.id], lease=100) == {task.id: HeldLease(1)}
            after = await db_now(db)
        stored = await row(db, task.id)
    assert before + seconds(100) <= stored["claimed_until"] <= after + seconds(100)


async def test_heartbeat_reports_the_attempt_the_row_is_at(database_url: str, db: Db) -> None:
    """The returned attempt is the row's, so a worker still holding attempt 1 locally sees
    that the task has moved on to attempt 2."""
    me = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task(scheduled_at=now)])
            await store.claim("default", me, kinds=["job"], limit=1, lease=60, now=now)
            first = await store.heartbeat(me, [task.id], lease=60, now=now)
            await store.finish(me, [Outcome(task.id, 1, OutcomeKind.RETRY, error="x")], now=now)
            await store.claim("default", me, kinds=["job"], limit=1, lease=60, now=now)
            second = await store.heartbeat(me, [task.id], lease=60, now=now)
        stored = await row(db, task.id)
    assert first == {task.id: HeldLease(1)}
    assert second == {task.id: HeldLease(2)}
    assert stored["attempts"] == 2


# --- finish: the four outcomes ------------------------------------------------------------


async def test_finish_completed_finishes_the_task(database_url: str, db: Db) -> None:
    """COMPLETED: status completed, finished_at = now, lease cleared, attempts kept."""
    me = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task(scheduled_at=now)])
            await store.claim("default", me, kinds=["job"], limit=1, lease=60, now=now)
            done_at = now + seconds(3)
            results = await store.finish(
                me, [Outcome(task.id, 1, OutcomeKind.COMPLETED)], now=done_at
            )
        stored = await row(db, task.id)
    assert results == [FinishResult(task.id, TaskStatus.COMPLETED, now)]
    assert stored["status"] == "completed"
    assert stored["finished_at"] == done_at
    assert stored["updated_at"] == done_at
    assert stored["claimed_by"] is None and stored["claimed_until"] is None
    assert stored["attempts"] == 1
    assert stored["last_error"] is None
    assert stored["started_at"] == now


async def test_finish_retry_makes_the_task_pending_after_the_delay(
    database_url: str, db: Db
) -> None:
    """RETRY: pending again at now + delay with last_error set and the attempt kept; it is
    not claimable before that instant and is claimable at it."""
    me = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task(max_attempts=3, scheduled_at=now)])
            await store.claim("default", me, kinds=["job"], limit=1, lease=60, now=now)
            due = now + seconds(42.5)
            results = await store.finish(
                me,
                [Outcome(task.id, 1, OutcomeKind.RETRY, error="boom", delay=42.5)],
                now=now,
            )
            stored = await row(db, task.id)
            early = await store.claim(
                "default", me, kinds=["job"], limit=1, lease=60, now=due - seconds(1)
            )
            on_time = await store.claim("default", me, kinds=["job"], limit=1, lease=60, now=due)
    assert results == [FinishResult(task.id, TaskStatus.PENDING, due)]
    assert stored["status"] == "pending"
    assert stored["scheduled_at"] == due
    assert stored["last_error"] == "boom"
    assert stored["attempts"] == 1
    assert stored["claimed_by"] is None and stored["claimed_until"] is None
    assert stored["finished_at"] is None
    assert early == []
    assert [r.attempts for r in on_time] == [2]


async def test_finish_failed_fails_the_task_for_good(database_url: str, db: Db) -> None:
    """FAILED: status failed with finished_at = now and last_error, even with attempts left."""
    me = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task(max_attempts=5, scheduled_at=now)])
            await store.claim("default", me, kinds=["job"], limit=1, lease=60, now=now)
            results = await store.finish(
                me, [Outcome(task.id, 1, OutcomeKind.FAILED, error="fatal")], now=now
            )
            again = await store.claim("default", me, kinds=["job"], limit=1, lease=60)
        stored = await row(db, task.id)
    assert results == [FinishResult(task.id, TaskStatus.FAILED, now)]
    assert stored["status"] == "failed"
    assert stored["finished_at"] == now
    assert stored["last_error"] == "fatal"
    assert stored["attempts"] == 1
    assert stored["claimed_by"] is None
    assert again == []


async def test_finish_released_gives_the_task_back_without_counting_the_attempt(
    database_url: str, db: Db
) -> None:
    """RELEASED: pending at once (scheduled_at = now) with attempts - 1; last_error kept."""
    me = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task(max_attempts=2, scheduled_at=now)])
            await store.claim("default", me, kinds=["job"], limit=1, lease=60, now=now)
            await store.finish(
                me, [Outcome(task.id, 1, OutcomeKind.RETRY, error="first", delay=0)], now=now
            )
            await store.claim("default", me, kinds=["job"], limit=1, lease=60, now=now)
            released_at = now + seconds(7)
            results = await store.finish(
                me, [Outcome(task.id, 2, OutcomeKind.RELEASED)], now=released_at
            )
        stored = await row(db, task.id)
    assert results == [FinishResult(task.id, TaskStatus.PENDING, released_at)]
    assert stored["status"] == "pending"
    assert stored["attempts"] == 1
    assert stored["scheduled_at"] == released_at
    assert stored["last_error"] == "first"
    assert stored["claimed_by"] is None and stored["finished_at"] is None


async def test_finish_of_nothing_returns_an_empty_list(database_url: str, db: Db) -> None:
    """An empty batch applies nothing."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            assert await store.finish(uuid4(), []) == []


# --- finish: fencing ----------------------------------------------------------------------


async def test_finish_is_refused_for_another_workers_task(database_url: str, db: Db) -> None:
    """A worker cannot finish a task leased to someone else; the row stays as it was."""
    holder, intruder = uuid4(), uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task()])
            await store.claim("default", holder, kinds=["job"], limit=1, lease=60)
            before = await row(db, task.id)
            results = await store.finish(intruder, [Outcome(task.id, 1, OutcomeKind.COMPLETED)])
        after = await row(db, task.id)
    assert results == []
    assert after == before


async def test_finish_is_refused_for_a_stale_attempt(database_url: str, db: Db) -> None:
    """An outcome for attempt 1 is refused once the same worker runs attempt 2."""
    me = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task(scheduled_at=now)])
            await store.claim("default", me, kinds=["job"], limit=1, lease=60, now=now)
            await store.finish(me, [Outcome(task.id, 1, OutcomeKind.RETRY, error="x")], now=now)
            await store.claim("default", me, kinds=["job"], limit=1, lease=60, now=now)
            before = await row(db, task.id)
            stale = await store.finish(me, [Outcome(task.id, 1, OutcomeKind.COMPLETED)])
            future = await store.finish(me, [Outcome(task.id, 3, OutcomeKind.COMPLETED)])
        after = await row(db, task.id)
    assert stale == future == []
    assert after == before
    assert after["attempts"] == 2


@pytest.mark.parametrize(
    "first", [OutcomeKind.COMPLETED, OutcomeKind.FAILED, OutcomeKind.RETRY, OutcomeKind.RELEASED]
)
async def test_finish_is_refused_once_the_task_is_no_longer_running(
    first: OutcomeKind, database_url: str, db: Db
) -> None:
    """A second outcome for the same attempt (same worker) is refused, whatever the first."""
    me = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task(max_attempts=3)])
            await store.claim("default", me, kinds=["job"], limit=1, lease=60)
            applied = await store.finish(me, [Outcome(task.id, 1, first, error="e", delay=60)])
            before = await row(db, task.id)
            second = [
                await store.finish(me, [Outcome(task.id, 1, kind, error="again")])
                for kind in OutcomeKind
            ]
        after = await row(db, task.id)
    assert len(applied) == 1
    assert second == [[]] * len(OutcomeKind)
    assert after == before


async def test_finish_batch_applies_the_fenced_outcomes_and_refuses_the_rest(
    database_url: str, db: Db
) -> None:
    """One call mixing valid, foreign, stale and unknown outcomes returns exactly the
    applied ones and changes exactly their rows."""
    me, other = uuid4(), uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            ok_done, ok_retry, ok_fail, foreign, stale, pending = await store.enqueue(
                [new_task(kind=k, scheduled_at=now) for k in "abcdef"]
            )
            await store.claim("default", me, kinds=list("abce"), limit=4, lease=60, now=now)
            await store.claim("default", other, kinds=["d"], limit=1, lease=60, now=now)
            refused_ids = (foreign.id, stale.id, pending.id)
            before = {task_id: await row(db, task_id) for task_id in refused_ids}
            results = await store.finish(
                me,
                [
                    Outcome(ok_done.id, 1, OutcomeKind.COMPLETED),
                    Outcome(foreign.id, 1, OutcomeKind.COMPLETED),
                    Outcome(ok_retry.id, 1, OutcomeKind.RETRY, error="later", delay=5),
                    Outcome(stale.id, 7, OutcomeKind.FAILED, error="stale"),
                    Outcome(ok_fail.id, 1, OutcomeKind.FAILED, error="nope"),
                    Outcome(pending.id, 0, OutcomeKind.COMPLETED),
                    Outcome(uuid4(), 1, OutcomeKind.COMPLETED),
                ],
                now=now,
            )
            after = {task_id: await row(db, task_id) for task_id in refused_ids}
        statuses = {
            r["id"]: r["status"] for r in await db.fetch("SELECT id, status FROM iron_defer.tasks")
        }
    assert sorted(results, key=lambda r: r.task_id) == sorted(
        [
            FinishResult(ok_done.id, TaskStatus.COMPLETED, now),
            FinishResult(ok_retry.id, TaskStatus.PENDING, now + seconds(5)),
            FinishResult(ok_fail.id, TaskStatus.FAILED, now),
        ],
        key=lambda r: r.task_id,
    )
    assert after == before
    assert statuses == {
        ok_done.id: "completed",
        ok_retry.id: "pending",
        ok_fail.id: "failed",
        foreign.id: "running",
        stale.id: "running",
        pending.id: "pending",
    }


async def test_finish_retry_on_the_last_attempt_is_refused_by_the_schema(
    database_url: str, db: Db
) -> None:
    """Pins current behaviour: a RETRY for a task with no attempt left breaks the
    pending-has-an-attempt-left CHECK, so the whole batch (its valid outcomes too) fails with
    StoreError 23514 and nothing is applied. The engine must send FAILED instead."""
    me = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            last, fine = await store.enqueue([new_task(max_attempts=1), new_task()])
            await store.claim("default", me, kinds=["job"], limit=2, lease=60)
            before = {t.id: await row(db, t.id) for t in (last, fine)}
            with pytest.raises(StoreError) as caught:
                await store.finish(
                    me,
                    [
                        Outcome(fine.id, 1, OutcomeKind.COMPLETED),
                        Outcome(last.id, 1, OutcomeKind.RETRY, error="x"),
                    ],
                )
            after = {t.id: await row(db, t.id) for t in (last, fine)}
    assert caught.value.sqlstate == "23514"
    assert "tasks_pending_has_attempt_left" in str(caught.value)
    assert after == before


# --- release_worker -----------------------------------------------------------------------


async def test_release_worker_hands_back_only_that_workers_running_tasks(
    database_url: str, db: Db
) -> None:
    """Every task running under the worker is pending again now with attempts - 1; other
    workers' tasks and the worker's finished tasks are untouched."""
    me, other = uuid4(), uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            mine1, mine2, done, theirs, idle = await store.enqueue(
                [new_task(kind=k) for k in "abcde"]
            )
            await store.claim("default", me, kinds=["a", "b", "c"], limit=3, lease=60)
            await store.claim("default", other, kinds=["d"], limit=1, lease=60)
            await store.finish(me, [Outcome(done.id, 1, OutcomeKind.COMPLETED)])
            untouched = (done.id, theirs.id, idle.id)
            before = {task_id: await row(db, task_id) for task_id in untouched}
            start = await db_now(db)
            released = await store.release_worker(me)
            end = await db_now(db)
            again = await store.release_worker(me)
            after = {task_id: await row(db, task_id) for task_id in untouched}
            mine = [await row(db, task_id) for task_id in (mine1.id, mine2.id)]
    assert released == {mine1.id: TaskStatus.PENDING, mine2.id: TaskStatus.PENDING}
    assert again == {}
    for stored in mine:
        assert stored["status"] == "pending"
        assert stored["attempts"] == 0
        assert stored["claimed_by"] is None and stored["claimed_until"] is None
        assert start <= stored["scheduled_at"] <= end
    assert after == before


async def test_release_worker_with_nothing_running_releases_nothing(
    database_url: str, db: Db
) -> None:
    """A worker that holds no lease gets an empty list and no row changes."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task()])
            before = await row(db, task.id)
            assert await store.release_worker(uuid4()) == {}
        assert await row(db, task.id) == before
