"""Lease expiry: recover_expired moves tasks whose lease ran out back to pending, or to
failed when they were on their last attempt.

Rules: a lease is expired when ``claimed_until < now`` (strictly); recovery is fenced by row
locks (``FOR UPDATE SKIP LOCKED``) so any number of sweepers may run at once and each task
is recovered exactly once; the old holder can no longer heartbeat or finish it. Time moves
only through ``now=`` (never a sleep); every test has an absolute ``trio.fail_after`` and
checks the rows through ``db``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import trio

from iron_defer_trio.config import DatabaseSettings
from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.store import open_postgres_store
from iron_defer_trio.store.protocol import Outcome, OutcomeKind, RecoveredTask
from tests.store._support import db_now, new_task, row, seconds

if TYPE_CHECKING:
    from datetime import datetime

    from iron_defer_trio.store import PostgresStore
    from tests.pg import Db


async def test_expired_task_with_attempts_left_is_pending_again(database_url: str, db: Db) -> None:
    """Past claimed_until, a task with attempts left is pending at once (scheduled_at =
    now), its lease cleared, last_error naming the lease and the worker, attempts kept."""
    worker = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task("q", "k", max_attempts=3, scheduled_at=now)])
            await store.claim("q", worker, kinds=["k"], limit=1, lease=30, now=now)
            sweep_at = now + seconds(31)
            recovered = await store.recover_expired(limit=10, now=sweep_at)
        stored = await row(db, task.id)
    assert recovered == [
        RecoveredTask(
            task_id=task.id,
            queue="q",
            kind="k",
            status=TaskStatus.PENDING,
            attempts=1,
            max_attempts=3,
            previous_worker=worker,
        )
    ]
    assert stored["status"] == "pending"
    assert stored["scheduled_at"] == sweep_at
    assert stored["updated_at"] == sweep_at
    assert stored["attempts"] == 1
    assert stored["claimed_by"] is None and stored["claimed_until"] is None
    assert stored["finished_at"] is None
    assert "lease expired" in stored["last_error"]
    assert "attempt 1 of 3" in stored["last_error"]
    assert str(worker) in stored["last_error"]


async def test_expired_task_on_its_last_attempt_fails(database_url: str, db: Db) -> None:
    """Past claimed_until on the last attempt, the task is failed with finished_at = now and
    keeps its scheduled_at."""
    worker = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task(max_attempts=1, scheduled_at=now)])
            await store.claim("default", worker, kinds=["job"], limit=1, lease=30, now=now)
            sweep_at = now + seconds(60)
            [recovered] = await store.recover_expired(limit=10, now=sweep_at)
            again = await store.claim("default", uuid4(), kinds=["job"], limit=1, lease=30)
        stored = await row(db, task.id)
    assert recovered.status is TaskStatus.FAILED
    assert (recovered.attempts, recovered.max_attempts) == (1, 1)
    assert recovered.previous_worker == worker
    assert stored["status"] == "failed"
    assert stored["finished_at"] == sweep_at
    assert stored["scheduled_at"] == now
    assert stored["claimed_by"] is None and stored["claimed_until"] is None
    assert "lease expired during attempt 1 of 1" in stored["last_error"]
    assert again == []


async def test_unexpired_leases_are_left_alone(database_url: str, db: Db) -> None:
    """A lease is valid up to and including claimed_until; running rows before that, and
    rows in other statuses, are not touched."""
    worker = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            short, long, waiting = await store.enqueue(
                [new_task(kind=k, scheduled_at=now) for k in ("short", "long", "wait")]
            )
            await store.claim("default", worker, kinds=["short"], limit=1, lease=10, now=now)
            await store.claim("default", worker, kinds=["long"], limit=1, lease=100, now=now)
            before = {t.id: await row(db, t.id) for t in (short, long, waiting)}
            early = await store.recover_expired(limit=10, now=now + seconds(5))
            at_expiry = await store.recover_expired(limit=10, now=now + seconds(10))
            unchanged = {t.id: await row(db, t.id) for t in (short, long, waiting)}
            just_after = await store.recover_expired(
                limit=10, now=now + seconds(10) + seconds(0.000001)
            )
        long_row, waiting_row = await row(db, long.id), await row(db, waiting.id)
    assert early == at_expiry == []
    assert unchanged == before
    assert [r.task_id for r in just_after] == [short.id]
    assert long_row == before[long.id]
    assert waiting_row == before[waiting.id]


async def test_recover_expired_without_now_uses_the_database_clock(
    database_url: str, db: Db
) -> None:
    """now=None compares leases with the database's now()."""
    worker = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            old, fresh = await store.enqueue(
                [
                    new_task(kind="old", scheduled_at=now - seconds(120)),
                    new_task(kind="new", scheduled_at=now),
                ]
            )
            # Leased in the past: expired by the real clock. Leased now for an hour: not.
            await store.claim(
                "default", worker, kinds=["old"], limit=1, lease=1, now=now - seconds(60)
            )
            await store.claim("default", worker, kinds=["new"], limit=1, lease=3600)
            recovered = await store.recover_expired(limit=10)
        fresh_row = await row(db, fresh.id)
    assert [r.task_id for r in recovered] == [old.id]
    assert fresh_row["status"] == "running"


async def test_recover_expired_respects_limit_oldest_lease_first(database_url: str, db: Db) -> None:
    """At most ``limit`` tasks per call, the longest-expired first; the rest wait for the
    next call."""
    worker = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            tasks = await store.enqueue(
                [new_task(kind=f"k{i}", scheduled_at=now) for i in range(5)]
            )
            # k4 gets the shortest lease, k0 the longest.
            for i, task in enumerate(tasks):
                await store.claim(
                    "default", worker, kinds=[task.kind], limit=1, lease=50 - 10 * i, now=now
                )
            sweep_at = now + seconds(3600)
            first = await store.recover_expired(limit=2, now=sweep_at)
            second = await store.recover_expired(limit=2, now=sweep_at)
            third = await store.recover_expired(limit=2, now=sweep_at)
            fourth = await store.recover_expired(limit=2, now=sweep_at)
        statuses = await db.statuses()
    assert sorted(r.kind for r in first) == ["k3", "k4"]
    assert sorted(r.kind for r in second) == ["k1", "k2"]
    assert [r.kind for r in third] == ["k0"]
    assert fourth == []
    assert statuses == {"pending": 5}


async def test_old_holder_cannot_heartbeat_or_finish_a_recovered_task(
    database_url: str, db: Db
) -> None:
    """After recovery and a new claim by another worker, the old worker's heartbeat renews
    nothing and its outcome is refused; the new holder's outcome is applied."""
    old, new = uuid4(), uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [task] = await store.enqueue([new_task(max_attempts=3, scheduled_at=now)])
            await store.claim("default", old, kinds=["job"], limit=1, lease=10, now=now)
            later = now + seconds(20)
            await store.recover_expired(limit=10, now=later)
            [reclaimed] = await store.claim(
                "default", new, kinds=["job"], limit=1, lease=10, now=later
            )
            stale_beat = await store.heartbeat(old, [task.id], lease=10, now=later)
            before = await row(db, task.id)
            stale_finish = await store.finish(old, [Outcome(task.id, 1, OutcomeKind.COMPLETED)])
            stale_retry = await store.finish(
                old,
                [Outcome(task.id, 2, OutcomeKind.COMPLETED)],  # right attempt, wrong worker
            )
            after = await row(db, task.id)
            applied = await store.finish(new, [Outcome(task.id, 2, OutcomeKind.COMPLETED)])
        final = await row(db, task.id)
    assert reclaimed.attempts == 2
    assert stale_beat == {}
    assert stale_finish == stale_retry == []
    assert after == before
    assert [r.task_id for r in applied] == [task.id]
    assert final["status"] == "completed"
    assert final["attempts"] == 2


async def _sweep_until_empty(
    store: PostgresStore, now: datetime, got: list[RecoveredTask], limit: int
) -> None:
    while True:
        batch = await store.recover_expired(limit=limit, now=now)
        if not batch:
            return
        got.extend(batch)
        await trio.lowlevel.checkpoint()


async def test_two_concurrent_sweepers_recover_each_task_exactly_once(
    database_url: str, db: Db
) -> None:
    """Two sweepers with their own pools racing over 150 expired leases recover every task
    once between them, with its real previous worker, and count no attempt twice."""
    workers = [uuid4() for _ in range(3)]
    got1: list[RecoveredTask] = []
    got2: list[RecoveredTask] = []
    with trio.fail_after(20):
        now = await db_now(db)
        async with (
            open_postgres_store(DatabaseSettings(url=database_url, max_connections=2)) as s1,
            open_postgres_store(DatabaseSettings(url=database_url, max_connections=2)) as s2,
        ):
            tasks = await s1.enqueue([new_task(scheduled_at=now) for _ in range(150)])
            holder: dict[UUID, UUID] = {}
            for worker in workers:
                for claimed in await s1.claim(
                    "default", worker, kinds=["job"], limit=50, lease=5, now=now
                ):
                    holder[claimed.id] = worker
            sweep_at = now + seconds(60)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_sweep_until_empty, s1, sweep_at, got1, 6)
                nursery.start_soon(_sweep_until_empty, s2, sweep_at, got2, 6)
        rows = await db.fetch("SELECT status, attempts, claimed_by FROM iron_defer.tasks")
    ids1, ids2 = [r.task_id for r in got1], [r.task_id for r in got2]
    assert len(ids1) + len(ids2) == 150
    assert set(ids1) | set(ids2) == {t.id for t in tasks}
    assert not set(ids1) & set(ids2)
    for recovered in got1 + got2:
        assert recovered.previous_worker == holder[recovered.task_id]
        assert recovered.status is TaskStatus.PENDING
    assert all(
        r["status"] == "pending" and r["attempts"] == 1 and r["claimed_by"] is None for r in rows
    )
