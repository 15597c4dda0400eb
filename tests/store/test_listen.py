"""LISTEN/NOTIFY across the trio-asyncio bridge: new-work notifications arrive in trio.

Rules: every write that makes work due now (enqueue, a retry or release due now, lease
recovery, make_due) sends one NOTIFY per queue, delivered on commit, with the queue name as
payload; ``store.listen()`` yields a listener whose ``notifications`` channel receives them
and ends when its connection is lost.

No test sleeps to let something happen. To show that something did *not* notify, a later
write on a marker queue is awaited: PostgreSQL delivers notifications in commit order, so
everything received before the marker is everything the earlier writes sent. Every test has
an absolute ``trio.fail_after``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import uuid4

import pytest
import trio

from iron_defer_trio.config import DatabaseSettings
from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.errors import StoreUnavailable
from iron_defer_trio.store import open_postgres_store
from iron_defer_trio.store.protocol import NotificationKind, Outcome, OutcomeKind
from tests.store._support import as_stored, db_now, new_task, seconds, wait_for_rows

if TYPE_CHECKING:
    from iron_defer_trio.store import PostgresStore
    from iron_defer_trio.store.protocol import Listener
    from tests.pg import Db

MARKER = "marker"
LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE application_name = 'iron-defer-trio listen' AND datname = current_database()"
)


async def received_until_marker(store: PostgresStore, listener: Listener) -> list[str]:
    """Enqueue a task on the marker queue and return every queue name received before it."""
    await store.enqueue([new_task(MARKER)])
    seen = []
    while (name := await next_wake(listener)) != MARKER:
        seen.append(name)
    return seen


async def next_wake(listener: Listener) -> str:
    """The queue name of the next notification, which must be a wake-up."""
    notification = await listener.notifications.receive()
    assert notification.kind is NotificationKind.WAKE
    return notification.value


async def test_enqueue_notifies_the_listener_with_the_queue_name(database_url: str, db: Db) -> None:
    """A task enqueued on the same store wakes the listener with its queue name."""
    with trio.fail_after(10):
        async with (
            open_postgres_store(DatabaseSettings(url=database_url)) as store,
            store.listen() as listener,
        ):
            await store.enqueue([new_task("emails")])
            assert await next_wake(listener) == "emails"


async def test_enqueue_on_another_store_notifies_the_listener(database_url: str, db: Db) -> None:
    """Notifications cross processes' pools: a second store's enqueue reaches the listener."""
    with trio.fail_after(10):
        async with (
            open_postgres_store(DatabaseSettings(url=database_url)) as listening,
            open_postgres_store(DatabaseSettings(url=database_url)) as producing,
            listening.listen() as listener,
        ):
            await producing.enqueue([new_task("reports")])
            assert await next_wake(listener) == "reports"


async def test_a_batch_sends_one_notification_per_queue(database_url: str, db: Db) -> None:
    """Fifty tasks on two queues in one enqueue arrive as exactly two notifications."""
    with trio.fail_after(10):
        async with (
            open_postgres_store(DatabaseSettings(url=database_url)) as store,
            store.listen() as listener,
        ):
            await store.enqueue([new_task("a" if i % 2 else "b") for i in range(50)])
            seen = await received_until_marker(store, listener)
        count = await db.fetchval("SELECT count(*) FROM iron_defer.tasks WHERE queue <> $1", MARKER)
    assert sorted(seen) == ["a", "b"]
    assert count == 50


async def test_enqueue_of_future_tasks_sends_no_notification(database_url: str, db: Db) -> None:
    """Tasks scheduled later wake nobody; in a mixed batch only the queues with due tasks
    are named."""
    with trio.fail_after(10):
        later = await db_now(db) + seconds(3600)
        async with (
            open_postgres_store(DatabaseSettings(url=database_url)) as store,
            store.listen() as listener,
        ):
            await store.enqueue([new_task("later", scheduled_at=later)])
            await store.enqueue(
                [new_task("later", scheduled_at=later), new_task("now"), new_task("now")]
            )
            seen = await received_until_marker(store, listener)
    assert seen == ["now"]


async def test_notification_is_delivered_only_on_commit(database_url: str, db: Db) -> None:
    """A NOTIFY inside an open transaction stays invisible until COMMIT."""
    with trio.fail_after(10):
        async with (
            open_postgres_store(DatabaseSettings(url=database_url)) as store,
            store.listen() as listener,
        ):
            await db.execute("BEGIN")
            await db.execute("SELECT pg_notify('iron_defer', 'in_tx')")
            before_commit = await received_until_marker(store, listener)
            await db.execute("COMMIT")
            after_commit = await next_wake(listener)
            await db.execute("BEGIN")
            await db.execute("SELECT pg_notify('iron_defer', 'rolled_back')")
            await db.execute("ROLLBACK")
            after_rollback = await received_until_marker(store, listener)
    assert before_commit == []
    assert after_commit == "in_tx"
    assert after_rollback == []


async def test_work_that_becomes_due_again_notifies_its_queue(database_url: str, db: Db) -> None:
    """A retry due now, a release (outcome or release_worker), lease recovery and make_due
    each wake the task's queue; a completion and a retry due later do not."""
    worker = uuid4()
    with trio.fail_after(15):
        now = await db_now(db)
        async with (
            open_postgres_store(DatabaseSettings(url=database_url)) as store,
            store.listen() as listener,
        ):
            queues = ["done", "later", "retry", "released", "shutdown"]
            records = await store.enqueue(
                [new_task(q, scheduled_at=now) for q in queues]
                + [new_task("sweep", scheduled_at=now - seconds(60))]
                + [new_task("future", scheduled_at=now + seconds(3600))]
            )
            task = {r.queue: r.id for r in records}
            assert sorted(await received_until_marker(store, listener)) == sorted(
                [*queues, "sweep"]
            )
            for queue in queues:
                await store.claim(queue, worker, kinds=["job"], limit=1, lease=30)

            quiet = await store.finish(
                worker,
                [
                    Outcome(task["done"], 1, OutcomeKind.COMPLETED),
                    Outcome(task["later"], 1, OutcomeKind.RETRY, error="e", delay=3600),
                ],
            )
            assert len(quiet) == 2
            assert await received_until_marker(store, listener) == []

            await store.finish(worker, [Outcome(task["retry"], 1, OutcomeKind.RETRY, error="e")])
            assert await next_wake(listener) == "retry"

            await store.finish(worker, [Outcome(task["released"], 1, OutcomeKind.RELEASED)])
            assert await next_wake(listener) == "released"

            assert await store.release_worker(worker) == {task["shutdown"]: TaskStatus.PENDING}
            assert await next_wake(listener) == "shutdown"

            # Leased a minute ago for one second: expired by the database clock.
            await store.claim(
                "sweep", worker, kinds=["job"], limit=1, lease=1, now=now - seconds(30)
            )
            assert len(await store.recover_expired(limit=10)) == 1
            assert await next_wake(listener) == "sweep"

            assert await store.make_due(["future"]) == 1
            assert await next_wake(listener) == "future"


async def test_listener_ping_round_trips(database_url: str, db: Db) -> None:
    """ping() succeeds on a live LISTEN connection, which shows up as its own session."""
    with trio.fail_after(10):
        async with (
            open_postgres_store(DatabaseSettings(url=database_url)) as store,
            store.listen() as listener,
        ):
            await listener.ping()
            await listener.ping()
            assert await db.fetchval(LISTENERS) == 1


async def test_listener_connection_is_closed_when_the_block_exits(
    database_url: str, db: Db
) -> None:
    """Leaving ``listen()`` closes its dedicated connection; the store keeps working."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            async with store.listen():
                assert await db.fetchval(LISTENERS) == 1
            await wait_for_rows(db, LISTENERS, want=0)
            assert await store.enqueue([new_task()])


async def test_channel_ends_when_the_listen_connection_is_killed(database_url: str, db: Db) -> None:
    """A server-side termination of the LISTEN session closes the notifications channel
    (an ``async for`` over it finishes), ping() raises StoreUnavailable, leaving the block
    is clean and the store's pool is unaffected."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            async with store.listen() as listener:
                await store.enqueue([new_task("before")])
                assert await next_wake(listener) == "before"
                killed = await db.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'iron-defer-trio listen'"
                    " AND datname = current_database()"
                )
                assert killed == 1
                with trio.fail_after(5):
                    rest = [name async for name in listener.notifications]
                with pytest.raises(StoreUnavailable):
                    await listener.ping()
            [record] = await store.enqueue([new_task("after")])
            assert await store.get(record.id) == as_stored(record)
    assert rest == []


async def test_a_new_listener_works_after_the_old_one_was_killed(database_url: str, db: Db) -> None:
    """Recovery is opening a fresh ``listen()``: it receives notifications again."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            async with store.listen() as listener:
                await db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'iron-defer-trio listen'"
                    " AND datname = current_database()"
                )
                async for _ in listener.notifications:
                    pass
            async with store.listen() as fresh:
                await store.enqueue([new_task("again")])
                assert await next_wake(fresh) == "again"
