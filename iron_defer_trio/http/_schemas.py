"""The wire contract of the REST API (and of the CLI's ``--json`` output): camelCase JSON.

These models are separate from the domain's on purpose: the domain can change without
breaking clients, and this module is where a breaking change would show.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, StrictInt
from pydantic.alias_generators import to_camel

from iron_defer_trio.domain import (
    MAX_BULK_RETRY,
    AuditEntry,
    BulkRetry,
    QueueStatistics,
    TaskRecord,
    TaskStatus,
)
from iron_defer_trio.domain.limits import (
    MAX_ATTEMPTS_LIMIT,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_PRIORITY,
    MAX_TIMEOUT,
    MIN_PRIORITY,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from iron_defer_trio.domain.periodic import PeriodicSchedule

#: Largest page of GET /tasks.
MAX_PAGE = 500
#: Page size when none is asked for.
DEFAULT_PAGE = 50


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def to_json(self) -> dict[str, Any]:
        """The JSON object clients see."""
        return self.model_dump(mode="json", by_alias=True)


class TaskOut(WireModel):
    """A task as the API returns it."""

    id: UUID
    queue: str
    kind: str
    payload: JsonValue
    status: TaskStatus
    priority: int
    attempts: int
    max_attempts: int
    last_error: str | None
    scheduled_at: datetime
    created_at: datetime
    updated_at: datetime
    claimed_by: UUID | None
    claimed_until: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    #: W3C trace context of the code that enqueued the task (null when not traced).
    traceparent: str | None = None
    #: The producer's idempotency key (null when none, or once its retention has passed).
    idempotency_key: str | None = None
    #: The handler's latest saved progress (null when none; cleared on completion).
    checkpoint: JsonValue = None
    #: Seconds an attempt may run before it fails as timed out (null: no limit).
    attempt_timeout: float | None = None
    #: When the task suspended (null unless it is suspended).
    suspended_at: datetime | None = None
    #: What the latest signal carried (null before any).
    signal_payload: JsonValue = None
    #: When cancellation was requested while the task ran (null: never); a DELETE of a
    #: running task answers 202 with this set, and the task ends cancelled soon after.
    cancel_requested_at: datetime | None = None
    #: Only engines with this worker.region run the task (null: any engine).
    region: str | None = None

    @classmethod
    def from_record(cls, record: TaskRecord) -> TaskOut:
        """Convert a domain record."""
        return cls.model_validate(record.model_dump(exclude={"created"}))


class TaskPage(WireModel):
    """One page of GET /tasks, newest first."""

    items: list[TaskOut]
    #: Pass as ``cursor`` to get the next (older) page; null on the last page.
    next_cursor: str | None

    @classmethod
    def from_records(cls, records: Sequence[TaskRecord], limit: int) -> TaskPage:
        """A page from up to ``limit + 1`` records: the extra one only tells that another
        page exists (no count query needed)."""
        page = records[:limit]
        more = len(records) > limit and bool(page)
        return cls(
            items=[TaskOut.from_record(r) for r in page],
            next_cursor=str(page[-1].id) if more else None,
        )


class CreateTask(WireModel):
    """Body of POST /tasks."""

    kind: str = Field(min_length=1, max_length=255)
    #: The task's fields; validated against the Task class registered for ``kind``.
    payload: JsonValue
    #: Default: the class's QUEUE, else "default".
    queue: str | None = None
    # Strict: JSON integers only (true or "5" are refused rather than read as 1 and 5).
    priority: StrictInt | None = Field(default=None, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    #: RFC 3339 with a timezone; default now.
    scheduled_at: AwareDatetime | None = None
    max_attempts: StrictInt | None = Field(default=None, ge=1, le=MAX_ATTEMPTS_LIMIT)
    #: Seconds an attempt may run before it fails as timed out; default the class's
    #: ATTEMPT_TIMEOUT, else no limit.
    attempt_timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)
    #: Deduplicates retries of this request within the queue (same as the Idempotency-Key
    #: header; give one or the other, or both equal).
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH, pattern=r"^[^\x00]*$"
    )
    #: Pin the task to a region (1-63 of a-z, 0-9, '-'): only engines with that worker.region
    #: run it. Default: the class's REGION, else unpinned.
    region: str | None = None


class AuditEntryOut(WireModel):
    """One state change of a task."""

    id: int
    task_id: UUID
    #: enqueue, claim, complete, retry, fail, cancel, recover, release, suspend or signal.
    event: str
    #: null for enqueue.
    from_status: TaskStatus | None
    to_status: TaskStatus
    at: datetime
    attempt: int
    #: The engine that made the change (null for enqueue and cancel).
    worker_id: UUID | None
    trace_id: str | None
    #: e.g. {"error": "..."} for retry and fail, {"reason": "shutdown"} for release.
    metadata: dict[str, JsonValue] | None

    @classmethod
    def from_entry(cls, entry: AuditEntry) -> AuditEntryOut:
        """Convert a domain entry."""
        return cls.model_validate(entry.model_dump())


class AuditPage(WireModel):
    """One page of GET /tasks/{id}/audit, oldest first."""

    items: list[AuditEntryOut]
    #: Pass as ``cursor`` to get the next page; null on the last page.
    next_cursor: str | None

    @classmethod
    def from_entries(cls, entries: Sequence[AuditEntry], limit: int) -> AuditPage:
        """A page from up to ``limit + 1`` entries (the extra one tells another page exists)."""
        page = entries[:limit]
        more = len(entries) > limit and bool(page)
        return cls(
            items=[AuditEntryOut.from_entry(e) for e in page],
            next_cursor=str(page[-1].id) if more else None,
        )


class SignalTask(WireModel):
    """Body of POST /tasks/{id}/signal."""

    #: Any JSON value; the task's next attempt reads it as ``ctx.signal_payload``.
    payload: JsonValue = None


class QueueOut(WireModel):
    """Counts for one queue."""

    queue: str
    pending: int
    scheduled: int
    running: int
    #: Tasks waiting for a signal.
    suspended: int
    completed: int
    failed: int
    cancelled: int
    active_workers: int
    #: Seconds the oldest due pending task has been waiting; null when none waits.
    oldest_pending_age_seconds: float | None
    #: With byRegion: the region these counts are for (null: unpinned tasks). Always null
    #: otherwise.
    region: str | None = None
    #: True while no engine claims from the queue (POST /queues/{name}/pause).
    paused: bool = False
    #: When the queue was paused (null when it is not).
    paused_at: datetime | None = None

    @classmethod
    def from_statistics(cls, stats: QueueStatistics) -> QueueOut:
        """Convert the domain's statistics."""
        data = stats.model_dump()
        data["oldest_pending_age_seconds"] = data.pop("oldest_pending_age")
        data["paused"] = stats.paused_at is not None
        return cls.model_validate(data)


class QueueList(WireModel):
    """GET /queues."""

    queues: list[QueueOut]


class Health(WireModel):
    """GET /health and GET /health/ready."""

    status: Literal["ok", "unavailable"]
    #: Why the server is not ready (readiness only).
    reason: str | None = None


class FieldProblem(WireModel):
    """One invalid field of a request."""

    #: Dotted path in the request body, e.g. ``payload.to``.
    field: str
    message: str


class Problem(WireModel):
    """An error, as ``application/problem+json`` (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    #: Stable machine-readable code, e.g. ``TASK_NOT_FOUND``.
    code: str
    detail: str
    #: Field errors, for ``VALIDATION_FAILED`` and ``INVALID_QUERY``; absent otherwise.
    errors: list[FieldProblem] | None = None

    def to_json(self) -> dict[str, Any]:
        """The problem document, without the absent ``errors`` member."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class PeriodicOut(WireModel):
    """One periodic schedule, as registered by the engines that run it."""

    name: str
    cron: str
    timezone: str
    queue: str
    kind: str
    #: What happens to fire times missed during downtime: run_once or skip.
    missed: Literal["run_once", "skip"]
    #: The latest fire time handled (task enqueued, or missed run skipped); null before any.
    last_fire_at: datetime | None
    #: The next fire time, as the engine that last registered or fired the schedule saw it.
    next_fire_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_schedule(cls, schedule: PeriodicSchedule) -> PeriodicOut:
        """Convert the domain's schedule record."""
        return cls.model_validate(schedule.model_dump())


class PeriodicList(WireModel):
    """GET /periodic."""

    schedules: list[PeriodicOut]


class RetryTasks(WireModel):
    """Body of POST /tasks/retry: the filter, and the confirmed count."""

    queue: str = Field(min_length=1, max_length=128)
    #: Which finished tasks to run again.
    status: Literal["failed", "cancelled"] = "failed"
    #: Only tasks of this kind (null: every kind).
    kind: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[^\x00]*$")
    #: The number of tasks a previous call (without ``expect``) reported as ``matched``.
    #: Absent: nothing changes, the answer only counts.
    expect: StrictInt | None = Field(default=None, ge=0, le=MAX_BULK_RETRY)


class BulkRetryOut(WireModel):
    """Answer of POST /tasks/retry."""

    #: Tasks the filter matches, at most the bulk limit; confirm it as ``expect``.
    matched: int
    #: More tasks match than one call retries: the oldest-finished ``matched`` are taken.
    more: bool
    #: Tasks made pending again (0 when ``expect`` was absent).
    retried: int

    @classmethod
    def from_result(cls, result: BulkRetry) -> BulkRetryOut:
        """Convert the engine's result."""
        return cls(matched=result.matched, more=result.more, retried=result.retried)
