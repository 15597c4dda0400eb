"""The execution ledger: every start and end of a chaos task's execution, recorded by the
worker process itself in a separate database, so tests count exactly how often each task ran.

It lives apart from the tasks' database on purpose: when the tasks' PostgreSQL is stopped or
killed, the ledger keeps recording.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime  # noqa: TC003  # a dataclass field type, read at runtime
from typing import TYPE_CHECKING, Any

import asyncpg
import trio
import trio_asyncio

from tests import pg

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from uuid import UUID

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id        bigserial   PRIMARY KEY,
    n         integer     NOT NULL,
    task_id   uuid        NOT NULL,
    worker_id uuid        NOT NULL,
    attempt   integer     NOT NULL,
    event     text        NOT NULL CHECK (event IN ('start', 'done')),
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


def create(dsn: str) -> None:
    """Create the ledger table (synchronous, for fixtures)."""
    pg.run_admin(SCHEMA, dsn=dsn)


class Ledger:
    """A small pool that records executions (used inside worker processes)."""

    def __init__(self, pool: Any, loop: Any) -> None:
        self._pool = pool
        self._loop = loop

    async def record(
        self, n: int, task_id: UUID, worker_id: UUID, attempt: int, event: str
    ) -> None:
        await trio_asyncio.aio_as_trio(self._pool.execute, loop=self._loop)(
            "INSERT INTO ledger (n, task_id, worker_id, attempt, event) "
            "VALUES ($1, $2, $3, $4, $5)",
            n,
            task_id,
            worker_id,
            attempt,
            event,
        )


async def open_ledger(dsn: str) -> AsyncIterator[Ledger]:
    """Yield a ledger for the lifetime of the process (an async generator for
    ``contextlib.asynccontextmanager``)."""
    async with trio_asyncio.open_loop() as loop:
        pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool, loop=loop)(
            dsn, min_size=1, max_size=4
        )
        try:
            yield Ledger(pool, loop)
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(pool.close, loop=loop)()


@dataclass(frozen=True)
class Execution:
    n: int
    task_id: UUID
    worker_id: UUID
    attempt: int
    started: datetime
    done: datetime | None


def executions(dsn: str) -> dict[int, list[Execution]]:
    """Every execution of every task number, in start order."""
    rows = pg.fetch_sync(
        dsn, "SELECT n, task_id, worker_id, attempt, event, at FROM ledger ORDER BY id"
    )
    starts: dict[tuple[UUID, UUID, int], datetime] = {}
    dones: dict[tuple[UUID, UUID, int], datetime] = {}
    numbers: dict[UUID, int] = {}
    for row in rows:
        key = (row["task_id"], row["worker_id"], row["attempt"])
        numbers[row["task_id"]] = row["n"]
        (starts if row["event"] == "start" else dones)[key] = row["at"]
    by_task: dict[int, list[Execution]] = defaultdict(list)
    for key, started in starts.items():
        task_id, worker_id, attempt = key
        by_task[numbers[task_id]].append(
            Execution(numbers[task_id], task_id, worker_id, attempt, started, dones.get(key))
        )
    for runs in by_task.values():
        runs.sort(key=lambda e: e.started)
    return dict(by_task)
