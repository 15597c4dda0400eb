"""Helpers for your own test suite: run what was enqueued, and check what was enqueued.

Use a real PostgreSQL database in tests (a per-test database cloned from a migrated
template is fast). Example, with pytest-trio::

    async def test_signup_sends_a_welcome_email(engine):
        await signup(engine, "ada@example.com")

        record = await testing.assert_enqueued(engine, SendEmail(to="ada@example.com",
                                                                 subject="Welcome"))
        with trio.fail_after(10):
            await testing.run_until_idle(engine)
        assert (await engine.get(record.id)).status == TaskStatus.COMPLETED
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iron_defer_trio.domain import Task, TaskRecord, TaskStatus
    from iron_defer_trio.engine import Engine

__all__ = ["assert_enqueued", "enqueued", "run_until_idle"]

#: Page size when scanning tasks; tests hold few.
_PAGE = 1000


async def run_until_idle(engine: Engine, *, include_scheduled: bool = True) -> None:
    """Run every due task of the engine's queues now and wait until they are idle.

    Put it under ``trio.fail_after(...)``: a task that never ends, or one that re-enqueues
    itself forever, keeps the queue busy.

    Args:
        engine: an engine that runs workers (the default of ``open_engine``).
        include_scheduled: also make future-scheduled tasks, and retries waiting out their
            backoff, due at once, so every task reaches a final status (default True).
    """
    await engine.wait_until_idle(include_scheduled=include_scheduled)


async def enqueued(
    engine: Engine,
    task_type: type[Task] | None = None,
    *,
    queue: str | None = None,
    status: TaskStatus | None = None,
) -> list[TaskRecord]:
    """Tasks in the database, oldest first, filtered by class, queue and status (any status
    by default: a running engine may already have run what was enqueued)."""
    kind = None if task_type is None else task_type.KIND
    found: list[TaskRecord] = []
    before = None
    while True:
        page = await engine.list(queue=queue, status=status, kind=kind, limit=_PAGE, before=before)
        found.extend(page)
        if len(page) < _PAGE:
            return found[::-1]
        before = page[-1].id


async def assert_enqueued(
    engine: Engine,
    task: Task,
    *,
    queue: str | None = None,
    status: TaskStatus | None = None,
) -> TaskRecord:
    """Assert that a task equal to ``task`` (same class, same fields) was enqueued, in any
    status unless ``status`` narrows it, and return its record (the oldest, if several).

    Raises:
        AssertionError: listing what was enqueued instead.
    """
    candidates = await enqueued(engine, type(task), queue=queue, status=status)
    wanted = task.model_dump(mode="json")
    for record in candidates:
        if record.payload == wanted:
            return record
    seen = [record.payload for record in candidates] or "nothing"
    where = f" on queue {queue!r}" if queue else ""
    raise AssertionError(
        f"no {type(task).__name__} task with payload {wanted}{where} "
        f"(status {status or 'any'}); found: {seen}"
    )
