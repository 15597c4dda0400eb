"""``Engine.transaction()``'s handle: the application's SQL and enqueues in one transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

from iron_defer_trio.engine._arguments import split_queue_and_task
from iron_defer_trio.errors import EngineClosed

if TYPE_CHECKING:
    import builtins
    from collections.abc import Sequence
    from datetime import datetime

    from iron_defer_trio.domain import EnqueuedTask, Task
    from iron_defer_trio.engine._engine import Engine
    from iron_defer_trio.store.protocol import StoreTransaction


class Transaction:
    """One open database transaction (from :meth:`Engine.transaction`).

    Run your own statements with :meth:`execute` and the ``fetch*`` methods (asyncpg-style
    ``$1`` parameters; rows are read-only mappings of column name to value) and enqueue with
    :meth:`enqueue` / :meth:`enqueue_many`, which take the same arguments as the engine's.
    Everything commits or rolls back together when the ``async with`` block ends.
    """

    def __init__(self, engine: Engine, transaction: StoreTransaction) -> None:
        self._engine = engine
        self._transaction: StoreTransaction | None = transaction
        #: Enqueued in this transaction: reported (metrics, logs) only after the commit.
        self._records: builtins.list[EnqueuedTask] = []

    def _close(self) -> None:
        self._transaction = None

    def _open(self) -> StoreTransaction:
        if self._transaction is None:
            raise EngineClosed("the transaction is over: use it inside its async with block")
        return self._transaction

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement; return its status tag (``"INSERT 0 1"``)."""
        return await self._open().execute(query, *args)

    async def fetch(self, query: str, *args: Any) -> builtins.list[Any]:
        """Run a query; return its rows."""
        return await self._open().fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        """The first row of a query, or None."""
        return await self._open().fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        """The first column of the first row, or None."""
        return await self._open().fetchval(query, *args)

    @overload
    async def enqueue(
        self,
        queue: str,
        task: Task,
        /,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> EnqueuedTask: ...

    @overload
    async def enqueue(
        self,
        task: Task,
        /,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> EnqueuedTask: ...

    async def enqueue(
        self,
        queue_or_task: str | Task,
        task: Task | None = None,
        /,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> EnqueuedTask:
        """:meth:`Engine.enqueue` inside this transaction: one INSERT statement, visible to
        workers (and waking them) only at commit."""
        transaction = self._open()
        queue, the_task = split_queue_and_task(queue_or_task, task)
        new = self._engine._prepare(
            queue,
            the_task,
            priority=priority,
            scheduled_at=scheduled_at,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            attempt_timeout=attempt_timeout,
            region=region,
        )
        (record,) = await self._engine._store_new([new], transaction)
        self._records.append(record)
        return record

    async def enqueue_many(
        self,
        queue_or_tasks: str | Sequence[Task],
        tasks: Sequence[Task] | None = None,
        /,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> builtins.list[EnqueuedTask]:
        """:meth:`Engine.enqueue_many` inside this transaction."""
        transaction = self._open()
        prepared = self._engine._prepare_many(
            queue_or_tasks,
            tasks,
            priority=priority,
            scheduled_at=scheduled_at,
            max_attempts=max_attempts,
            idempotency_keys=idempotency_keys,
            attempt_timeout=attempt_timeout,
            region=region,
        )
        records = await self._engine._store_new(prepared, transaction)
        self._records.extend(records)
        return records
