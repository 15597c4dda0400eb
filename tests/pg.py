"""Test-side database access: create and drop databases, and read rows to assert on.

Tests assert on real rows, so they need their own connection; like the package, they reach
asyncpg through a private trio-asyncio loop.
"""

from __future__ import annotations

import os
import uuid
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import trio
import trio_asyncio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: The shared server every developer and CI machine runs (trust auth).
ADMIN_DSN = os.environ.get(
    "IRON_DEFER_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def dsn_for(database: str, admin_dsn: str = ADMIN_DSN) -> str:
    """The admin DSN pointed at another database."""
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{database}"


class Db:
    """A connection to one test database, usable from trio code."""

    def __init__(self, conn: Any, loop: Any, dsn: str) -> None:
        self._conn = conn
        self._loop = loop
        self.dsn = dsn

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        rows: list[Any] = await trio_asyncio.aio_as_trio(self._conn.fetch, loop=self._loop)(
            sql, *args
        )
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await trio_asyncio.aio_as_trio(self._conn.fetchrow, loop=self._loop)(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await trio_asyncio.aio_as_trio(self._conn.fetchval, loop=self._loop)(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        status: str = await trio_asyncio.aio_as_trio(self._conn.execute, loop=self._loop)(
            sql, *args
        )
        return status

    async def statuses(self) -> dict[str, int]:
        """Count of tasks per status."""
        rows = await self.fetch("SELECT status, count(*) AS n FROM iron_defer.tasks GROUP BY 1")
        return {row["status"]: row["n"] for row in rows}

    async def add_finished(
        self,
        count: int,
        status: str,
        *,
        queue: str,
        kind: str,
        ago: timedelta = timedelta(hours=1),
    ) -> None:
        """Insert ``count`` tasks that ended ``status`` (failed, cancelled or completed)
        ``ago`` before now, with their attempts used up and last_error 'boom'."""
        await self.execute(
            "INSERT INTO iron_defer.tasks (id, queue, kind, payload, max_attempts, status,"
            " attempts, last_error, finished_at)"
            " SELECT gen_random_uuid(), $1, $2, '{}', 3, $3, 3, 'boom', now() - $4::interval"
            " FROM generate_series(1, $5)",
            queue,
            kind,
            status,
            ago,
            count,
        )


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[Db]:
    """Open a test connection for the block."""
    async with trio_asyncio.open_loop() as loop:
        conn = await trio_asyncio.aio_as_trio(asyncpg.connect, loop=loop)(dsn)
        try:
            yield Db(conn, loop, dsn)
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(conn.close, loop=loop)()


def run_admin(*statements: str, dsn: str = ADMIN_DSN) -> None:
    """Run statements outside any trio run (session fixtures)."""

    async def go() -> None:
        async with connect(dsn) as db:
            for statement in statements:
                await db.execute(statement)

    trio.run(go)


def unique_name(prefix: str) -> str:
    """A database name no other test (or test run) uses."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def fetch_sync(dsn: str, sql: str, *args: Any) -> list[Any]:
    """Run a query from synchronous test code (outside any trio run)."""

    async def go() -> list[Any]:
        async with connect(dsn) as db:
            return await db.fetch(sql, *args)

    return trio.run(go)
