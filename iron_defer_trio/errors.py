"""The one error hierarchy of iron-defer-trio.

Every error the library raises on purpose derives from :class:`IronDeferError`. The tree is
shallow on purpose: callers catch the leaf they can act on, or the root. The HTTP and CLI edges
translate these classes (and nothing else) into status codes and exit codes.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "ConfigError",
    "CountChanged",
    "EngineClosed",
    "EngineCrashed",
    "IdempotencyConflict",
    "InvalidTaskError",
    "InvalidTransition",
    "IronDeferError",
    "MigrationError",
    "RetryAfter",
    "StoreError",
    "StoreUnavailable",
    "TaskError",
    "TaskNotFound",
    "UnknownTaskKind",
]


class IronDeferError(Exception):
    """Base class of every error iron-defer-trio raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take their own constructor arguments, so rebuild from args and attributes
        # instead (errors cross process boundaries in multiprocessing and test runners).
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(
    cls: type[IronDeferError], args: tuple[Any, ...], state: dict[str, Any]
) -> IronDeferError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(IronDeferError):
    """Settings or task registration are invalid.

    Raised before anything is started, with the full path of every offending key in the
    message, so a deployment fails fast instead of misbehaving later.
    """


class InvalidTaskError(IronDeferError):
    """An enqueue request was rejected before it reached the database.

    Examples: a queue name with forbidden characters, a priority outside -32768..32767,
    ``max_attempts`` below 1, a naive ``scheduled_at``, a payload over the size limit.
    Nothing was written.
    """


class UnknownTaskKind(InvalidTaskError):
    """The task's kind is not registered with this engine.

    Register the Task class in ``open_engine(..., tasks=[...])``. Nothing was written.
    """

    def __init__(self, kind: str) -> None:
        super().__init__(f"no task class is registered for kind {kind!r}")
        self.kind = kind


class TaskNotFound(IronDeferError):
    """No task has the requested id (it never existed, or retention deleted it)."""

    def __init__(self, task_id: object) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class InvalidTransition(IronDeferError):
    """The task exists but is not in a status that allows the requested change.

    ``status`` holds the task's status as read after the refused change, for example
    cancelling a task that is already ``completed``, or signalling one that is not
    ``suspended``.
    """

    def __init__(self, task_id: object, status: str, action: str) -> None:
        super().__init__(f"cannot {action} task {task_id}: it is {status}")
        self.task_id = task_id
        self.status = status
        self.action = action


class CountChanged(IronDeferError):
    """A bulk change was confirmed for ``expected`` tasks, but ``matched`` match its filter
    now (tasks were retried, cancelled, finished or deleted meanwhile). Nothing was changed:
    count again and confirm the new number."""

    def __init__(self, expected: int, matched: int) -> None:
        super().__init__(
            f"{matched} tasks match the filter now, not the {expected} confirmed; nothing was "
            "changed (count again and confirm the new number)"
        )
        self.expected = expected
        self.matched = matched


class IdempotencyConflict(IronDeferError):
    """The idempotency key already belongs to a task of the queue that is different work
    (another kind or payload).

    A retry of the same submission returns the existing task instead; this error means two
    different submissions used one key. Nothing was written (in ``enqueue_many``, none of the
    batch). ``task_id`` is the task that holds the key.
    """

    def __init__(self, queue: str, key: str, task_id: object) -> None:
        super().__init__(
            f"idempotency key {key!r} of queue {queue!r} already belongs to task {task_id}, "
            "submitted with a different kind or payload"
        )
        self.queue = queue
        self.key = key
        self.task_id = task_id


class StoreError(IronDeferError):
    """The database refused or failed an operation.

    ``sqlstate`` carries PostgreSQL's error code when the server produced one.
    """

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class StoreUnavailable(StoreError):
    """PostgreSQL cannot be reached right now (down, restarting, refusing connections, or no
    pool connection became free in time).

    The operation was not applied. Producers may retry it; the engine's own services back off
    and resume by themselves once the database answers again.
    """


class MigrationError(StoreError):
    """The database schema could not be brought to the version this package needs, or it was
    changed by hand (a migration's checksum differs from the one recorded when it ran)."""


class EngineClosed(IronDeferError):
    """The engine was used after its ``open_engine`` block exited or after ``stop()``."""


class EngineCrashed(IronDeferError):
    """An internal engine service failed unexpectedly.

    Raised from ``open_engine`` with the internal failure chained as ``__cause__``. This is a
    bug in iron-defer-trio (or its environment); please report it with the chained traceback.
    """


class TaskError(IronDeferError):
    """Raise from ``Task.execute`` to fail the attempt with a chosen message.

    Args:
        message: stored as the task's ``last_error``.
        retry: when False the task fails at once, whatever attempts remain. When True (the
            default) it is retried with backoff like any other exception.
    """

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class RetryAfter(IronDeferError):
    """Raise from ``Task.execute`` to retry the task after exactly ``seconds``.

    It counts as an attempt, like any failure, so ``max_attempts`` still bounds it; when no
    attempt is left the task fails. Useful for rate limits (an HTTP 429 with ``Retry-After``).
    """

    def __init__(self, seconds: float, message: str | None = None) -> None:
        if isinstance(seconds, bool) or not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"RetryAfter needs a finite delay >= 0 seconds, got {seconds!r}")
        super().__init__(message or f"retry requested after {seconds:g} s")
        self.seconds = float(seconds)


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside (possibly nested) exception groups that is not a
    cancellation, or None when there are several or none.

    Nurseries wrap whatever passes through them in groups; each edge of the package uses this
    to let a single real error out as itself.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not _is_cancellation(exc):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


def _is_cancellation(exc: BaseException) -> bool:
    # trio.Cancelled, detected by name: this module imports nothing (not even trio).
    return type(exc).__name__ == "Cancelled" and type(exc).__module__.startswith("trio")
