"""The TaskStore on PostgreSQL through asyncpg.

Each public method is a trio coroutine that takes a connection from the trio-side pool
(:mod:`iron_defer_trio.store._pool`) and crosses the bridge once: the asyncio-side functions
below (prefixed ``_aio_``) run the whole unit of work on that connection.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, TypeVarTuple

import asyncpg
import trio

from iron_defer_trio.domain import (
    AuditEntry,
    EnqueuedTask,
    NewTask,
    PoolStatistics,
    QueueStatistics,
    QueueThroughput,
    TaskRecord,
    TaskStatus,
)
from iron_defer_trio.domain.periodic import PeriodicSchedule, ScheduleDefinition
from iron_defer_trio.errors import ConfigError, StoreUnavailable
from iron_defer_trio.observability import Logger, default_logger
from iron_defer_trio.store._bridge import Bridge, open_bridge
from iron_defer_trio.store._ids import uuid7
from iron_defer_trio.store._migrate import MigrationReport, apply_migrations, load_migrations
from iron_defer_trio.store._pool import ConnectionPool
from iron_defer_trio.store._queries import OPERATIONS, TASKS
from iron_defer_trio.store.protocol import (
    CancelResult,
    ExpiredSuspension,
    FinishResult,
    HeldLease,
    Notification,
    NotificationKind,
    Outcome,
    OutcomeKind,
    PeriodicFire,
    RecoveredTask,
    RetryResult,
    SignalResult,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
    from datetime import datetime
    from uuid import UUID

    from iron_defer_trio.config import DatabaseSettings

#: The NOTIFY channel of new work; the payload is the queue name.
CHANNEL = "iron_defer"
#: The NOTIFY channel of cancel requests for running tasks; the payload is the task id.
CANCEL_CHANNEL = "iron_defer_cancel"
_CHANNEL_KINDS = {CHANNEL: NotificationKind.WAKE, CANCEL_CHANNEL: NotificationKind.CANCEL}
#: Notifications waiting for the engine. They are only wake-ups (the poll catches up), so
#: when the engine falls this far behind, dropping more is harmless.
_NOTIFY_BUFFER = 1024
#: Time allowed to close a listener when the block exits, even if cancelled.
_CLOSE_TIMEOUT = 5.0

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# asyncpg's classes are generic only in its stubs, so the alias is a string.
_Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"


# --- asyncio side -------------------------------------------------------------------------


async def _aio_fetch(conn: _Conn, sql: str, args: Sequence[Any]) -> list[Any]:
    rows: list[Any] = await conn.fetch(sql, *args)
    return rows


async def _aio_execute(conn: _Conn, sql: str, args: Sequence[Any]) -> str:
    status: str = await conn.execute(sql, *args)
    return status


async def _aio_fetchrow(conn: _Conn, sql: str, args: Sequence[Any]) -> Any:
    return await conn.fetchrow(sql, *args)


async def _aio_fetchval(conn: _Conn, sql: str, args: Sequence[Any]) -> Any:
    return await conn.fetchval(sql, *args)


async def _aio_begin(conn: _Conn) -> Any:
    transaction = conn.transaction()
    await transaction.start()
    return transaction


async def _aio_commit(transaction: Any) -> None:
    await transaction.commit()


async def _aio_rollback(transaction: Any) -> None:
    await transaction.rollback()


async def _aio_signal(conn: _Conn, task_id: UUID, payload: str, audit: bool) -> tuple[Any, Any]:
    row = await conn.fetchrow(TASKS["signal"], task_id, payload, audit)
    if row is not None:
        return row, None
    return None, await conn.fetchrow(TASKS["get"], task_id)


async def _aio_cancel(conn: _Conn, task_id: UUID, audit: bool) -> tuple[Any, Any]:
    row = await conn.fetchrow(TASKS["cancel"], task_id, audit)
    if row is not None:
        return row, None
    # Finished (or absent): read what it is now, after the refused change.
    return None, await conn.fetchrow(TASKS["get"], task_id)


async def _aio_listen(
    dsn: str,
    connect_timeout: float,
    on_notify: Callable[[Any, int, str, object], None],
    on_terminate: Callable[[Any], None],
) -> _Conn:
    conn: _Conn = await asyncpg.connect(
        dsn,
        timeout=connect_timeout,
        server_settings={"application_name": "iron-defer-trio listen"},
    )
    try:
        for channel in _CHANNEL_KINDS:
            await conn.add_listener(channel, on_notify)
    except BaseException:
        conn.terminate()
        raise
    conn.add_termination_listener(on_terminate)
    return conn


async def _aio_ping(conn: _Conn) -> None:
    await conn.fetchval(TASKS["ping"])


async def _aio_close_conn(conn: _Conn) -> None:
    await conn.close()


# --- rows to domain -----------------------------------------------------------------------


#: TaskRecord's fields, all of them columns of iron_defer.tasks.
_RECORD_FIELDS = tuple(TaskRecord.model_fields)
# _record fills a TaskRecord's instance dict directly (pydantic's model_construct does the same
# plus per-field default handling, 3-4x slower). That is only sound while the model has no
# private attributes, post-init hook or extra fields: fail at import if one appears.
for _cls in (TaskRecord, EnqueuedTask):
    assert not _cls.__private_attributes__ and _cls.__pydantic_post_init__ is None
    assert _cls.model_config.get("extra") in (None, "ignore")


def _record(row: Any) -> TaskRecord:
    """A row of iron_defer.tasks as a TaskRecord (see :func:`_records`)."""
    return _records([row])[0]


def _records(rows: Sequence[Any]) -> list[TaskRecord]:
    """Rows of one statement as TaskRecords, without re-validation: the schema's types and
    CHECK constraints already guarantee every field. The columns are picked by position,
    found once per statement rather than by name in every row (claims build one per task)."""
    pick = _picker(rows)
    return [_construct(TaskRecord, _values(pick(row))) for row in rows]


def _enqueued_many(rows: Sequence[Any]) -> list[EnqueuedTask]:
    """Rows of the enqueue statements (a task and whether the statement created it)."""
    pick = _picker(rows)
    records = []
    for row in rows:
        values = _values(pick(row))
        values["created"] = row["created"]
        records.append(_construct(EnqueuedTask, values))
    return records


def _picker(rows: Sequence[Any]) -> Callable[[Any], tuple[Any, ...]]:
    if not rows:
        return tuple
    columns = tuple(rows[0].keys())
    pick = _PICKERS.get(columns)
    if pick is None:
        # Each statement has one column layout; finding the fields in it is most of the cost
        # of decoding a single row, so it is done once per layout.
        pick = itemgetter(*(columns.index(name) for name in _RECORD_FIELDS))
        _PICKERS[columns] = pick
    return pick


#: Field pickers by column layout (one per statement shape, a handful in all).
_PICKERS: dict[tuple[str, ...], Callable[[Any], tuple[Any, ...]]] = {}


def _values(picked: tuple[Any, ...]) -> dict[str, Any]:
    values = dict(zip(_RECORD_FIELDS, picked, strict=True))
    values["status"] = _STATUS[values["status"]]
    return values


#: A new task's fields but its id and payload: one value per batch when the tasks agree on
#: them (the last, the idempotency key, must then be None).
_shared_fields = attrgetter(
    "queue",
    "kind",
    "priority",
    "max_attempts",
    "scheduled_at",
    "traceparent",
    "attempt_timeout",
    "region",
    "idempotency_key",
)

#: Status values to members (a dict lookup is a tenth of the cost of calling the enum).
_STATUS = {status.value: status for status in TaskStatus}


_Model = TypeVar("_Model", TaskRecord, EnqueuedTask)


def _construct(cls: type[_Model], values: dict[str, Any]) -> _Model:
    record = cls.__new__(cls)
    object.__setattr__(record, "__dict__", values)
    object.__setattr__(record, "__pydantic_fields_set__", set(values))
    object.__setattr__(record, "__pydantic_extra__", None)
    object.__setattr__(record, "__pydantic_private__", None)
    return record


def _audit_entry(row: Any) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        task_id=row["task_id"],
        event=row["event"],
        from_status=None if row["from_status"] is None else TaskStatus(row["from_status"]),
        to_status=TaskStatus(row["to_status"]),
        at=row["at"],
        attempt=row["attempt"],
        worker_id=row["worker_id"],
        trace_id=row["trace_id"] or None,
        metadata=row["metadata"],
    )


_OUTCOME_STATUS = {
    OutcomeKind.COMPLETED: TaskStatus.COMPLETED,
    OutcomeKind.RETRY: TaskStatus.PENDING,
    OutcomeKind.FAILED: TaskStatus.FAILED,
    OutcomeKind.RELEASED: TaskStatus.PENDING,
    OutcomeKind.SUSPENDED: TaskStatus.SUSPENDED,
    OutcomeKind.CANCELLED: TaskStatus.CANCELLED,
}


# --- trio side ----------------------------------------------------------------------------


def _timed_out(seconds: float) -> StoreUnavailable:
    error = StoreUnavailable(f"the database did not answer within {seconds:g} s")
    error.__cause__ = TimeoutError(f"no answer within {seconds:g} s")
    return error


@dataclass(slots=True)
class _PgListener:
    notifications: trio.MemoryReceiveChannel[Notification]
    _bridge: Bridge
    _conn: _Conn
    _timeout: float

    async def ping(self) -> None:
        if self._conn.is_closed():
            raise StoreUnavailable("the LISTEN connection is closed")
        with trio.move_on_after(self._timeout):
            return await self._bridge.call(_aio_ping, self._conn)
        raise _timed_out(self._timeout)


class PgTransaction:
    """A transaction of :meth:`PostgresStore.transaction`: the application's statements and
    enqueues on one connection, each call one bridge crossing."""

    def __init__(self, store: PostgresStore, conn: _Conn) -> None:
        self._store = store
        self._conn = conn

    async def execute(self, query: str, *args: Any) -> str:
        return await self._store._call(_aio_execute, self._conn, query, args)

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return await self._store._call(_aio_fetch, self._conn, query, args)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._store._call(_aio_fetchrow, self._conn, query, args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._store._call(_aio_fetchval, self._conn, query, args)

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[EnqueuedTask]:
        if not tasks:
            return []
        query, args = self._store._enqueue_statement(tasks)
        rows = await self._store._call(_aio_fetch, self._conn, query, args)
        return _enqueued_many(rows)


class PostgresStore:
    """:class:`~iron_defer_trio.store.protocol.TaskStore` on PostgreSQL. Create it with
    :func:`open_postgres_store`."""

    def __init__(
        self, bridge: Bridge, pool: ConnectionPool, settings: DatabaseSettings, dsn: str
    ) -> None:
        self._bridge = bridge
        self._pool = pool
        self._settings = settings
        self._dsn = dsn

    async def _run(self, fn: Callable[[_Conn, *Ts], Coroutine[Any, Any, T]], *args: *Ts) -> T:
        """One unit of work: a pooled connection, one bridge crossing running ``fn(conn,
        *args)`` on the asyncio side, the connection back."""
        async with self._pool.connection() as conn:
            return await self._call(fn, conn, *args)

    async def _call(self, fn: Callable[[*Ts], Coroutine[Any, Any, T]], *args: *Ts) -> T:
        """One bridge crossing on a connection already held (stepped inline, see
        :meth:`Bridge.run_inline`), within ``command_timeout``.

        The bound is a trio deadline rather than asyncpg's ``command_timeout``: asyncpg arms an
        asyncio timer per statement, and on trio-asyncio's loop each timer is one more channel
        hop and a deadline re-armed at every callback (~50 us of CPU per statement). Either
        way the statement is cancelled on the server: asyncpg sends the cancel request when
        the future it waits on is cancelled, and the pool waits for it to settle.
        """
        timeout = self._settings.command_timeout
        with trio.CancelScope(deadline=trio.current_time() + timeout):
            return await self._bridge.run_inline(fn, *args)
        raise _timed_out(timeout)

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        return await self._run(_aio_fetch, TASKS[query], args)

    def pool_statistics(self) -> PoolStatistics:
        """The pool's size, idle and busy connections and waiting calls (from memory)."""
        return self._pool.statistics()

    async def active_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for row in await self._fetch("active_counts"):
            counts.setdefault(row["queue"], {})[row["status"]] = row["n"]
        return counts

    async def migrate(self) -> MigrationReport:
        """Apply pending migrations (see :mod:`iron_defer_trio.store._migrate`)."""
        return await self._bridge.call(_aio_migrate, self._dsn, self._settings.connect_timeout)

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[EnqueuedTask]:
        if not tasks:
            return []
        query, args = self._enqueue_statement(tasks)
        rows = await self._run(_aio_fetch, query, args)
        return _enqueued_many(rows)

    def _enqueue_statement(self, tasks: Sequence[NewTask]) -> tuple[str, tuple[Any, ...]]:
        audit = self._settings.audit_log
        if len(tasks) == 1:
            (task,) = tasks
            return TASKS["enqueue_one"], (
                uuid7(),
                task.queue,
                task.kind,
                task.payload_json,
                task.priority,
                task.max_attempts,
                task.scheduled_at,
                task.traceparent,
                task.idempotency_key,
                audit,
                task.attempt_timeout,
                task.region,
            )
        first = _shared_fields(tasks[0])
        if first[-1] is None and all(_shared_fields(t) == first for t in tasks):
            queue, kind, priority, max_attempts, scheduled_at, traceparent, timeout, region, _ = (
                first
            )
            return TASKS["enqueue_uniform"], (
                [uuid7() for _ in tasks],
                queue,
                kind,
                [t.payload_json for t in tasks],
                priority,
                max_attempts,
                scheduled_at,
                traceparent,
                audit,
                timeout,
                region,
            )
        return TASKS["enqueue"], (
            [uuid7() for _ in tasks],
            [t.queue for t in tasks],
            [t.kind for t in tasks],
            [t.payload_json for t in tasks],
            [t.priority for t in tasks],
            [t.max_attempts for t in tasks],
            [t.scheduled_at for t in tasks],
            [t.traceparent for t in tasks],
            [t.idempotency_key for t in tasks],
            audit,
            [t.attempt_timeout for t in tasks],
            [t.region for t in tasks],
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTransaction]:
        """One database transaction on one connection for the block: committed when the
        block ends normally, rolled back when it raises or is cancelled."""
        async with self._pool.connection() as conn:
            handle = await self._call(_aio_begin, conn)
            try:
                yield PgTransaction(self, conn)
            except BaseException:
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(self._settings.connect_timeout),
                    suppress(Exception),
                ):
                    await self._bridge.call(_aio_rollback, handle)
                # Not rolled back (timeout, lost connection): the pool terminates it.
                raise
            await self._call(_aio_commit, handle)

    async def signal(self, task_id: UUID, payload_json: str) -> SignalResult:
        resumed, current = await self._run(
            _aio_signal, task_id, payload_json, self._settings.audit_log
        )
        return SignalResult(
            resumed=None if resumed is None else _record(resumed),
            current=None if current is None else _record(current),
        )

    async def fail_suspended(
        self,
        *,
        older_than: float,
        limit: int,
        worker_id: UUID | None = None,
        now: datetime | None = None,
    ) -> list[ExpiredSuspension]:
        rows = await self._fetch(
            "fail_suspended", now, older_than, limit, self._settings.audit_log, worker_id
        )
        return [
            ExpiredSuspension(row["id"], row["queue"], row["kind"], row["last_error"])
            for row in rows
        ]

    async def save_checkpoint(
        self, worker_id: UUID, task_id: UUID, attempt: int, checkpoint_json: str
    ) -> bool:
        rows = await self._fetch("save_checkpoint", worker_id, task_id, attempt, checkpoint_json)
        return bool(rows)

    async def audit_log(self, task_id: UUID, *, after: int | None, limit: int) -> list[AuditEntry]:
        rows = await self._fetch("audit_log", task_id, after, limit)
        return [_audit_entry(row) for row in rows]

    async def free_idempotency_keys(
        self, *, retention: float, limit: int, now: datetime | None = None
    ) -> int:
        return len(await self._fetch("free_idempotency_keys", now, retention, limit))

    async def unlogged(self) -> bool:
        rows = await self._fetch("persistence")
        return bool(rows[0]["relpersistence"] == "u")

    async def set_unlogged(self, unlogged: bool) -> None:
        await self._fetch("set_unlogged" if unlogged else "set_logged")

    async def get(self, task_id: UUID) -> TaskRecord | None:
        rows = await self._fetch("get", task_id)
        return _record(rows[0]) if rows else None

    async def list_tasks(
        self,
        *,
        queue: str | None,
        status: TaskStatus | None,
        kind: str | None,
        before: UUID | None,
        limit: int,
        id_range: tuple[UUID, UUID] | None = None,
    ) -> list[TaskRecord]:
        low, high = (None, None) if id_range is None else id_range
        rows = await self._fetch(
            "list", queue, None if status is None else status.value, kind, before, limit, low, high
        )
        return [_record(row) for row in rows]

    async def cancel(self, task_id: UUID) -> CancelResult:
        changed, current = await self._run(_aio_cancel, task_id, self._settings.audit_log)
        if changed is not None:
            record = _record(changed)
            if record.status is TaskStatus.RUNNING:
                return CancelResult(cancelled=None, current=None, requested=record)
            return CancelResult(cancelled=record, current=None)
        return CancelResult(cancelled=None, current=None if current is None else _record(current))

    async def claim(
        self,
        queue: str,
        worker_id: UUID,
        *,
        kinds: Sequence[str],
        limit: int,
        lease: float,
        now: datetime | None = None,
        region: str | None = None,
    ) -> list[TaskRecord]:
        rows = await self._fetch(
            "claim",
            queue,
            worker_id,
            list(kinds),
            limit,
            lease,
            now,
            self._settings.audit_log,
            region,
        )
        records = _records(rows)
        # UPDATE ... RETURNING has no order; start the most urgent first.
        records.sort(key=lambda r: (-r.priority, r.scheduled_at, r.id))
        return records

    async def heartbeat(
        self,
        worker_id: UUID,
        task_ids: Sequence[UUID],
        *,
        lease: float,
        now: datetime | None = None,
    ) -> dict[UUID, HeldLease]:
        if not task_ids:
            return {}
        rows = await self._fetch("heartbeat", worker_id, list(task_ids), lease, now)
        return {row["id"]: HeldLease(row["attempts"], row["cancel_requested"]) for row in rows}

    async def finish(
        self, worker_id: UUID, outcomes: Sequence[Outcome], *, now: datetime | None = None
    ) -> list[FinishResult]:
        if not outcomes:
            return []
        rows = await self._fetch(
            "finish",
            worker_id,
            [o.task_id for o in outcomes],
            [o.attempt for o in outcomes],
            [_OUTCOME_STATUS[o.kind].value for o in outcomes],
            [o.error for o in outcomes],
            [o.delay for o in outcomes],
            [o.kind is OutcomeKind.RELEASED for o in outcomes],
            now,
            self._settings.audit_log,
        )
        return [
            FinishResult(row["id"], _STATUS[row["status"]], row["scheduled_at"]) for row in rows
        ]

    async def release_worker(self, worker_id: UUID) -> dict[UUID, TaskStatus]:
        rows = await self._fetch("release_worker", worker_id, self._settings.audit_log)
        return {row["id"]: TaskStatus(row["status"]) for row in rows}

    async def recover_expired(
        self, *, limit: int, worker_id: UUID | None = None, now: datetime | None = None
    ) -> list[RecoveredTask]:
        rows = await self._fetch("recover_expired", now, limit, worker_id, self._settings.audit_log)
        return [
            RecoveredTask(
                task_id=row["id"],
                queue=row["queue"],
                kind=row["kind"],
                status=TaskStatus(row["status"]),
                attempts=row["attempts"],
                max_attempts=row["max_attempts"],
                previous_worker=row["previous_worker"],
            )
            for row in rows
        ]

    async def ping(self) -> None:
        await self._fetch("ping")

    async def pause_queue(self, queue: str) -> datetime:
        rows = await self._fetch("pause_queue", queue)
        paused_at: datetime = rows[0]["paused_at"]
        return paused_at

    async def resume_queue(self, queue: str) -> bool:
        return bool(await self._fetch("resume_queue", queue))

    async def queue_statistics(
        self, *, by_region: bool = False, queue: str | None = None
    ) -> list[QueueStatistics]:
        rows = await self._fetch("queue_statistics", by_region, queue)
        return [
            QueueStatistics(
                queue=row["queue"],
                pending=row["pending"],
                scheduled=row["scheduled"],
                running=row["running"],
                suspended=row["suspended"],
                completed=row["completed"],
                failed=row["failed"],
                cancelled=row["cancelled"],
                active_workers=row["active_workers"],
                oldest_pending_age=row["oldest_pending_age"],
                region=row["region"],
                paused_at=row["paused_at"],
            )
            for row in rows
        ]

    async def queue_throughput(self, *, window: float, bucket: float) -> list[QueueThroughput]:
        buckets = max(1, round(window / bucket))
        counts: dict[str, list[int]] = {}
        for row in await self._fetch("queue_throughput", float(window), float(bucket)):
            # A row finished exactly `window` ago (or a clock step) may land one bucket past
            # the last: it is dropped rather than widen the window.
            ago = row["ago"]
            if 0 <= ago < buckets:
                series = counts.setdefault(row["queue"], [0] * buckets)
                series[buckets - 1 - ago] += row["completed"]
        return [
            QueueThroughput(queue=queue, bucket_seconds=bucket, completed=tuple(series))
            for queue, series in sorted(counts.items())
        ]

    async def count_due(
        self, queues: Sequence[str], kinds: Sequence[str], *, region: str | None = None
    ) -> int:
        rows = await self._fetch("count_due", list(queues), list(kinds), region)
        return int(rows[0][0])

    async def make_due(self, queues: Sequence[str]) -> int:
        rows = await self._fetch("make_due", list(queues))
        return int(rows[0]["moved"])

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[_PgListener]:
        """Open a dedicated LISTEN connection (never pooled: a pool reset would UNLISTEN)."""
        send, receive = trio.open_memory_channel[Notification](_NOTIFY_BUFFER)

        def on_notify(_conn: Any, _pid: int, channel: str, payload: object) -> None:
            # Runs on the trio thread (trio-asyncio runs asyncio callbacks there). A dropped
            # cancel request is caught up by the heartbeat, like a dropped wake-up by the poll.
            with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                send.send_nowait(Notification(_CHANNEL_KINDS[channel], str(payload)))

        def on_terminate(_conn: Any) -> None:
            send.close()

        conn = await self._bridge.call(
            _aio_listen, self._dsn, self._settings.connect_timeout, on_notify, on_terminate
        )
        try:
            async with receive:
                yield _PgListener(receive, self._bridge, conn, self._settings.connect_timeout)
        finally:
            send.close()
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT) as scope:
                try:
                    await self._bridge.call(_aio_close_conn, conn)
                except Exception:
                    conn.terminate()
            if scope.cancelled_caught:
                conn.terminate()

    async def aclose(self) -> None:
        """Close the pool's connections."""
        await self._pool.aclose()

    # --- periodic schedules ---------------------------------------------------------------

    async def register_periodic(
        self, schedules: Sequence[tuple[ScheduleDefinition, datetime]]
    ) -> list[PeriodicSchedule]:
        if not schedules:
            return []
        rows = await self._fetch(
            "register_periodic",
            [s.name for s, _ in schedules],
            [s.cron for s, _ in schedules],
            [s.timezone for s, _ in schedules],
            [s.queue for s, _ in schedules],
            [s.kind for s, _ in schedules],
            [s.missed for s, _ in schedules],
            [next_fire for _, next_fire in schedules],
        )
        return [_schedule(row) for row in rows]

    async def periodic_schedules(
        self, names: Sequence[str] | None = None
    ) -> list[PeriodicSchedule]:
        rows = await self._fetch("periodic_schedules", None if names is None else list(names))
        return [_schedule(row) for row in rows]

    async def fire_periodic(
        self,
        schedule: ScheduleDefinition,
        fire_at: datetime,
        next_fire_at: datetime,
        *,
        enqueue: bool = True,
    ) -> PeriodicFire:
        (row,) = await self._fetch(
            "fire_periodic",
            schedule.name,
            fire_at,
            next_fire_at,
            uuid7(),
            schedule.queue,
            schedule.kind,
            schedule.payload_json,
            schedule.priority,
            schedule.max_attempts,
            self._settings.audit_log,
            enqueue,
            schedule.attempt_timeout,
            schedule.region,
        )
        return PeriodicFire(fenced=row["fenced"], task_id=row["task_id"])

    # --- operations (operations.sql) -------------------------------------------------------

    async def _operation(self, query: str, *args: Any) -> list[Any]:
        return await self._run(_aio_fetch, OPERATIONS[query], args)

    async def retry(self, task_id: UUID) -> RetryResult:
        retried, current = await self._run(
            _aio_change_or_read, OPERATIONS["retry"], task_id, self._settings.audit_log
        )
        return RetryResult(
            retried=None if retried is None else _record(retried),
            current=None if current is None else _record(current),
        )

    async def count_retryable(
        self, *, queue: str, status: TaskStatus, kind: str | None, most: int
    ) -> int:
        rows = await self._operation("count_retryable", queue, status.value, kind, most)
        return int(rows[0]["matched"])

    async def retry_many(
        self,
        *,
        queue: str,
        status: TaskStatus,
        kind: str | None,
        expect: int,
        cap: int,
    ) -> tuple[int, int]:
        rows = await self._operation(
            "retry_many", queue, status.value, kind, expect, cap, self._settings.audit_log
        )
        return int(rows[0]["matched"]), int(rows[0]["retried"])

    async def delete_finished(
        self, *, status: TaskStatus, older_than: float, limit: int, now: datetime | None = None
    ) -> int:
        rows = await self._operation("delete_finished", now, status.value, older_than, limit)
        return int(rows[0]["deleted"])


def _schedule(row: Any) -> PeriodicSchedule:
    return PeriodicSchedule.model_validate(dict(row))


async def _aio_migrate(dsn: str, connect_timeout: float) -> MigrationReport:
    return await apply_migrations(
        dsn, connect_timeout=connect_timeout, migrations=load_migrations()
    )


@asynccontextmanager
async def open_postgres_store(
    settings: DatabaseSettings, *, log: Logger | None = None
) -> AsyncIterator[PostgresStore]:
    """Connect a pool (on a private asyncio loop) for the lifetime of the block.

    Raises:
        ConfigError: ``settings.url`` is not set.
        StoreUnavailable: the database cannot be reached.
    """
    if settings.url is None:
        raise ConfigError("database.url is not set (or set DATABASE_URL)")
    dsn = settings.url.get_secret_value()
    async with open_bridge() as bridge:
        pool = ConnectionPool(bridge, dsn, settings, log or default_logger())
        try:
            await pool.open()
            yield PostgresStore(bridge, pool, settings, dsn)
        finally:
            await pool.aclose()


async def migrate(settings: DatabaseSettings) -> MigrationReport:
    """Apply pending migrations to the database of ``settings`` and return what was done."""
    if settings.url is None:
        raise ConfigError("database.url is not set (or set DATABASE_URL)")
    async with open_bridge() as bridge:
        return await bridge.call(
            _aio_migrate, settings.url.get_secret_value(), settings.connect_timeout
        )


__all__ = ["CANCEL_CHANNEL", "CHANNEL", "PostgresStore", "migrate", "open_postgres_store"]


async def _aio_change_or_read(conn: _Conn, sql: str, task_id: UUID, *args: Any) -> tuple[Any, Any]:
    """Run a guarded change of one task (``sql`` with ``task_id, *args``); when it changed
    nothing, read the task in the same crossing, to tell "absent" from "wrong status"."""
    row = await conn.fetchrow(sql, task_id, *args)
    if row is not None:
        return row, None
    return None, await conn.fetchrow(TASKS["get"], task_id)
