"""The engine's shared view of database health: one ``database_unavailable`` per outage and
one ``database_recovered`` when it ends, whichever services notice it and in what order."""

from __future__ import annotations

import structlog
import trio

from iron_defer_trio.engine._health import DatabaseHealth
from iron_defer_trio.errors import StoreError, StoreUnavailable


async def test_a_call_that_began_before_the_outage_does_not_end_it() -> None:
    """Services fail and succeed in any order around a server stop: a success of a call
    started before the first failure (it finished just before the server went away) neither
    ends the outage nor opens a second one; the first call started after it ends it."""
    with structlog.testing.capture_logs() as logs:
        health = DatabaseHealth(structlog.get_logger())
        before = trio.current_time()
        health.succeeded(started=before)
        await trio.sleep(0.01)
        health.failed("completer", StoreUnavailable("connection lost"))
        health.succeeded(started=before)  # a claim sent before the stop, answered in time
        health.failed("worker:default", StoreUnavailable("connection refused"))
        during = health.available
        await trio.sleep(0.01)
        health.succeeded(started=trio.current_time())
        after = health.available
        health.failed("sweeper", StoreError("syntax error", sqlstate="42601"))
    events = [e["event"] for e in logs]
    assert events == ["database_unavailable", "database_recovered", "store_error"]
    assert (during, after) == (False, True)
    assert health.available  # a refused statement is not an outage
