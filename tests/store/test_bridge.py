"""The trio-asyncio bridge: cancellation reaches the server, connections go back to the
pool, and every driver or socket failure comes out as the StoreError family.

Rules: a trio cancel scope around a store call cancels the statement server-side and frees
its pool slot (checked with a pool of 2, so one leaked slot per round would exhaust it);
errors are StoreError (the statement was refused) or StoreUnavailable (the database could
not be reached or answer), chained ``from`` the driver's exception. Waiting is on conditions
polled under an absolute ``trio.fail_after``, never a bare sleep.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import asyncpg
import pytest
import trio

from iron_defer_trio.config import DatabaseSettings
from iron_defer_trio.errors import ConfigError, StoreError, StoreUnavailable
from iron_defer_trio.store import open_postgres_store
from iron_defer_trio.store._bridge import open_bridge
from tests import pg
from tests.store._support import as_stored, new_task, row, wait_for_rows

if TYPE_CHECKING:
    from tests.pg import Db

#: Statements of this database's store pool that are still executing (or waiting on a lock).
ACTIVE = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND application_name = 'iron-defer-trio'"
    " AND state = 'active' AND query LIKE $1"
)


async def _aio_sleep(conn: Any, seconds: float) -> None:
    """(asyncio side) Hold a pooled connection in a slow statement."""
    await conn.execute("SELECT pg_sleep($1::float8) /* bridge test */", seconds)


async def _aio_fetchval(conn: Any, sql: str) -> Any:
    return await conn.fetchval(sql)


async def test_cancelling_a_slow_statement_cancels_it_and_frees_the_connection(
    database_url: str, db: Db
) -> None:
    """Five times over a pool of 2: the trio scope ends the call within 2 s, the server
    stops the statement, and the next store call gets a connection at once."""
    with trio.fail_after(20):
        async with open_postgres_store(
            DatabaseSettings(url=database_url, max_connections=2, command_timeout=10)
        ) as store:
            [task] = await store.enqueue([new_task()])
            for _ in range(5):
                started = trio.current_time()
                with trio.move_on_after(0.3) as scope:
                    await store._run(_aio_sleep, 10.0)
                assert scope.cancelled_caught
                assert trio.current_time() - started < 2
                with trio.fail_after(5):
                    await wait_for_rows(db, ACTIVE, "%pg_sleep%", want=0)
                with trio.fail_after(1):
                    assert await store.get(task.id) == as_stored(task)
            idle = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'iron-defer-trio'"
            )
    assert idle <= 2


async def test_cancelling_a_store_call_blocked_on_a_row_lock_releases_it(
    database_url: str, db: Db
) -> None:
    """A store method waiting on another session's row lock is cancelled by the trio scope:
    the server-side wait ends, and once the lock is gone the same call succeeds."""
    with trio.fail_after(15):
        async with open_postgres_store(
            DatabaseSettings(url=database_url, max_connections=2, command_timeout=10)
        ) as store:
            [task] = await store.enqueue([new_task()])
            await db.execute("BEGIN")
            await db.execute("SELECT 1 FROM iron_defer.tasks WHERE id = $1 FOR UPDATE", task.id)
            for _ in range(3):
                with trio.move_on_after(0.3) as scope:
                    await store.cancel(task.id)
                assert scope.cancelled_caught
                with trio.fail_after(5):
                    await wait_for_rows(db, ACTIVE, "%UPDATE iron_defer.tasks%", want=0)
            await db.execute("COMMIT")
            with trio.fail_after(2):
                result = await store.cancel(task.id)
        stored = await row(db, task.id)
    assert result.cancelled is not None
    assert stored["status"] == "cancelled"


async def test_statement_past_command_timeout_is_store_unavailable(
    database_url: str, db: Db
) -> None:
    """A call that cannot finish within command_timeout (here: blocked on a lock) raises
    StoreUnavailable, leaves the row unchanged and frees its connection."""
    with trio.fail_after(15):
        async with open_postgres_store(
            DatabaseSettings(url=database_url, max_connections=2, command_timeout=0.5)
        ) as store:
            [task] = await store.enqueue([new_task()])
            await db.execute("BEGIN")
            await db.execute("SELECT 1 FROM iron_defer.tasks WHERE id = $1 FOR UPDATE", task.id)
            for _ in range(3):  # more rounds than the pool has connections
                with pytest.raises(StoreUnavailable) as caught:
                    await store.cancel(task.id)
                assert isinstance(caught.value.__cause__, TimeoutError)
            await db.execute("ROLLBACK")
            with trio.fail_after(5):
                await wait_for_rows(db, ACTIVE, "%UPDATE iron_defer.tasks%", want=0)
            fetched = await store.get(task.id)
    assert fetched == as_stored(task)


async def test_opening_a_store_on_a_closed_port_raises_store_unavailable() -> None:
    """No server listening: opening the store fails with StoreUnavailable itself (not inside
    the private loop's exception groups), chained from the OSError."""
    url = "postgresql://postgres@127.0.0.1:1/postgres"
    with trio.fail_after(10):
        with pytest.raises(StoreUnavailable) as caught:
            async with open_postgres_store(
                DatabaseSettings(url=url, max_connections=2, connect_timeout=3)
            ):
                pytest.fail("the store opened without a server")
    error = caught.value
    assert isinstance(error.__cause__, OSError)
    assert error.sqlstate is None


async def test_opening_a_store_on_a_missing_database_is_a_store_error() -> None:
    """The server answers but the database does not exist: a StoreError carrying 3D000
    (a configuration mistake, not an outage)."""
    url = pg.dsn_for(pg.unique_name("iron_defer_missing"))
    with trio.fail_after(10):
        with pytest.raises(StoreError) as caught:
            async with open_postgres_store(DatabaseSettings(url=url, max_connections=2)):
                pytest.fail("the store opened a database that does not exist")
    error = caught.value
    assert not isinstance(error, StoreUnavailable)
    assert error.sqlstate == "3D000"
    assert isinstance(error.__cause__, asyncpg.exceptions.InvalidCatalogNameError)


async def test_opening_a_store_without_a_url_is_a_config_error() -> None:
    """DatabaseSettings without url fails before anything connects."""
    with trio.fail_after(5):
        with pytest.raises(ConfigError, match=r"database\.url"):
            async with open_postgres_store(DatabaseSettings()):
                pytest.fail("the store opened without a url")


async def test_a_refused_statement_is_a_store_error_chained_from_the_driver(
    database_url: str, db: Db
) -> None:
    """A statement the server rejects comes out of the bridge as StoreError with its
    SQLSTATE, ``from`` the asyncpg exception, and the pool stays usable."""
    with trio.fail_after(10):
        async with open_postgres_store(
            DatabaseSettings(url=database_url, max_connections=2)
        ) as store:
            for _ in range(3):
                with pytest.raises(StoreError) as caught:
                    await store._run(_aio_fetchval, "SELECT 1 / 0")
                assert type(caught.value) is StoreError
                assert caught.value.sqlstate == "22012"
                assert isinstance(caught.value.__cause__, asyncpg.exceptions.DivisionByZeroError)
            assert await store.get(uuid4()) is None


async def test_connection_killed_mid_statement_is_store_unavailable_then_the_pool_recovers(
    database_url: str, db: Db
) -> None:
    """pg_terminate_backend on a pooled connection in use fails that call with
    StoreUnavailable (08003, from the driver's ConnectionDoesNotExistError); the next call
    succeeds on a fresh connection."""
    errors: list[BaseException] = []

    async def victim(store: Any) -> None:
        try:
            await store._run(_aio_sleep, 10.0)
        except StoreError as exc:
            errors.append(exc)

    with trio.fail_after(15):
        async with open_postgres_store(
            DatabaseSettings(url=database_url, max_connections=2)
        ) as store:
            [task] = await store.enqueue([new_task()])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(victim, store)
                with trio.fail_after(5):
                    await wait_for_rows(db, ACTIVE, "%pg_sleep%", want=1)
                killed = await db.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND state = 'active'"
                    " AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()"
                )
                assert killed == 1
            with trio.fail_after(2):
                after = await store.get(task.id)
    [error] = errors
    assert isinstance(error, StoreUnavailable)
    assert error.sqlstate == "08003"
    assert isinstance(error.__cause__, asyncpg.exceptions.ConnectionDoesNotExistError)
    assert after == as_stored(task)


async def test_an_error_raised_inside_the_store_block_escapes_as_itself(
    database_url: str,
) -> None:
    """An exception from the body of ``open_postgres_store`` comes out unwrapped, not inside
    the private loop's nursery groups."""

    async def body_that_fails() -> None:
        async with open_postgres_store(DatabaseSettings(url=database_url, max_connections=2)):
            raise KeyError("from the body")

    with trio.fail_after(10), pytest.raises(KeyError, match="from the body"):
        await body_that_fails()


async def _aio_answer() -> int:
    return 42


async def test_a_stray_asyncio_error_on_the_private_loop_does_not_kill_the_bridge() -> None:
    """An error asyncio only reports through the loop's exception handler (such as "Future
    exception was never retrieved") must not tear down the bridge: later calls still work."""
    with trio.fail_after(5):
        async with open_bridge() as bridge:
            bridge._loop.call_exception_handler(
                {
                    "message": "Future exception was never retrieved",
                    "exception": ConnectionError("unexpected connection_lost() call"),
                }
            )
            for _ in range(3):
                assert await bridge.call(_aio_answer) == 42


async def _aio_steps(log: list[str]) -> str:
    """(asyncio side) Awaits of every kind an asyncio task could meet: a bare yield, a timer
    and a future completed by a callback."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)
    log.append("yielded")
    await asyncio.sleep(0.01)
    log.append("timer")
    future: asyncio.Future[str] = loop.create_future()
    loop.call_soon(future.set_result, "done")
    return await future


async def _aio_fail_after_a_step() -> None:
    await asyncio.sleep(0)
    raise asyncpg.InterfaceError("connection is closed")


async def _aio_wait_then_clean_up(log: list[str]) -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        log.append("saw the cancellation")
        raise
    finally:
        log.append("cleaned up")


async def test_a_coroutine_stepped_inline_behaves_as_in_an_asyncio_task() -> None:
    """``run_inline`` drives an asyncio coroutine from the trio task: bare yields, timers and
    futures resolve; a driver error comes out translated; a trio cancellation reaches the
    coroutine as asyncio's CancelledError and comes back as trio's once it has finished."""
    log: list[str] = []
    with trio.fail_after(5):
        async with open_bridge() as bridge:
            assert await bridge.run_inline(_aio_steps, log) == "done"
            assert log == ["yielded", "timer"]
            with pytest.raises(StoreUnavailable) as caught:
                await bridge.run_inline(_aio_fail_after_a_step)
            assert isinstance(caught.value.__cause__, asyncpg.InterfaceError)
            log.clear()
            with trio.move_on_after(0.05) as scope:
                await bridge.run_inline(_aio_wait_then_clean_up, log)
            assert scope.cancelled_caught
            assert log == ["saw the cancellation", "cleaned up"]
            # The bridge is still usable, both ways in.
            assert await bridge.run_inline(_aio_answer) == 42
            assert await bridge.call(_aio_answer) == 42


async def _aio_resolve_then_note(log: list[str]) -> str:
    """(asyncio side) A future completed by a callback that keeps running after set_result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def resolve() -> None:
        future.set_result("value")
        log.append("set_result returned")

    loop.call_soon(resolve)
    value = await future
    log.append("resumed")
    return value


async def test_an_inline_coroutine_resumes_after_the_code_that_completed_its_future() -> None:
    """The wake-up of a coroutine stepped inline skips the loop's callback queue, yet the
    coroutine never runs inside the ``set_result`` that woke it (as in asyncio): the code
    after it finishes first, every time, and other callbacks still run."""
    log: list[str] = []
    with trio.fail_after(5):
        async with open_bridge() as bridge:
            for _ in range(3):
                assert await bridge.run_inline(_aio_resolve_then_note, log) == "value"
            assert await bridge.call(_aio_answer) == 42
    assert log == ["set_result returned", "resumed"] * 3
