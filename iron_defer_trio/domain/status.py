"""Task statuses and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where a task is in its life.

    ``pending`` tasks wait for a worker (possibly until ``scheduled_at``); ``running`` tasks are
    leased by one worker; ``suspended`` tasks wait for a signal (their handler called
    ``ctx.suspend()``); the other three are final.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"

    @property
    def is_final(self) -> bool:
        """True for completed, failed and cancelled: nothing moves the task on by itself (only
        an operator's retry makes a failed or cancelled task pending again)."""
        return self in _FINAL


_FINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

#: Every change of status the engine performs (on its own or on request). The store's guarded
#: UPDATEs implement exactly these; a test checks the SQL against this table.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    # claim; cancel before it ran
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED}),
    # complete; retry, lease recovery or release on shutdown; give up; suspend; stopped by a
    # cancel request
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.COMPLETED,
            TaskStatus.PENDING,
            TaskStatus.FAILED,
            TaskStatus.SUSPENDED,
            TaskStatus.CANCELLED,
        }
    ),
    # signal; cancel; suspend_timeout
    TaskStatus.SUSPENDED: frozenset({TaskStatus.PENDING, TaskStatus.CANCELLED, TaskStatus.FAILED}),
    TaskStatus.COMPLETED: frozenset(),
    # an operator's retry (engine.retry / retry_many), never the engine by itself
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.PENDING}),
}


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    """Tell whether the engine ever moves a task from ``current`` to ``new``."""
    return new in TRANSITIONS[current]
