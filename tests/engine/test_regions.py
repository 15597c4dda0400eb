"""Regions (worker pinning): a task may be pinned to a region; an engine with
``worker.region = R`` claims the tasks pinned to R and unpinned ones; an engine without a
region claims only unpinned tasks. Labels are validated, and producers may be limited to an
allowlist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar
from uuid import UUID

import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.config import Settings

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db


class Where(iron_defer.Task):
    """Records which engine ran it."""

    KIND: ClassVar[str] = "where"
    ran_on: ClassVar[dict[str, UUID]] = {}
    name: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Where.ran_on[self.name] = ctx.worker_id


class PinnedByClass(iron_defer.Task):
    KIND: ClassVar[str] = "pinned_by_class"
    REGION: ClassVar[str | None] = "eu-west"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        pass


@pytest.fixture(autouse=True)
def _reset() -> None:
    Where.ran_on = {}


async def _statuses(db: Db) -> dict[str, str]:
    rows = await db.fetch("SELECT payload->>'name' AS name, status FROM iron_defer.tasks")
    return {row["name"]: row["status"] for row in rows}


async def test_each_engine_claims_its_region_and_unpinned_tasks_only(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Three engines (eu-west, us-east, none): pinned tasks run only on their region's engine;
    unpinned tasks run anywhere; the region-less engine never runs a pinned task."""
    with trio.fail_after(30):
        async with (
            open_test_engine(tasks=[Where], region="eu-west") as eu,
            open_test_engine(tasks=[Where], region="us-east") as us,
            open_test_engine(tasks=[Where]) as anywhere,
        ):
            for n in range(12):
                await eu.enqueue(Where(name=f"eu{n}"), region="eu-west")
                await eu.enqueue(Where(name=f"us{n}"), region="us-east")
                await eu.enqueue(Where(name=f"free{n}"))
            while len(Where.ran_on) < 36:
                await trio.sleep(0.02)
            engines = {eu.worker_id: "eu", us.worker_id: "us", anywhere.worker_id: "none"}
    ran = {name: engines[worker] for name, worker in Where.ran_on.items()}
    assert {ran[f"eu{n}"] for n in range(12)} == {"eu"}
    assert {ran[f"us{n}"] for n in range(12)} == {"us"}
    assert {ran[f"free{n}"] for n in range(12)} <= {"eu", "us", "none"}
    assert "none" not in {engine for name, engine in ran.items() if not name.startswith("free")}


async def test_a_pinned_task_waits_until_an_engine_of_its_region_runs(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """With only a region-less engine, a pinned task stays pending (while unpinned work
    completes); an engine of its region then runs it."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Where]) as anywhere:
            pinned = await anywhere.enqueue(Where(name="pinned"), region="ap-south-1")
            await anywhere.enqueue(Where(name="free"))
            await anywhere.wait_until_idle()
            for _ in range(5):  # several polls (0.2 s) and claims: still nobody takes it
                await trio.sleep(0.25)
                assert (await anywhere.get(pinned.id)).status == "pending"
        async with open_test_engine(tasks=[Where], region="ap-south-1") as regional:
            await regional.wait_until_idle()
            final = await regional.get(pinned.id)
    assert final.status == "completed"
    assert final.region == "ap-south-1"
    assert Where.ran_on["pinned"] == regional.worker_id


async def test_the_class_region_is_the_default_and_enqueue_overrides_it(
    open_test_engine: EngineFactory,
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[PinnedByClass], run_workers=False) as engine:
            default = await engine.enqueue(PinnedByClass())
            moved = await engine.enqueue(PinnedByClass(), region="us-east")
            [many] = await engine.enqueue_many([PinnedByClass()], region="ap-1")
            raw = await engine.enqueue_payload(None, "pinned_by_class", {}, region="x-1")
    assert (default.region, moved.region, many.region, raw.region) == (
        "eu-west",
        "us-east",
        "ap-1",
        "x-1",
    )


@pytest.mark.parametrize("label", ["", "EU", "eu_west", "-eu", "é", "a" * 64, "eu west"])
async def test_invalid_region_labels_are_refused(
    label: str, open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Where], run_workers=False) as engine:
            with pytest.raises(iron_defer.InvalidTaskError, match="invalid region"):
                await engine.enqueue(Where(name="x"), region=label)
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0


async def test_the_producer_allowlist_refuses_other_regions(database_url: str, db: Db) -> None:
    settings = Settings.build(
        database={"url": database_url}, producer={"allowed_regions": "eu-west, us-east"}
    )
    with trio.fail_after(15):
        async with iron_defer.open_engine(
            settings, tasks=[Where], run_workers=False, migrate=False
        ) as engine:
            allowed = await engine.enqueue(Where(name="ok"), region="us-east")
            unpinned = await engine.enqueue(Where(name="free"))
            with pytest.raises(iron_defer.InvalidTaskError, match="not allowed"):
                await engine.enqueue(Where(name="no"), region="ap-1")
    assert settings.producer.allowed_regions == ["eu-west", "us-east"]
    assert (allowed.region, unpinned.region) == ("us-east", None)
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 2


def test_worker_region_and_allowlist_labels_are_validated() -> None:
    with pytest.raises(iron_defer.ConfigError, match="invalid region"):
        Settings.build(worker={"region": "EU"})
    with pytest.raises(iron_defer.ConfigError, match="invalid region"):
        Settings.build(producer={"allowed_regions": ["ok", "not ok"]})


async def test_an_idempotency_key_with_another_region_is_a_conflict(
    open_test_engine: EngineFactory,
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Where], run_workers=False) as engine:
            first = await engine.enqueue(Where(name="x"), region="eu-west", idempotency_key="k")
            again = await engine.enqueue(Where(name="x"), region="eu-west", idempotency_key="k")
            with pytest.raises(iron_defer.IdempotencyConflict):
                await engine.enqueue(Where(name="x"), region="us-east", idempotency_key="k")
            with pytest.raises(iron_defer.IdempotencyConflict):
                await engine.enqueue(Where(name="x"), idempotency_key="k")
    assert (again.id, again.created) == (first.id, False)


async def test_queue_statistics_group_by_region_on_request(
    open_test_engine: EngineFactory,
) -> None:
    with trio.fail_after(15):
        async with open_test_engine(tasks=[Where], run_workers=False) as engine:
            await engine.enqueue(Where(name="a"), region="eu-west")
            await engine.enqueue(Where(name="b"), region="eu-west")
            await engine.enqueue(Where(name="c"))
            grouped = await engine.queue_stats(by_region=True)
            plain = await engine.queue_stats()
    assert [(s.queue, s.region, s.pending) for s in grouped] == [
        ("default", None, 1),
        ("default", "eu-west", 2),
    ]
    assert [(s.queue, s.region, s.pending) for s in plain] == [("default", None, 3)]
