"""The store's connection pool, kept on the trio side of the bridge.

asyncpg's own pool costs ~220 us of CPU per acquire/release cycle when its asyncio machinery
(wait_for timers, a shielded release task, the connection proxy) runs on trio-asyncio's loop,
where every asyncio callback is a trio channel hop: more than the statement itself. Here the
slots are a FIFO ``trio.Semaphore``, and crossing the bridge is left to the one call per unit
of work that runs the statement(s) on a plain asyncpg connection.

Rules:
- at most ``max_connections`` connections exist: one per held slot, plus idle ones;
- a call cut short by a timeout or a cancellation returns (or raises) only once the server
  acknowledged the cancel request asyncpg sent, so a call that failed cannot take effect
  later; the connection is then reused (terminated if it does not settle in time);
- a closed connection is dropped and a fresh one opened when next needed;
- a connection idle for ``IDLE_LIFETIME`` is closed (one is always kept);
- waiting longer than ``pool_wait_warning`` logs ``pool_saturated`` (at most every 30 s);
  waiting longer than ``command_timeout`` fails the call with StoreUnavailable.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
import trio

from iron_defer_trio.domain import PoolStatistics
from iron_defer_trio.errors import StoreError, StoreUnavailable
from iron_defer_trio.store._queries import TASKS

if TYPE_CHECKING:
    from types import TracebackType

    from iron_defer_trio.config import DatabaseSettings
    from iron_defer_trio.observability import Logger
    from iron_defer_trio.store._bridge import Bridge

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

#: Close connections unused for this long (seconds), keeping one.
IDLE_LIFETIME = 300.0
#: At most one pool_saturated warning per this many seconds, however long it lasts.
SATURATION_WARNING_INTERVAL = 30.0
#: Time allowed to close the connections when the pool closes, even if cancelled.
CLOSE_TIMEOUT = 5.0


async def _aio_connect(dsn: str, settings: DatabaseSettings) -> Conn:
    # No command_timeout here: the store bounds each call with a trio deadline instead
    # (PostgresStore._call), which costs less on trio-asyncio's loop than asyncpg's timer.
    conn: Conn = await asyncpg.connect(
        dsn,
        timeout=settings.connect_timeout,
        server_settings={"application_name": "iron-defer-trio"},
    )
    try:
        # jsonb comes back as Python objects; parameters are sent as text and cast in SQL.
        await conn.set_type_codec(
            "jsonb", schema="pg_catalog", encoder=json.dumps, decoder=json.loads, format="text"
        )
    except BaseException:
        conn.terminate()
        raise
    return conn


async def _aio_settle(conn: Conn) -> None:
    # asyncpg holds any new statement until a pending cancellation is acknowledged.
    await conn.execute(TASKS["ping"])


async def _aio_close(conn: Conn) -> None:
    await conn.close(timeout=CLOSE_TIMEOUT)


class ConnectionPool:
    """Connections for one store. Open with :meth:`open`, close with :meth:`aclose`."""

    def __init__(self, bridge: Bridge, dsn: str, settings: DatabaseSettings, log: Logger) -> None:
        self._bridge = bridge
        self._dsn = dsn
        self._settings = settings
        self._log = log
        self._slots = trio.Semaphore(settings.max_connections)
        #: Idle connections with the trio time they were released, most recent last.
        self._idle: list[tuple[Conn, float]] = []
        self._in_use = 0
        self._opening = 0
        self._closed = False
        self._last_warning = -math.inf

    async def open(self) -> None:
        """Open the first connection, so an unreachable database fails here.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        conn = await self._bridge.call(_aio_connect, self._dsn, self._settings)
        self._idle.append((conn, trio.current_time()))

    def connection(self) -> _Lease:
        """A connection for the block (``async with pool.connection() as conn``). Use it
        through the bridge only.

        Raises:
            StoreUnavailable: no connection became free within ``command_timeout``, or a new
                one could not be opened.
        """
        return _Lease(self)

    def statistics(self) -> PoolStatistics:
        """Open, idle and busy connections and waiting calls (from memory)."""
        idle = len(self._idle)
        return PoolStatistics(
            size=idle + self._in_use + self._opening,
            idle=idle,
            in_use=self._in_use,
            waiting=self._slots.statistics().tasks_waiting,
            max_size=self._settings.max_connections,
        )

    async def aclose(self) -> None:
        """Close every idle connection (in-use ones are terminated as they come back)."""
        self._closed = True
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            while idle:
                conn, _ = idle.pop()
                try:
                    await self._bridge.call(_aio_close, conn)
                except Exception:
                    conn.terminate()
        for conn, _ in idle:
            conn.terminate()

    # --- internals ------------------------------------------------------------------------

    async def _acquire_slot(self) -> None:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            self._slots.acquire_nowait()
            return
        except trio.WouldBlock:
            pass
        started = trio.current_time()
        with trio.move_on_after(self._settings.command_timeout) as scope:
            await self._slots.acquire()
        waited = trio.current_time() - started
        if scope.cancelled_caught:
            raise StoreUnavailable(
                f"no database connection became free within {waited:.3g} s "
                f"(all {self._settings.max_connections} in use)"
            )
        if waited >= self._settings.pool_wait_warning:
            self._saturated(waited)

    async def _take(self) -> Conn:
        """An idle live connection, or a new one (the caller holds a slot)."""
        now = trio.current_time()
        while self._idle:
            conn, _ = self._idle.pop()
            if conn.is_closed():
                continue  # the server went away while it was idle
            self._close_stale(now)
            return conn
        self._opening += 1
        try:
            return await self._bridge.call(_aio_connect, self._dsn, self._settings)
        finally:
            self._opening -= 1

    async def _settle(self, conn: Conn) -> None:
        """After a timeout or a cancellation, wait until the server acknowledged the cancel
        request asyncpg sent: only then has the interrupted statement certainly stopped, so a
        call that raised cannot still take effect later (e.g. once a lock it waited on is
        released). A connection that does not settle in time is terminated."""
        if conn.is_closed():
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self._settings.connect_timeout):
            try:
                await self._bridge.call(_aio_settle, conn)
            except Exception:
                pass
            else:
                return
        conn.terminate()

    def _give_back(self, conn: Conn) -> None:
        # Still usable after an error or a cancellation: asyncpg makes the next statement
        # wait until the server acknowledged the cancel request, and closes the connection
        # itself when the cancel fails or the connection is lost.
        # A connection still inside a transaction (a rollback that failed) must never be
        # handed to the next caller: its statements would join that transaction.
        if not self._closed and not conn.is_closed() and not conn.is_in_transaction():
            self._idle.append((conn, trio.current_time()))
        else:
            conn.terminate()

    def _close_stale(self, now: float) -> None:
        # The oldest idle connections sit at the front; keep at least one open.
        while len(self._idle) > 1 and now - self._idle[0][1] > IDLE_LIFETIME:
            conn, _ = self._idle.pop(0)
            # An idle session ended by closing its socket: the server treats that as a
            # normal disconnect.
            conn.terminate()

    def _saturated(self, waited: float) -> None:
        now = trio.current_time()
        if now - self._last_warning < SATURATION_WARNING_INTERVAL:
            return
        self._last_warning = now
        self._log.warning(
            "pool_saturated",
            waited_seconds=round(waited, 3),
            waiting=self._slots.statistics().tasks_waiting,
            max_connections=self._settings.max_connections,
            advice="raise database.max_connections or lower queue concurrency",
        )


class _Lease:
    """One unit of work's hold on a slot and a connection (see :meth:`ConnectionPool.connection`).

    A class rather than an ``asynccontextmanager``: every store call enters one, and an async
    generator costs ~8 us more per call here (trio-asyncio hooks the creation of every async
    generator in the process).
    """

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: Conn | None = None

    async def __aenter__(self) -> Conn:
        pool = self._pool
        await pool._acquire_slot()
        try:
            conn = await pool._take()
        except BaseException:
            pool._slots.release()
            raise
        pool._in_use += 1
        self._conn = conn
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        pool, conn = self._pool, self._conn
        assert conn is not None
        self._conn = None
        try:
            # A refused statement leaves the connection ready; anything else (a timeout, a
            # cancellation, a lost socket) may have left a statement to settle first.
            if exc is not None and (
                not isinstance(exc, StoreError) or isinstance(exc, StoreUnavailable)
            ):
                await pool._settle(conn)
        finally:
            pool._in_use -= 1
            pool._give_back(conn)
            pool._slots.release()
