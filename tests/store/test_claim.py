"""Claiming: which tasks a worker gets, what the claim writes, and that concurrent claimers
never share a task.

Rules: claims pick due pending tasks of one queue whose kind is listed, by priority
descending, then scheduled_at, then id, at most ``limit``; each claimed row becomes running
under the worker with ``claimed_until = now + lease`` and one more attempt. Time is driven by
the ``now=`` parameter (never a sleep); every test has an absolute ``trio.fail_after`` and
checks the rows through ``db``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import trio

from iron_defer_trio.config import DatabaseSettings
from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.store import open_postgres_store
from iron_defer_trio.store.protocol import Outcome, OutcomeKind
from tests.store._support import db_now, new_task, row, seconds

if TYPE_CHECKING:
    from datetime import datetime

    from iron_defer_trio.store import PostgresStore
    from tests.pg import Db


async def test_claim_picks_by_priority_then_scheduled_at_then_id(database_url: str, db: Db) -> None:
    """One-at-a-time claims come out highest priority first, then earliest scheduled_at, then
    lowest id (insertion order) among equals."""
    worker = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        t1, t2, t3 = now - seconds(30), now - seconds(20), now - seconds(10)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            records = await store.enqueue(
                [
                    new_task(kind="a", priority=0, scheduled_at=t1),
                    new_task(kind="b", priority=5, scheduled_at=t3),
                    new_task(kind="c", priority=5, scheduled_at=t2),
                    new_task(kind="d", priority=-3, scheduled_at=t1),
                    new_task(kind="e", priority=5, scheduled_at=t2),
                    new_task(kind="f", priority=0, scheduled_at=t1),
                    new_task(kind="g", priority=32767, scheduled_at=t3),
                    new_task(kind="h", priority=-32768, scheduled_at=t1),
                ]
            )
            kinds = [r.kind for r in records]
            order = []
            for _ in records:
                [claimed] = await store.claim(
                    "default", worker, kinds=kinds, limit=1, lease=60, now=now
                )
                order.append(claimed.kind)
            assert await store.claim("default", worker, kinds=kinds, limit=1, lease=60) == []
    assert order == ["g", "c", "e", "b", "a", "f", "d", "h"]


async def test_claim_takes_at_most_limit_and_the_first_ones_in_claim_order(
    database_url: str, db: Db
) -> None:
    """limit bounds a batch; the batch is the head of the claim order; the rest stay pending."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            records = await store.enqueue([new_task(priority=i % 4) for i in range(12)])
            claimed = await store.claim("default", worker, kinds=["job"], limit=5, lease=60)
        statuses = await db.statuses()
        running = {
            r["id"]
            for r in await db.fetch("SELECT id FROM iron_defer.tasks WHERE status = 'running'")
        }
    expected = sorted(records, key=lambda r: (-r.priority, r.scheduled_at, r.id))[:5]
    assert {r.id for r in claimed} == {r.id for r in expected} == running
    assert statuses == {"running": 5, "pending": 7}


async def test_claim_sets_the_lease_and_counts_the_attempt(database_url: str, db: Db) -> None:
    """A claimed row is running under the worker, leased until now + lease, started now,
    with attempts + 1; the returned record matches the row."""
    worker = uuid4()
    with trio.fail_after(10):
        now = await db_now(db) + seconds(5)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task(max_attempts=2)])
            [claimed] = await store.claim(
                "default", worker, kinds=["job"], limit=1, lease=12.5, now=now
            )
        stored = await row(db, record.id)
    assert claimed.id == record.id
    assert claimed.status is TaskStatus.RUNNING
    assert claimed.claimed_by == worker
    assert claimed.claimed_until == now + seconds(12.5)
    assert claimed.started_at == now
    assert claimed.updated_at == now
    assert claimed.attempts == 1
    assert claimed.finished_at is None
    assert stored["status"] == "running"
    assert stored["claimed_by"] == worker
    assert stored["claimed_until"] == now + seconds(12.5)
    assert stored["started_at"] == now
    assert stored["attempts"] == 1
    assert stored["scheduled_at"] == record.scheduled_at  # claiming does not reschedule


async def test_claim_without_now_uses_the_database_clock(database_url: str, db: Db) -> None:
    """now=None leases from the database's now()."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            await store.enqueue([new_task()])
            before = await db_now(db)
            [claimed] = await store.claim("default", worker, kinds=["job"], limit=1, lease=30)
            after = await db_now(db)
    assert claimed.started_at is not None and claimed.claimed_until is not None
    assert before <= claimed.started_at <= after
    assert claimed.claimed_until == claimed.started_at + seconds(30)


async def test_claim_skips_tasks_scheduled_after_now(database_url: str, db: Db) -> None:
    """A task is claimable once now >= scheduled_at, and not a microsecond before."""
    worker = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        at = now + seconds(3600)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [due] = await store.enqueue([new_task(scheduled_at=now)])
            [later] = await store.enqueue([new_task(scheduled_at=at)])

            async def claim(when: datetime) -> list[UUID]:
                found = await store.claim(
                    "default", worker, kinds=["job"], limit=10, lease=60, now=when
                )
                return [r.id for r in found]

            first = await claim(now)
            too_early = await claim(at - seconds(0.000001))
            on_time = await claim(at)
    assert first == [due.id]
    assert too_early == []
    assert on_time == [later.id]


async def test_claim_only_takes_listed_kinds_of_its_queue(database_url: str, db: Db) -> None:
    """Kinds not listed and other queues are left pending; no kinds means nothing."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            a_x, a_y, a_z, b_x = await store.enqueue(
                [new_task("a", "x"), new_task("a", "y"), new_task("a", "z"), new_task("b", "x")]
            )
            nothing = await store.claim("a", worker, kinds=[], limit=10, lease=60)
            claimed = await store.claim("a", worker, kinds=["x", "z"], limit=10, lease=60)
            other_queue = await store.claim("c", worker, kinds=["x"], limit=10, lease=60)
        statuses = {
            r["id"]: r["status"] for r in await db.fetch("SELECT id, status FROM iron_defer.tasks")
        }
    assert nothing == []
    assert other_queue == []
    assert {r.id for r in claimed} == {a_x.id, a_z.id}
    assert statuses == {
        a_x.id: "running",
        a_y.id: "pending",
        a_z.id: "running",
        b_x.id: "pending",
    }


async def test_claim_never_takes_running_or_finished_tasks(database_url: str, db: Db) -> None:
    """Only pending rows are claimable: a second claim finds nothing while the first holds
    the task, nor after it completed."""
    first, second = uuid4(), uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task()])
            [claimed] = await store.claim("default", first, kinds=["job"], limit=5, lease=60)
            while_running = await store.claim("default", second, kinds=["job"], limit=5, lease=60)
            await store.finish(first, [Outcome(record.id, 1, OutcomeKind.COMPLETED)])
            after_done = await store.claim("default", second, kinds=["job"], limit=5, lease=60)
        stored = await row(db, record.id)
    assert claimed.id == record.id
    assert while_running == after_done == []
    assert stored["status"] == "completed"
    assert stored["attempts"] == 1


async def test_each_claim_of_a_retried_task_counts_one_more_attempt(
    database_url: str, db: Db
) -> None:
    """attempts grows by one per claim, across retries."""
    worker = uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task(max_attempts=3, scheduled_at=now)])
            attempts = []
            for _ in range(3):
                [claimed] = await store.claim(
                    "default", worker, kinds=["job"], limit=1, lease=60, now=now
                )
                attempts.append(claimed.attempts)
                if claimed.attempts < 3:
                    await store.finish(
                        worker,
                        [Outcome(record.id, claimed.attempts, OutcomeKind.RETRY, error="again")],
                        now=now,
                    )
        stored = await row(db, record.id)
    assert attempts == [1, 2, 3]
    assert stored["attempts"] == 3
    assert stored["status"] == "running"


async def _claim_until_empty(
    store: PostgresStore, worker: UUID, got: list[UUID], limit: int
) -> None:
    while True:
        batch = await store.claim("default", worker, kinds=["job"], limit=limit, lease=60)
        if not batch:
            return
        got.extend(r.id for r in batch)
        await trio.lowlevel.checkpoint()


async def test_two_concurrent_claimers_on_separate_stores_never_share_a_task(
    database_url: str, db: Db
) -> None:
    """Two workers with their own pools claim 200 tasks concurrently: no task twice, none
    left behind, every task claimed exactly once in the database too."""
    w1, w2 = uuid4(), uuid4()
    got1: list[UUID] = []
    got2: list[UUID] = []
    with trio.fail_after(20):
        async with (
            open_postgres_store(DatabaseSettings(url=database_url, max_connections=2)) as s1,
            open_postgres_store(DatabaseSettings(url=database_url, max_connections=2)) as s2,
        ):
            records = await s1.enqueue([new_task() for _ in range(200)])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_claim_until_empty, s1, w1, got1, 7)
                nursery.start_soon(_claim_until_empty, s2, w2, got2, 7)
        rows = await db.fetch("SELECT id, status, attempts, claimed_by FROM iron_defer.tasks")
    assert got1 and got2  # both really took part
    assert len(got1) + len(got2) == 200
    assert set(got1) | set(got2) == {r.id for r in records}
    assert not set(got1) & set(got2)
    assert all(r["status"] == "running" and r["attempts"] == 1 for r in rows)
    owners = Counter(r["claimed_by"] for r in rows)
    assert owners == Counter({w1: len(got1), w2: len(got2)})


async def test_ten_concurrent_claimers_never_share_a_task(database_url: str, db: Db) -> None:
    """Ten workers racing over 200 tasks in one pool get disjoint sets that cover them all."""
    workers = [uuid4() for _ in range(10)]
    got: dict[UUID, list[UUID]] = {w: [] for w in workers}
    with trio.fail_after(20):
        async with open_postgres_store(
            DatabaseSettings(url=database_url, max_connections=10)
        ) as store:
            records = await store.enqueue([new_task() for _ in range(200)])
            async with trio.open_nursery() as nursery:
                for worker in workers:
                    nursery.start_soon(_claim_until_empty, store, worker, got[worker], 3)
        rows = await db.fetch("SELECT id, attempts, claimed_by FROM iron_defer.tasks")
    claimed = [task_id for ids in got.values() for task_id in ids]
    assert len(claimed) == len(set(claimed)) == 200
    assert set(claimed) == {r.id for r in records}
    for r in rows:
        assert r["attempts"] == 1
        assert r["id"] in got[r["claimed_by"]]
