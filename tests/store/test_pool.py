"""Pool statistics and saturation: more concurrent calls than connections."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import structlog
import trio

from iron_defer_trio.config import DatabaseSettings
from iron_defer_trio.store import open_postgres_store

if TYPE_CHECKING:
    import asyncpg


async def _aio_hold(conn: asyncpg.Connection[asyncpg.Record], seconds: float) -> None:
    await conn.execute("SELECT pg_sleep($1)", seconds)


async def test_waiting_calls_are_counted_and_a_long_wait_is_logged(database_url: str) -> None:
    """With both connections busy, a third call waits: the pool reports it waiting, and a
    wait over a second logs pool_saturated once, naming the limit."""
    settings = DatabaseSettings(url=database_url, max_connections=2)
    seen_waiting = 0
    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        async with open_postgres_store(settings) as store, trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(store._run, _aio_hold, 1.5)
            while store.pool_statistics().in_use < 2:
                await trio.sleep(0.01)
            nursery.start_soon(store.get, uuid.uuid4())
            while (stats := store.pool_statistics()).waiting < 1:
                await trio.sleep(0.01)
            seen_waiting = stats.waiting
            assert (stats.size, stats.in_use, stats.idle, stats.max_size) == (2, 2, 0, 2)
        after = store.pool_statistics()
    saturated = [e for e in logs if e["event"] == "pool_saturated"]
    assert seen_waiting == 1
    assert after.waiting == 0
    assert len(saturated) == 1
    assert saturated[0]["max_connections"] == 2
    assert saturated[0]["waited_seconds"] >= 1.0
