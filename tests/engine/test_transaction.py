"""Transactional enqueue: the application's rows and its tasks commit or vanish together.

Rules: inside ``engine.transaction()`` the application's statements and enqueues share one
database transaction; workers never see (or run) a task before the commit; an exception or a
cancellation in the block rolls everything back; the handle is dead after the block.
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


class Receipt(iron_defer.Task):
    KIND: ClassVar[str] = "receipt"
    ran: ClassVar[list[int]] = []
    order: int

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Receipt.ran.append(self.order)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Receipt.ran = []


@pytest.fixture
async def orders(db: Db) -> Db:
    """The application's own table, in the test database."""
    await db.execute("CREATE TABLE orders (id integer PRIMARY KEY, total integer NOT NULL)")
    return db


async def test_tasks_and_rows_appear_together_only_at_commit_while_workers_run(
    open_test_engine: EngineFactory, orders: Db
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Receipt]) as engine:
            async with engine.transaction() as tx:
                await tx.execute("INSERT INTO orders (id, total) VALUES ($1, $2)", 1, 500)
                record = await tx.enqueue(Receipt(order=1))
                assert record.created
                assert await tx.fetchval("SELECT count(*) FROM iron_defer.tasks") == 1
                # Several polls and any notification would have picked it up by now.
                await trio.sleep(0.6)
                assert Receipt.ran == []
                assert await orders.fetchval("SELECT count(*) FROM orders") == 0
                assert await orders.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0
            await engine.wait_until_idle()
    assert Receipt.ran == [1]
    assert await orders.fetchval("SELECT total FROM orders WHERE id = 1") == 500
    assert await orders.statuses() == {"completed": 1}


async def test_the_commit_wakes_workers_at_once(open_test_engine: EngineFactory, db: Db) -> None:
    """The NOTIFY of a transactional enqueue is delivered at commit: the task starts well
    before the next poll (poll_interval is 5 s here)."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Receipt], poll_interval=5.0) as engine:
            while not engine.statistics().listening:
                await trio.sleep(0.01)
            async with engine.transaction() as tx:
                await tx.enqueue(Receipt(order=2))
            committed = trio.current_time()
            while not Receipt.ran:
                await trio.sleep(0.005)
            started_after = trio.current_time() - committed
    assert started_after < 1.0


async def test_an_exception_in_the_block_rolls_back_rows_and_tasks(
    open_test_engine: EngineFactory, orders: Db
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Receipt]) as engine:

            async def declined() -> None:
                async with engine.transaction() as tx:
                    await tx.execute("INSERT INTO orders (id, total) VALUES (3, 100)")
                    await tx.enqueue_many([Receipt(order=3), Receipt(order=4)])
                    raise RuntimeError("payment declined")

            with pytest.raises(RuntimeError, match="payment declined"):
                await declined()
            await trio.sleep(0.5)
            # The engine and its pool carry on normally afterwards.
            await engine.enqueue(Receipt(order=5))
            await engine.wait_until_idle()
    assert Receipt.ran == [5]
    assert await orders.fetchval("SELECT count(*) FROM orders") == 0
    assert await orders.statuses() == {"completed": 1}


async def test_a_failed_statement_rolls_back_the_whole_transaction(
    open_test_engine: EngineFactory, orders: Db
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Receipt], run_workers=False) as engine:

            async def null_total() -> None:
                async with engine.transaction() as tx:
                    await tx.enqueue(Receipt(order=6))
                    await tx.execute("INSERT INTO orders (id, total) VALUES (6, NULL)")

            with pytest.raises(iron_defer.StoreError) as caught:
                await null_total()
    assert caught.value.sqlstate == "23502"  # not_null_violation
    assert await orders.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0


async def test_cancelling_the_block_rolls_back(open_test_engine: EngineFactory, orders: Db) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Receipt], run_workers=False) as engine:
            with trio.move_on_after(0.3) as scope:
                async with engine.transaction() as tx:
                    await tx.execute("INSERT INTO orders (id, total) VALUES (7, 1)")
                    await tx.enqueue(Receipt(order=7))
                    await trio.sleep_forever()
            assert scope.cancelled_caught
            # The connection went back clean: the next transaction commits normally.
            async with engine.transaction() as tx:
                await tx.execute("INSERT INTO orders (id, total) VALUES (8, 1)")
    assert await orders.fetchval("SELECT array_agg(id) FROM orders") == [8]
    assert await orders.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0


async def test_the_handle_is_dead_after_the_block(open_test_engine: EngineFactory) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Receipt], run_workers=False) as engine:
            async with engine.transaction() as tx:
                pass
            with pytest.raises(iron_defer.EngineClosed, match="transaction is over"):
                await tx.enqueue(Receipt(order=9))
            with pytest.raises(iron_defer.EngineClosed):
                await tx.fetch("SELECT 1")


async def test_an_idempotency_key_in_a_transaction_finds_the_committed_task(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Receipt], run_workers=False) as engine:
            first = await engine.enqueue(Receipt(order=10), idempotency_key="order-10")
            async with engine.transaction() as tx:
                again = await tx.enqueue(Receipt(order=10), idempotency_key="order-10")
                rows = await tx.fetch("SELECT id FROM iron_defer.tasks")
    assert again.created is False and again.id == first.id
    assert [row["id"] for row in rows] == [first.id]
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 1


async def test_a_statement_past_command_timeout_fails_rolls_back_and_stops_on_the_server(
    database_url: str, orders: Db
) -> None:
    """``database.command_timeout`` bounds the application's own statements in a transaction
    too: the slow one raises StoreUnavailable, the server stops it, nothing of the block is
    committed, and the engine's connections carry on."""
    settings = iron_defer.Settings.build(
        database={"url": database_url, "command_timeout": 0.5, "max_connections": 2},
        worker=FAST_WORKER,
    )
    with trio.fail_after(15):
        async with iron_defer.open_engine(
            settings, tasks=[Receipt], run_workers=False, migrate=False
        ) as engine:

            async def slow() -> None:
                async with engine.transaction() as tx:
                    await tx.execute("INSERT INTO orders (id, total) VALUES (9, 1)")
                    await tx.enqueue(Receipt(order=9))
                    await tx.execute("SELECT pg_sleep(10) /* past the command timeout */")

            started = trio.current_time()
            with pytest.raises(iron_defer.StoreUnavailable):
                await slow()
            assert trio.current_time() - started < 5
            sleeping = await orders.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                " AND query LIKE '%past the command timeout%' AND pid <> pg_backend_pid()"
            )
            for _ in range(3):  # more rounds than the pool has connections
                async with engine.transaction() as tx:
                    await tx.fetchval("SELECT 1")
    assert sleeping == 0
    assert await orders.fetchval("SELECT count(*) FROM orders") == 0
    assert await orders.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0
