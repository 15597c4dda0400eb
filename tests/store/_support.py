"""Small helpers shared by the store contract tests (no fixtures, no I/O of their own
except through the :class:`tests.pg.Db` they are given)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import trio
import trio_asyncio

from iron_defer_trio.domain import NewTask, TaskRecord
from tests import pg

if TYPE_CHECKING:
    from collections.abc import Iterator
    from uuid import UUID

    from tests.pg import Db

#: Every column of iron_defer.tasks, to compare whole rows before and after a refused change.
ROW = "SELECT * FROM iron_defer.tasks WHERE id = $1"


#: new_task's default payload marker (None is a valid JSON payload: null).
_EMPTY: Any = object()


def new_task(
    queue: str = "default",
    kind: str = "job",
    *,
    payload: Any = _EMPTY,
    priority: int = 0,
    max_attempts: int = 3,
    scheduled_at: datetime | None = None,
) -> NewTask:
    """A NewTask with test defaults (payload ``{}`` unless given)."""
    return NewTask(
        queue=queue,
        kind=kind,
        payload_json=json.dumps({} if payload is _EMPTY else payload),
        priority=priority,
        max_attempts=max_attempts,
        scheduled_at=scheduled_at,
    )


async def db_now(db: Db) -> datetime:
    """The database clock (timezone-aware)."""
    value: datetime = await db.fetchval("SELECT now()")
    return value


def seconds(value: float) -> timedelta:
    """``timedelta(seconds=value)``, for readable time arithmetic."""
    return timedelta(seconds=value)


async def row(db: Db, task_id: UUID) -> dict[str, Any]:
    """The task's row as a plain dict (empty when there is no such row)."""
    found = await db.fetchrow(ROW, task_id)
    return {} if found is None else dict(found)


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside ``exc`` (``exc`` itself when it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in exc.exceptions:
            found.extend(leaves(inner))
        return found
    return [exc]


async def parameter_count(db: Db, sql: str) -> int:
    """Prepare ``sql`` on the test connection (server-side parse and plan) and return how
    many parameters the server inferred for it."""
    statement = await trio_asyncio.aio_as_trio(db._conn.prepare, loop=db._loop)(sql)
    return len(statement.get_parameters())


async def wait_for_rows(db: Db, sql: str, *args: Any, want: int, poll: float = 0.02) -> None:
    """Poll ``sql`` (a count) until it returns ``want``; the caller bounds it with
    ``fail_after``."""
    while await db.fetchval(sql, *args) != want:
        await trio.sleep(poll)


@contextmanager
def module_database(template: str, prefix: str) -> Iterator[str]:
    """A migrated database cloned from ``template`` for a module whose tests only add rows
    with fresh ids and look at those (a database per test costs ~0.3 s); dropped after."""
    name = pg.unique_name(prefix)
    pg.run_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield pg.dsn_for(name)
    finally:
        pg.run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def as_stored(record: TaskRecord) -> TaskRecord:
    """An enqueue's result as ``get`` reads it back: the plain record, without ``created``."""
    return TaskRecord.model_validate(record.model_dump(exclude={"created"}))
