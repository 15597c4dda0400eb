"""The only place where trio meets asyncio.

asyncpg is asyncio-only. A :class:`Bridge` owns a private asyncio loop opened with
``trio_asyncio.open_loop()`` and crosses into it two ways, both translating errors:
:meth:`Bridge.call` runs the coroutine as an asyncio task (anything: connecting, closing,
migrating), :meth:`Bridge.run_inline` steps it from the calling trio task (the store's
statements, the hot path). Every asyncio callback on that loop costs ~15 us (3-4x plain
asyncio) and an asyncio task adds three of them per call, so callers cross once per unit of
work with a connection already in hand (see ``_pool``), statements keep round trips few, and
the statements skip the task.

Importing trio-asyncio replaces ``asyncio.new_event_loop`` for the whole process (its own
design: loops then know about trio), so a program that also runs plain asyncio code beside
the engine gets trio-asyncio's synchronous loop there. docs/guides/production.md says so.

Cancellation flows through: cancelling the trio scope around a crossing cancels the asyncio
task (or the future the inline coroutine waits on), asyncpg cancels the statement on the
server and the connection returns to the pool.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, TypeVarTuple

import trio
import trio_asyncio

from iron_defer_trio.errors import sole_exception
from iron_defer_trio.observability import default_logger
from iron_defer_trio.store._errors import map_db_errors

_log = default_logger()

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine

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

    async def run_inline(self, fn: Callable[[*Ts], Coroutine[Any, Any, T]], *args: *Ts) -> T:
        """Run ``fn(*args)`` like :meth:`call`, but step the coroutine in the calling trio task
        instead of an asyncio task: for the store's statements on a connection in hand.

        An asyncio task costs three trips through trio-asyncio's callback queue per call (its
        first step, its wake-up, its completion reaching trio); stepping the coroutine here
        leaves none: the future it waits on wakes this task directly (:func:`_wake_directly`).
        That is ~100 us of CPU and ~130 us of latency less per statement. The coroutine sees
        no current asyncio task, so it must not use ``asyncio.timeout`` or
        ``asyncio.current_task`` (asyncpg's statement methods without a timeout do not);
        anything else goes through :meth:`call`.

        A trio cancellation cancels the future the coroutine waits on, as cancelling an asyncio
        task would (asyncpg then cancels the statement on the server), and comes out as
        ``trio.Cancelled`` once the coroutine has finished.

        Raises:
            StoreError: (or a subclass) for any driver or socket error.
        """
        with map_db_errors():
            return await _step_through(fn(*args))

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
            _wake_directly(loop)
            yield Bridge(loop)
    except BaseExceptionGroup as group:
        leaf = sole_exception(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


class _Wake:
    """A done callback that makes a trio task runnable. The loop calls it at once instead of
    queueing it (see :func:`_wake_directly`)."""

    __slots__ = ("_task",)

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self._task = task

    def __call__(self, _future: object) -> None:
        trio.lowlevel.reschedule(self._task)


def _wake_directly(loop: Any) -> None:
    """Let the loop run :class:`_Wake` callbacks as soon as they are scheduled.

    asyncio hands a future's done callbacks to ``loop.call_soon``; on trio-asyncio's loop each
    is one more trip through its callback queue (a handle, a channel send, a pass of its main
    task). A :class:`_Wake` only marks a trio task runnable, which trio itself defers to its
    next scheduler pass, so running it at once keeps asyncio's "not inside set_result"
    ordering and saves the trip: ~15 us of CPU and one scheduler pass of latency per
    statement. Every other callback is queued as before.
    """
    queue_soon = loop.call_soon

    def call_soon(callback: Callable[..., object], *args: Any, **context: Any) -> Any:
        if type(callback) is _Wake:
            callback(*args)
            return None
        return queue_soon(callback, *args, **context)

    loop.call_soon = call_soon


async def _step_through(coro: Coroutine[Any, Any, T]) -> T:
    """Drive an asyncio coroutine from the current trio task (see :meth:`Bridge.run_inline`)."""
    task = trio.lowlevel.current_task()
    raise_cancel: Callable[[], NoReturn] | None = None
    waited_on: asyncio.Future[Any] | None = None
    wake = _Wake(task)

    def abort(raise_cancel_arg: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
        nonlocal raise_cancel
        raise_cancel = raise_cancel_arg
        if waited_on is not None:
            # The cancellation's wake-up goes through the loop's queue: it must not reach
            # trio while trio is still asking this function whether the abort succeeded.
            waited_on.remove_done_callback(wake)
            waited_on.add_done_callback(lambda _future: trio.lowlevel.reschedule(task))
            waited_on.cancel()
        # Keep waiting: the coroutine must see the cancellation and finish first.
        return trio.lowlevel.Abort.FAILED

    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            yielded = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        except asyncio.CancelledError:
            if raise_cancel is None:
                raise  # cancelled by asyncio code itself, not by trio
            raise_cancel()
        value, error = None, None
        if yielded is None:
            # A bare yield (asyncio.sleep(0)): let others run, as the asyncio loop would.
            await trio.lowlevel.cancel_shielded_checkpoint()
            continue
        if not getattr(yielded, "_asyncio_future_blocking", False):
            error = RuntimeError(f"the coroutine yielded {yielded!r}, not an asyncio future")
            continue
        yielded._asyncio_future_blocking = False
        waited_on = yielded
        waited_on.add_done_callback(wake)
        await trio.lowlevel.wait_task_rescheduled(abort)
        waited_on = None
        try:
            value = yielded.result()
        except BaseException as exc:  # handed to the coroutine, as an asyncio task does
            error = exc


def _log_background_error(_loop: Any, context: dict[str, Any]) -> None:
    exception = context.get("exception")
    _log.warning(
        "asyncio_background_error",
        message=str(context.get("message", "")),
        error=None if exception is None else f"{type(exception).__name__}: {exception}",
    )
