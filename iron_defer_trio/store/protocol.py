"""The contract between the engine and whatever keeps the tasks.

The engine only ever sees this protocol; :mod:`iron_defer_trio.store._postgres` implements it
on PostgreSQL. Methods are trio-flavoured, take and return domain values, and raise only the
:class:`~iron_defer_trio.errors.StoreError` family (``StoreUnavailable`` when the database
cannot be reached). Cancelling a call cancels the statement.

Methods that change a task's status take an explicit ``now`` (None: the database clock), so
tests can move time without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractAsyncContextManager
    from datetime import datetime
    from uuid import UUID

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

__all__ = [
    "CancelResult",
    "ExpiredSuspension",
    "FinishResult",
    "HeldLease",
    "Listener",
    "Notification",
    "NotificationKind",
    "Outcome",
    "OutcomeKind",
    "PeriodicFire",
    "RecoveredTask",
    "RetryResult",
    "SignalResult",
    "StoreTransaction",
    "TaskStore",
]


class OutcomeKind(StrEnum):
    """How an attempt ended, as the store records it."""

    #: The handler returned: the task is completed.
    COMPLETED = "completed"
    #: The attempt failed and attempts remain: pending again after ``delay``.
    RETRY = "retry"
    #: The attempt failed for good: the task is failed.
    FAILED = "failed"
    #: The engine gave the task back without it failing (shutdown): pending again at once and
    #: the interrupted attempt does not count.
    RELEASED = "released"
    #: The handler suspended the task: it waits for a signal, and the attempt does not count.
    SUSPENDED = "suspended"
    #: The attempt was stopped because cancellation of the task was requested: cancelled.
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt, to be written under fencing (same worker, same attempt)."""

    task_id: UUID
    #: The attempt number the worker ran; the write is refused if the row moved on.
    attempt: int
    kind: OutcomeKind
    #: Stored as last_error for RETRY and FAILED (and CANCELLED when the handler raised).
    error: str | None = None
    #: Seconds until the retry is due (RETRY only).
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class FinishResult:
    """An outcome the store applied (outcomes it refused are simply absent)."""

    task_id: UUID
    status: TaskStatus
    scheduled_at: datetime


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel request found: exactly one field is set, or none (no such task)."""

    #: The task, now cancelled (it was pending or suspended).
    cancelled: TaskRecord | None
    #: The task as it is after the refused change (it had finished).
    current: TaskRecord | None
    #: The task, still running, with its cancellation requested and announced.
    requested: TaskRecord | None = None


@dataclass(frozen=True, slots=True)
class HeldLease:
    """A lease the heartbeat renewed."""

    #: The attempt the task is at (a stale local attempt shows as a mismatch).
    attempt: int
    #: Cancellation of the task was requested.
    cancel_requested: bool = False


class NotificationKind(StrEnum):
    """What a notification announces."""

    #: New due work in a queue; the value is the queue name.
    WAKE = "wake"
    #: Cancellation of a running task was requested; the value is the task id.
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class Notification:
    """One NOTIFY the listener received."""

    kind: NotificationKind
    value: str


@dataclass(frozen=True, slots=True)
class SignalResult:
    """What a signal found: exactly one field is set, or neither (no such task)."""

    #: The task, pending again with the signal's payload.
    resumed: TaskRecord | None
    #: The task as it is (it was not suspended).
    current: TaskRecord | None


@dataclass(frozen=True, slots=True)
class ExpiredSuspension:
    """A task the sweeper failed because no signal came within the suspend timeout."""

    task_id: UUID
    queue: str
    kind: str
    error: str


@dataclass(frozen=True, slots=True)
class RetryResult:
    """What a retry found: exactly one field is set, or neither (no such task)."""

    #: The task, pending again with a new attempt budget.
    retried: TaskRecord | None
    #: The task as it is (it was not failed or cancelled).
    current: TaskRecord | None


@dataclass(frozen=True, slots=True)
class RecoveredTask:
    """A task whose lease had expired and which the sweeper moved on."""

    task_id: UUID
    queue: str
    kind: str
    #: pending (will run again) or failed (it was on its last attempt).
    status: TaskStatus
    attempts: int
    max_attempts: int
    #: The worker that held the expired lease.
    previous_worker: UUID


@dataclass(frozen=True, slots=True)
class PeriodicFire:
    """What handling one fire time of a schedule did."""

    #: This call advanced the schedule's fence (False: another engine handled this fire time,
    #: or a later one, first).
    fenced: bool
    #: The task it enqueued (None when it lost the fence or skipped a missed run).
    task_id: UUID | None


class Listener(Protocol):
    """A live LISTEN session: wake-ups and cancel requests arrive on :attr:`notifications`."""

    #: What NOTIFY announced. The channel closes when the connection is lost.
    notifications: trio.MemoryReceiveChannel[Notification]

    async def ping(self) -> None:
        """Round-trip on the LISTEN connection; raises StoreUnavailable if it is dead."""
        ...


class StoreTransaction(Protocol):
    """One open database transaction: the application's own statements and enqueues that
    commit or roll back together."""

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement; return its status tag (``"INSERT 0 1"``)."""
        ...

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """Run a query; return its rows (mappings of column name to value)."""
        ...

    async def fetchrow(self, query: str, *args: Any) -> Any:
        """The first row of a query, or None."""
        ...

    async def fetchval(self, query: str, *args: Any) -> Any:
        """The first column of the first row, or None."""
        ...

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[EnqueuedTask]:
        """Insert tasks as :meth:`TaskStore.enqueue` does, inside this transaction: workers
        see (and are woken for) them only at commit."""
        ...


class TaskStore(Protocol):
    """Persistence of tasks. See the module docstring for the shared rules."""

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[EnqueuedTask]:
        """Insert tasks in one statement and wake the workers of their queues on commit.

        A task whose idempotency key its queue already holds is not inserted: the holder is
        returned with ``created=False``, or when the holder is different work (kind or
        payload) the whole statement is undone and IdempotencyConflict raised.
        """
        ...

    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction]:
        """A transaction for the block: committed at its end, rolled back if it raises."""
        ...

    async def signal(self, task_id: UUID, payload_json: str) -> SignalResult:
        """Make a suspended task pending again, with ``payload_json`` for its next attempt,
        and wake its queue's workers; otherwise read the task as it is."""
        ...

    async def fail_suspended(
        self,
        *,
        older_than: float,
        limit: int,
        worker_id: UUID | None = None,
        now: datetime | None = None,
    ) -> list[ExpiredSuspension]:
        """Fail up to ``limit`` tasks suspended for longer than ``older_than`` seconds."""
        ...

    async def save_checkpoint(
        self, worker_id: UUID, task_id: UUID, attempt: int, checkpoint_json: str
    ) -> bool:
        """Store a running attempt's progress, only while ``worker_id`` still holds that
        attempt; False when it no longer does (the lease was lost)."""
        ...

    async def audit_log(self, task_id: UUID, *, after: int | None, limit: int) -> list[AuditEntry]:
        """A task's audit entries in order, strictly after audit id ``after``."""
        ...

    async def free_idempotency_keys(
        self, *, retention: float, limit: int, now: datetime | None = None
    ) -> int:
        """Clear the idempotency keys of up to ``limit`` tasks that finished more than
        ``retention`` seconds before ``now``; return how many were cleared."""
        ...

    async def unlogged(self) -> bool:
        """True when the tasks table is UNLOGGED."""
        ...

    async def set_unlogged(self, unlogged: bool) -> None:
        """Make the tasks table UNLOGGED or logged (a table rewrite under an exclusive lock)."""
        ...

    async def get(self, task_id: UUID) -> TaskRecord | None:
        """Read one task."""
        ...

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
        """Tasks newest first (by id), optionally filtered, strictly older than ``before``,
        with ids within ``id_range`` (inclusive) when given."""
        ...

    async def cancel(self, task_id: UUID) -> CancelResult:
        """Cancel a pending or suspended task; request (and announce on the cancel channel)
        the cancellation of a running one; or read the task as it is when it has finished."""
        ...

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
        """Lease up to ``limit`` due pending tasks of ``queue`` whose kind is in ``kinds``:
        unpinned tasks, and those pinned to ``region`` when it is given. Nothing while the
        queue is paused.

        Order: priority descending, then scheduled_at, then id. Concurrent claimers never get
        the same task (``FOR UPDATE SKIP LOCKED``). Each claimed task's attempts grows by one.
        """
        ...

    async def heartbeat(
        self,
        worker_id: UUID,
        task_ids: Sequence[UUID],
        *,
        lease: float,
        now: datetime | None = None,
    ) -> dict[UUID, HeldLease]:
        """Extend the leases of tasks still running under ``worker_id``; return what each
        renewed lease is at (its attempt, and whether its cancellation was requested)."""
        ...

    async def finish(
        self, worker_id: UUID, outcomes: Sequence[Outcome], *, now: datetime | None = None
    ) -> list[FinishResult]:
        """Apply attempt outcomes in one statement, each only while the task is still running
        under ``worker_id`` at the same attempt (fencing). Returns the applied ones."""
        ...

    async def release_worker(self, worker_id: UUID) -> dict[UUID, TaskStatus]:
        """Hand back every task still running under ``worker_id`` (pending at once; the
        interrupted attempt does not count), or cancel it when its cancellation was requested.
        Used as the last step of a shutdown; returns the tasks with their new status."""
        ...

    async def recover_expired(
        self, *, limit: int, worker_id: UUID | None = None, now: datetime | None = None
    ) -> list[RecoveredTask]:
        """Move running tasks whose lease expired back to pending, or to failed when they were
        on their last attempt. Safe to run from many engines at once. ``worker_id`` (the
        sweeping engine) is recorded in the audit log."""
        ...

    def pool_statistics(self) -> PoolStatistics:
        """Connections open, idle, in use, and calls waiting for one (no I/O)."""
        ...

    async def active_counts(self) -> dict[str, dict[str, int]]:
        """Pending and running tasks per queue: ``{queue: {"pending": n, "running": m}}``."""
        ...

    async def ping(self) -> None:
        """One round trip through the pool (readiness probes)."""
        ...

    async def queue_statistics(
        self, *, by_region: bool = False, queue: str | None = None
    ) -> list[QueueStatistics]:
        """Counts per queue (per queue and region with ``by_region``), with paused queues
        listed even when empty; only ``queue`` when it is given."""
        ...

    async def queue_throughput(self, *, window: float, bucket: float) -> list[QueueThroughput]:
        """Completions per queue in ``bucket``-second buckets over the last ``window``
        seconds, oldest bucket first; queues without a completion in the window are absent."""
        ...

    async def pause_queue(self, queue: str) -> datetime:
        """Stop every engine claiming from ``queue``; return since when it is paused (a
        repeated pause keeps the first time)."""
        ...

    async def resume_queue(self, queue: str) -> bool:
        """Let engines claim from ``queue`` again and wake them; False if it was not paused."""
        ...

    async def count_due(
        self, queues: Sequence[str], kinds: Sequence[str], *, region: str | None = None
    ) -> int:
        """How many pending tasks of these queues and kinds are due now and claimable by a
        worker of ``region`` (paused queues and other regions' tasks do not count)."""
        ...

    async def make_due(self, queues: Sequence[str]) -> int:
        """Move every future-scheduled pending task of these queues to now (test helper)."""
        ...

    def listen(self) -> AbstractAsyncContextManager[Listener]:
        """Open a dedicated LISTEN session for new-work and cancel notifications."""
        ...

    async def register_periodic(
        self, schedules: Sequence[tuple[ScheduleDefinition, datetime]]
    ) -> list[PeriodicSchedule]:
        """Insert or update these schedules (each with its next fire time), keeping the fence
        of those already registered; returns their rows."""
        ...

    async def periodic_schedules(
        self, names: Sequence[str] | None = None
    ) -> list[PeriodicSchedule]:
        """Registered schedules by name (every one when ``names`` is None), sorted by name."""
        ...

    async def fire_periodic(
        self,
        schedule: ScheduleDefinition,
        fire_at: datetime,
        next_fire_at: datetime,
        *,
        enqueue: bool = True,
    ) -> PeriodicFire:
        """Handle one fire time: advance the schedule's fence to ``fire_at`` unless it is
        already there or later, and in the same statement enqueue its task (scheduled at
        ``fire_at``) when ``enqueue``. Exactly one caller wins each fire time."""
        ...

    async def retry(self, task_id: UUID) -> RetryResult:
        """Make a failed or cancelled task pending again, due now, with attempts back to 0,
        and wake its queue's workers; otherwise read the task as it is."""
        ...

    async def count_retryable(
        self, *, queue: str, status: TaskStatus, kind: str | None, most: int
    ) -> int:
        """How many tasks of ``queue`` in ``status`` (and of ``kind``) match, counting no
        further than ``most``."""
        ...

    async def retry_many(
        self,
        *,
        queue: str,
        status: TaskStatus,
        kind: str | None,
        expect: int,
        cap: int,
    ) -> tuple[int, int]:
        """Retry the oldest-finished ``cap`` matching tasks in one statement, only when
        exactly ``expect`` match (rows locked first); return (matched, retried)."""
        ...

    async def delete_finished(
        self, *, status: TaskStatus, older_than: float, limit: int, now: datetime | None = None
    ) -> int:
        """Delete up to ``limit`` tasks of final ``status`` that finished more than
        ``older_than`` seconds before ``now``; return how many were deleted."""
        ...
