"""Idempotency keys: a producer that retries never creates the work twice.

Rules: the key is unique per queue while its task is active and for
``worker.idempotency_retention`` after it finished (enforced by a unique index, so it holds
under concurrency); a duplicate returns the existing task with ``created`` False; the same key
for different work is an IdempotencyConflict that writes nothing; the sweeper frees keys past
their retention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer
from tests.conftest import fast_settings

if TYPE_CHECKING:
    from uuid import UUID

    from tests.conftest import EngineFactory
    from tests.pg import Db


class Charge(iron_defer.Task):
    """Counts its executions per order."""

    KIND: ClassVar[str] = "charge"
    runs: ClassVar[dict[str, int]] = {}
    order: str
    cents: int = 100

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Charge.runs[self.order] = Charge.runs.get(self.order, 0) + 1


@pytest.fixture(autouse=True)
def _reset() -> None:
    Charge.runs = {}


async def _rows(db: Db) -> list[tuple[str, str | None]]:
    rows = await db.fetch("SELECT queue, idempotency_key FROM iron_defer.tasks ORDER BY id")
    return [(row["queue"], row["idempotency_key"]) for row in rows]


async def test_a_retried_enqueue_returns_the_first_task_and_stores_nothing_new(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Charge], run_workers=False) as engine:
            first = await engine.enqueue(Charge(order="o-42"), idempotency_key="order-42")
            again = await engine.enqueue(Charge(order="o-42"), idempotency_key="order-42")
    assert (first.created, again.created) == (True, False)
    assert again.id == first.id
    assert again.idempotency_key == "order-42"
    assert await _rows(db) == [("default", "order-42")]


async def test_ten_concurrent_identical_enqueues_from_two_engines_create_one_task(
    database_url: str, db: Db
) -> None:
    """Two processes' worth of pools racing on one key: the unique index decides."""
    results: list[iron_defer.EnqueuedTask] = []
    settings = fast_settings(database_url)

    async def submit(engine: iron_defer.Engine) -> None:
        results.append(await engine.enqueue(Charge(order="o-1"), idempotency_key="k-1"))

    with trio.fail_after(20):
        async with (
            iron_defer.open_engine(settings, tasks=[Charge], run_workers=False) as one,
            iron_defer.open_engine(settings, tasks=[Charge], run_workers=False) as two,
            trio.open_nursery() as nursery,
        ):
            for n in range(10):
                nursery.start_soon(submit, one if n % 2 else two)
    assert len(results) == 10
    assert len({r.id for r in results}) == 1
    assert sorted(r.created for r in results) == [False] * 9 + [True]
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 1


async def test_the_same_key_in_another_queue_is_another_task(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Charge], run_workers=False) as engine:
            a = await engine.enqueue("billing", Charge(order="o"), idempotency_key="k")
            b = await engine.enqueue("refunds", Charge(order="o"), idempotency_key="k")
    assert a.created and b.created and a.id != b.id
    assert sorted(await _rows(db)) == [("billing", "k"), ("refunds", "k")]


async def test_a_key_keeps_protecting_after_the_task_completed(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Within the retention a late retry gets the finished task back: the work never runs
    twice, unlike a key that only guards active tasks."""
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Charge]) as engine:
            first = await engine.enqueue(Charge(order="o-7"), idempotency_key="order-7")
            await engine.wait_until_idle()
            late = await engine.enqueue(Charge(order="o-7"), idempotency_key="order-7")
            await engine.wait_until_idle()
    assert late.created is False
    assert late.id == first.id
    assert late.status is iron_defer.TaskStatus.COMPLETED
    assert Charge.runs == {"o-7": 1}
    assert await db.statuses() == {"completed": 1}


async def test_the_sweeper_frees_keys_past_their_retention_and_the_key_works_again(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Charge], idempotency_retention=60) as engine:
            first = await engine.enqueue(Charge(order="o-9"), idempotency_key="order-9")
            kept = await engine.enqueue(Charge(order="o-0"), idempotency_key="order-0")
            await engine.wait_until_idle()
            # order-9 finished 61 s ago, order-0 just now.
            await db.execute(
                "UPDATE iron_defer.tasks SET finished_at = now() - interval '61 seconds' "
                "WHERE id = $1",
                first.id,
            )
            while await db.fetchval(
                "SELECT idempotency_key FROM iron_defer.tasks WHERE id = $1", first.id
            ):
                await trio.sleep(0.05)
            again = await engine.enqueue(Charge(order="o-9"), idempotency_key="order-9")
            await engine.wait_until_idle()
        keys = {
            row["id"]: row["idempotency_key"]
            for row in await db.fetch("SELECT id, idempotency_key FROM iron_defer.tasks")
        }
    assert again.created is True and again.id != first.id
    assert keys == {first.id: None, kept.id: "order-0", again.id: "order-9"}
    assert Charge.runs == {"o-9": 2, "o-0": 1}


async def test_a_key_reused_for_different_work_is_a_conflict_that_writes_nothing(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Charge], run_workers=False) as engine:
            first = await engine.enqueue(Charge(order="o-1", cents=100), idempotency_key="k")
            with pytest.raises(iron_defer.IdempotencyConflict) as caught:
                await engine.enqueue(Charge(order="o-1", cents=999), idempotency_key="k")
    assert caught.value.task_id == first.id
    assert (caught.value.queue, caught.value.key) == ("default", "k")
    assert "different kind or payload" in str(caught.value)
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 1
    assert await db.fetchval("SELECT payload->>'cents' FROM iron_defer.tasks") == "100"


async def test_a_conflict_in_a_batch_undoes_the_whole_batch(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Charge], run_workers=False) as engine:
            await engine.enqueue(Charge(order="held"), idempotency_key="held")
            with pytest.raises(iron_defer.IdempotencyConflict):
                await engine.enqueue_many(
                    [Charge(order="new-1"), Charge(order="other"), Charge(order="new-2")],
                    idempotency_keys=["new-1", "held", None],
                )
    assert await _rows(db) == [("default", "held")]


async def test_enqueue_many_returns_existing_tasks_for_known_keys_in_order(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Charge], run_workers=False) as engine:
            known = await engine.enqueue(Charge(order="b"), idempotency_key="b")
            batch = await engine.enqueue_many(
                [Charge(order="a"), Charge(order="b"), Charge(order="c"), Charge(order="a")],
                idempotency_keys=["a", "b", None, "a"],
            )
    assert [r.created for r in batch] == [True, False, True, False]
    assert batch[1].id == known.id
    assert batch[3].id == batch[0].id
    assert [r.payload for r in batch] == [{"order": o, "cents": 100} for o in "abca"]
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 3


async def test_one_key_twice_in_a_batch_for_different_work_is_refused_before_writing(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Charge], run_workers=False) as engine:
            with pytest.raises(iron_defer.InvalidTaskError, match="used twice in one batch"):
                await engine.enqueue_many(
                    [Charge(order="x"), Charge(order="y")], idempotency_keys=["k", "k"]
                )
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0


async def test_concurrent_overlapping_batches_create_each_key_once(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Batches racing on the same keys in opposite orders: no deadlock, no duplicate, no
    error, and every batch gets a record for every task."""
    keys = [f"k-{n}" for n in range(50)]
    seen: list[list[UUID]] = []

    async def submit(engine: iron_defer.Engine, order: list[str]) -> None:
        records = await engine.enqueue_many(
            [Charge(order=k) for k in order], idempotency_keys=order
        )
        assert [r.idempotency_key for r in records] == order
        seen.append([r.id for r in sorted(records, key=lambda r: r.idempotency_key or "")])

    with trio.fail_after(20):
        async with (
            open_test_engine(tasks=[Charge], run_workers=False) as engine,
            trio.open_nursery() as nursery,
        ):
            for n in range(6):
                nursery.start_soon(submit, engine, keys if n % 2 else keys[::-1])
    assert len(seen) == 6 and all(ids == seen[0] for ids in seen)
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 50


@pytest.mark.parametrize("key", ["", "x" * 256, "nul\x00byte"])
async def test_invalid_keys_are_refused_before_writing(
    open_test_engine: EngineFactory, db: Db, key: str
) -> None:
    with trio.fail_after(10):
        async with open_test_engine(tasks=[Charge], run_workers=False) as engine:
            with pytest.raises(iron_defer.InvalidTaskError, match="idempotency key"):
                await engine.enqueue(Charge(order="o"), idempotency_key=key)
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0
