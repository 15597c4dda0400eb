"""Backpressure: when outcomes are written slower than tasks finish, the engine stops
claiming instead of piling outcomes (and leases to renew) up in memory."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, ClassVar

import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.engine import _worker
from iron_defer_trio.store import PostgresStore, open_postgres_store
from tests.conftest import fast_settings

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime
    from uuid import UUID

    import pytest

    from iron_defer_trio.store.protocol import FinishResult, Outcome
    from tests.pg import Db

LIMIT = 50
CONCURRENCY = 20


class Quick(iron_defer.Task):
    KIND: ClassVar[str] = "quick"
    n: int

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


class _StalledWrites(PostgresStore):
    """A real store whose outcome writes wait until the test lets them through."""

    released = trio.Event()

    async def finish(
        self, worker_id: UUID, outcomes: Sequence[Outcome], *, now: datetime | None = None
    ) -> list[FinishResult]:
        await self.released.wait()
        return await super().finish(worker_id, outcomes, now=now)


async def test_claiming_pauses_while_outcomes_wait_and_resumes_after(
    database_url: str, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_worker, "MAX_OUTCOME_BACKLOG", LIMIT)
    _StalledWrites.released = trio.Event()
    settings = fast_settings(database_url, prefetch=0)
    with trio.fail_after(30):
        async with open_postgres_store(settings.database) as real:
            store = _StalledWrites(real._bridge, real._pool, settings.database, "unused")
            async with iron_defer.open_engine(
                settings,
                tasks=[Quick],
                queues={"default": CONCURRENCY},
                store=store,
                rng=random.Random(0),
            ) as engine:
                await engine.enqueue_many([Quick(n=n) for n in range(500)])
                while engine.statistics().outcome_backlog < LIMIT:
                    await trio.sleep(0.01)
                await trio.sleep(0.5)  # time for claims that should not happen
                stalled = engine.statistics()
                claimed_while_stalled = stalled.queues[0].claimed
                _StalledWrites.released.set()
                await engine.wait_until_idle()
    # The loop stopped at the limit: at most one more slot-sized claim got through.
    assert LIMIT <= claimed_while_stalled <= LIMIT + CONCURRENCY
    assert stalled.outcome_backlog <= LIMIT + CONCURRENCY
    assert await db.statuses() == {"completed": 500}
