"""What a task is: the user-facing :class:`Task` base class, the :class:`TaskContext` a handler
receives, and the records the store returns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Protocol, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, JsonValue

from iron_defer_trio.domain.limits import validate_checkpoint_json
from iron_defer_trio.domain.periodic import Periodic
from iron_defer_trio.domain.retry import RetryPolicy
from iron_defer_trio.domain.status import TaskStatus
from iron_defer_trio.errors import InvalidTaskError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_ModelT = TypeVar("_ModelT", bound=BaseModel)


class Task(BaseModel):
    """Base class of every task: a pydantic model whose fields are the task's JSON payload.

    Subclass it, name the kind and implement :meth:`execute`::

        class SendEmail(Task):
            KIND: ClassVar[str] = "send_email"
            to: str
            subject: str

            async def execute(self, ctx: TaskContext) -> None:
                ...

    Optional class attributes set per-class defaults that ``enqueue`` arguments override:
    ``QUEUE`` (used when enqueue names no queue), ``PRIORITY``, ``MAX_ATTEMPTS``, ``RETRY``
    (a :class:`RetryPolicy`) and ``ATTEMPT_TIMEOUT`` (seconds).

    Tasks are frozen and reject unknown fields, so a typo in a submitted payload is an error
    rather than a silently ignored value. Override ``model_config`` to relax that.
    """

    # allow_inf_nan=False: JSON has no infinity or NaN, and serialising them would store null.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    #: Stable name stored with each task and used to find its class when it runs. Changing it
    #: strands the tasks already queued under the old name.
    KIND: ClassVar[str]
    #: Queue used when ``enqueue`` is not given one (``"default"`` when None).
    QUEUE: ClassVar[str | None] = None
    #: Higher runs first; -32768..32767.
    PRIORITY: ClassVar[int] = 0
    #: Attempts before the task fails for good (the engine's ``worker.max_attempts`` when None).
    MAX_ATTEMPTS: ClassVar[int | None] = None
    #: Backoff between attempts (the engine's ``worker.base_delay``/``max_delay`` when None).
    RETRY: ClassVar[RetryPolicy | None] = None
    #: Seconds an attempt may run before it fails as timed out (no limit when None).
    ATTEMPT_TIMEOUT: ClassVar[float | None] = None
    #: Region the task is pinned to unless ``enqueue`` says otherwise (None: unpinned, any
    #: engine runs it).
    REGION: ClassVar[str | None] = None

    async def execute(self, ctx: TaskContext) -> None:
        """Do the work. Returning completes the task; raising fails this attempt.

        Raise :class:`~iron_defer_trio.TaskError` with ``retry=False`` to fail at once, or
        :class:`~iron_defer_trio.RetryAfter` to retry after a chosen delay. Any other exception
        is retried with backoff while attempts remain. The engine may cancel the call (graceful
        shutdown past its deadline, or a lost lease); the task is then handed back, not failed.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement execute()")

    #: Schedules that enqueue this class with no arguments (every field needs a default), e.g.
    #: ``PERIODIC = (Periodic("0 3 * * *", timezone="Europe/Paris"),)``; leave their ``task``
    #: out. Engines that register the class run them (see docs/guides/periodic-tasks.md).
    PERIODIC: ClassVar[Sequence[Periodic]] = ()


class TaskLogger(Protocol):
    """The logging interface handlers get (a structlog bound logger satisfies it)."""

    def debug(self, event: str, /, *args: Any, **kw: Any) -> Any: ...
    def info(self, event: str, /, *args: Any, **kw: Any) -> Any: ...
    def warning(self, event: str, /, *args: Any, **kw: Any) -> Any: ...
    def error(self, event: str, /, *args: Any, **kw: Any) -> Any: ...
    def exception(self, event: str, /, *args: Any, **kw: Any) -> Any: ...


class SuspendRequested(BaseException):
    """Raised by :meth:`TaskContext.suspend` to end the attempt; the engine catches it.

    A BaseException, like trio.Cancelled, so that a handler's ``except Exception`` does not
    swallow it. Never raise it yourself."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskContext:
    """What a running handler knows about its task and attempt."""

    task_id: UUID
    queue: str
    kind: str
    #: This attempt's number, counting from 1.
    attempt: int
    max_attempts: int
    #: Identity of the engine process running the attempt (new at every engine start).
    worker_id: UUID
    #: When the task became due.
    scheduled_at: datetime
    #: A logger already bound with task_id, queue, kind, attempt and worker_id.
    log: TaskLogger = field(repr=False)
    #: Progress saved by :meth:`checkpoint` in an earlier attempt (None when there is none).
    #: It is what the attempt started with: a checkpoint written now shows in the next one.
    last_checkpoint: JsonValue = field(default=None, repr=False)
    #: Seconds this attempt may run before it fails as timed out (None: no limit).
    attempt_timeout: float | None = None
    #: Writes a checkpoint (given by the engine; None outside an engine, e.g. in unit tests).
    save_checkpoint: Callable[[str], Awaitable[None]] | None = field(default=None, repr=False)
    #: What the latest ``engine.signal`` sent (None before any signal).
    signal_payload: JsonValue = field(default=None, repr=False)

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure of this attempt fails the task for good."""
        return self.attempt >= self.max_attempts

    async def checkpoint(self, data: JsonValue | BaseModel) -> None:
        """Save progress (any JSON value, or a pydantic model) durably, without ending the
        attempt: if this attempt dies (crash, lost lease, failure) the next one finds it in
        :attr:`last_checkpoint`. Each call replaces the previous checkpoint; completing the
        task clears it.

        Raises:
            InvalidTaskError: ``data`` is over 1 MiB as JSON, or cannot be encoded.
            trio.Cancelled: the attempt lost its lease (another worker owns the task now).
        """
        if isinstance(data, BaseModel):
            encoded = data.model_dump_json()
        else:
            try:
                encoded = json.dumps(data, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidTaskError(f"the checkpoint cannot be encoded as JSON: {exc}") from None
        validate_checkpoint_json(encoded)
        if self.save_checkpoint is None:
            raise InvalidTaskError("checkpoint() needs a running engine (no writer was given)")
        await self.save_checkpoint(encoded)

    async def suspend(self, checkpoint: JsonValue | BaseModel = None) -> NoReturn:
        """End this attempt and park the task as ``suspended`` until ``engine.signal`` (REST
        ``POST /tasks/{id}/signal``, CLI ``tasks signal``) makes it pending again; the next
        attempt reads the signal's payload in :attr:`signal_payload`. Code after this call
        does not run. The worker slot is freed at once; the suspended attempt does not count
        against ``max_attempts``. ``checkpoint``, when given, is saved first (see
        :meth:`checkpoint`). A task suspended longer than ``worker.suspend_timeout`` fails.
        """
        if checkpoint is not None:
            await self.checkpoint(checkpoint)
        raise SuspendRequested()

    def last_checkpoint_as(self, model: type[_ModelT]) -> _ModelT | None:
        """:attr:`last_checkpoint` validated as ``model`` (None when there is none)."""
        if self.last_checkpoint is None:
            return None
        return model.model_validate(self.last_checkpoint)


class TaskRecord(BaseModel):
    """A task as stored in the database, at the moment it was read."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    queue: str
    kind: str
    #: The task's fields as JSON.
    payload: JsonValue
    status: TaskStatus
    priority: int
    #: Attempts started so far (the running one included).
    attempts: int
    max_attempts: int
    #: Message of the most recent failure, at most 4096 bytes.
    last_error: str | None
    #: Earliest time a worker may claim the task.
    scheduled_at: datetime
    created_at: datetime
    updated_at: datetime
    #: Worker holding the lease while running, else None.
    claimed_by: UUID | None
    #: Lease expiry while running; the sweeper recovers the task after it.
    claimed_until: datetime | None
    #: Start of the latest attempt.
    started_at: datetime | None
    #: When the task reached a final status.
    finished_at: datetime | None
    #: W3C trace context of the code that enqueued it; each attempt is a span of that trace.
    traceparent: str | None = None
    #: The producer's idempotency key, unique in the queue while the task is active and for
    #: ``worker.idempotency_retention`` after it finished (then None: the key is free again).
    idempotency_key: str | None = None
    #: The handler's latest saved progress (``ctx.checkpoint``); cleared on completion.
    checkpoint: JsonValue = None
    #: Seconds an attempt may run before it fails as timed out (None: no limit).
    attempt_timeout: float | None = None
    #: When the task suspended (None unless it is suspended).
    suspended_at: datetime | None = None
    #: What the latest signal carried (None before any).
    signal_payload: JsonValue = None
    #: When cancellation was requested while the task ran (None: never). It stays set once
    #: the task ended: cancelled, or completed when the handler returned first.
    cancel_requested_at: datetime | None = None
    #: Only engines with this ``worker.region`` claim the task (None: any engine).
    region: str | None = None


class EnqueuedTask(TaskRecord):
    """What ``enqueue`` returns: the task as stored, and whether this call created it.

    ``created`` is False when the idempotency key already belonged to a task of the queue:
    that task is returned and nothing was inserted.
    """

    created: bool = True


class AuditEntry(BaseModel):
    """One state change of a task, from the audit log (``database.audit_log``)."""

    model_config = ConfigDict(frozen=True)

    #: Position in the log (increasing; the keyset cursor of pagination).
    id: int
    task_id: UUID
    #: enqueue, claim, complete, retry, fail, cancel, recover, release, suspend or signal.
    event: str
    #: None for enqueue.
    from_status: TaskStatus | None
    to_status: TaskStatus
    at: datetime
    #: The attempt the change concerns (0 before the first claim).
    attempt: int
    #: The engine that made the change (None for producers: enqueue, cancel).
    worker_id: UUID | None
    #: The trace the task belongs to (from its traceparent), if any.
    trace_id: str | None
    #: Details such as ``{"error": ...}`` for retry and fail, ``{"reason": "shutdown"}``.
    metadata: dict[str, Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewTask:
    """A validated task ready to be inserted (the store's input).

    A plain dataclass: the engine validates every field before building one, and a bulk
    enqueue builds one per task (a pydantic model cost 3 us more each)."""

    queue: str
    kind: str
    #: The payload already encoded as JSON text (encoded once, size-checked by the engine).
    payload_json: str
    priority: int
    max_attempts: int
    #: None means "now" by the database clock.
    scheduled_at: datetime | None
    #: W3C ``traceparent`` to continue the enqueuing trace in (None: no tracing).
    traceparent: str | None = None
    #: Deduplicates submissions per queue (None: always a new task).
    idempotency_key: str | None = None
    #: Attempt timeout in seconds (None: no limit).
    attempt_timeout: float | None = None
    #: Only engines with this ``worker.region`` claim the task (None: any engine).
    region: str | None = None


class QueueStatistics(BaseModel):
    """Counts for one queue, read in one query."""

    model_config = ConfigDict(frozen=True)

    queue: str
    pending: int
    #: Pending tasks whose ``scheduled_at`` is still in the future (included in ``pending``).
    scheduled: int
    running: int
    #: Tasks waiting for a signal (``ctx.suspend()``).
    suspended: int
    completed: int
    failed: int
    cancelled: int
    #: Distinct workers holding a lease on this queue's tasks.
    active_workers: int
    #: Seconds the oldest due pending task has waited past its ``scheduled_at`` (None if none).
    oldest_pending_age: float | None
    #: The region these counts are for, when grouped by region (None: unpinned tasks, or
    #: not grouped).
    region: str | None = None
    #: When the queue was paused (None: it is not paused).
    paused_at: datetime | None = None


class QueueThroughput(BaseModel):
    """Tasks one queue completed in consecutive time buckets of the recent past."""

    model_config = ConfigDict(frozen=True)

    queue: str
    #: Length of one bucket, in seconds.
    bucket_seconds: float
    #: Completions per bucket, oldest first; the last bucket ends now.
    completed: tuple[int, ...]

    @property
    def per_second(self) -> float:
        """Mean completions per second over the whole window."""
        window = self.bucket_seconds * len(self.completed)
        return sum(self.completed) / window if window else 0.0


class PoolStatistics(BaseModel):
    """The engine's connection pool, read from memory."""

    model_config = ConfigDict(frozen=True)

    #: Connections open now.
    size: int
    #: Open connections not in use.
    idle: int
    #: Connections in use.
    in_use: int
    #: Calls waiting for a free connection.
    waiting: int
    #: The pool's upper bound (database.max_connections).
    max_size: int
