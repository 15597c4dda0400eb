"""The only place where trio meets asyncio.

asyncpg is asyncio-only. A :class:`Bridge` owns a private asyncio loop opened with
``trio_asyncio.open_loop()`` and crosses into it through one helper, :meth:`Bridge.call`,
which also translates errors. A crossing costs ~30 us of CPU and every asyncio callback on
that loop ~15 us (3-4x plain asyncio), so callers cross once per unit of work with a
connection already in hand (see ``_pool``), and the statements keep round trips few.

Importing trio-asyncio replaces ``asyncio.new_event_loop`` for the whole process (its own
design: loops then know about trio), so a program that also runs plain asyncio code beside
the engine gets trio-asyncio's synchronous loop there. docs/guides/production.md says so.

Cancellation flows through: cancelling the trio scope around ``call`` cancels the asyncio
task, asyncpg cancels the statement on the server and the connection returns to the pool.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

import trio_asyncio

from iron_defer_trio.errors import sole_exception
from iron_defer_trio.observability import default_logger
from iron_defer_trio.store._errors import map_db_errors

_log = default_logger()

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Bridge:
    """A private asyncio loop and the one way into it."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop

    async def call(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run the asyncio coroutine function ``fn(*args)`` on the private loop.

        Raises:
            StoreError: (or a subclass) for any driver or socket error.
        """
        with map_db_errors():
            result: T = await trio_asyncio.aio_as_trio(fn, loop=self._loop)(*args)
            return result

    def call_soon(self, fn: Callable[[*Ts], object], *args: *Ts) -> None:
        """Schedule a plain callback on the private loop (used to close listener
        connections from a termination callback)."""
        self._loop.call_soon(fn, *args)


@asynccontextmanager
async def open_bridge() -> AsyncIterator[Bridge]:
    """Open a private asyncio loop for the lifetime of the block.

    Every asyncio object (pool, connection) created through the bridge must be closed before
    the block ends. An exception from the block (or from opening the loop) comes out as
    itself, not wrapped in the exception groups of the loop's nursery.
    """
    try:
        async with trio_asyncio.open_loop() as loop:
            # trio-asyncio's default handler re-raises whatever asyncio reports through
            # call_exception_handler into the loop's nursery, which tears the whole store
            # down. asyncpg reports such errors from its pool's background reconnects while a
            # server restarts ("Future exception was never retrieved"); they concern no caller,
            # so they are logged instead.
            loop.set_exception_handler(_log_background_error)
            yield Bridge(loop)
    except BaseExceptionGroup as group:
        leaf = sole_exception(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


def _log_background_error(_loop: Any, context: dict[str, Any]) -> None:
    exception = context.get("exception")
    _log.warning(
        "asyncio_background_error",
        message=str(context.get("message", "")),
        error=None if exception is None else f"{type(exception).__name__}: {exception}",
    )
