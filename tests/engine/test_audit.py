"""The audit log (``database.audit_log``): one append-only row per state change, written by
the statement that makes the change.

Rules: every transition (enqueue, claim, complete, retry, fail, cancel, recover, release)
writes exactly one row with its from/to status, attempt, acting worker and details; rows
commit or vanish with the change; UPDATE, DELETE and TRUNCATE of the table fail; with the
setting off nothing is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import asyncpg
import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.config import Settings
from tests.conftest import FAST_WORKER

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from tests.pg import Db


class Job(iron_defer.Task):
    """Fails ``failures`` times, then succeeds; or sleeps ``seconds``."""

    KIND: ClassVar[str] = "job"
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = iron_defer.RetryPolicy(
        base_delay=0.05, max_delay=0.05
    )
    attempts_seen: ClassVar[int] = 0
    failures: int = 0
    seconds: float = 0.0

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Job.attempts_seen += 1
        if ctx.attempt <= self.failures:
            raise iron_defer.TaskError(f"boom {ctx.attempt}")
        await trio.sleep(self.seconds)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Job.attempts_seen = 0


def _settings(database_url: str, *, audit: bool = True, **worker: Any) -> Settings:
    return Settings.build(
        database={"url": database_url, "audit_log": audit}, worker={**FAST_WORKER, **worker}
    )


def _audited_engine(
    database_url: str, *, audit: bool = True, run_workers: bool = True, **worker: Any
) -> AbstractAsyncContextManager[iron_defer.Engine]:
    return iron_defer.open_engine(
        _settings(database_url, audit=audit, **worker),
        tasks=[Job],
        run_workers=run_workers,
        migrate=False,
    )


async def _finished(engine: iron_defer.Engine, task_id: object) -> None:
    """Wait for the task's final status (wait_until_idle returns while a retry is not due)."""
    final = {iron_defer.TaskStatus.COMPLETED, iron_defer.TaskStatus.FAILED}
    while (await engine.get(str(task_id))).status not in final:
        await trio.sleep(0.02)


def _trail(entries: list[iron_defer.AuditEntry]) -> list[tuple[str, str | None, str, int]]:
    return [
        (
            e.event,
            None if e.from_status is None else e.from_status.value,
            e.to_status.value,
            e.attempt,
        )
        for e in entries
    ]


async def test_a_task_that_completes_leaves_enqueue_claim_complete(
    database_url: str, db: Db
) -> None:
    with trio.fail_after(15):
        async with _audited_engine(database_url) as engine:
            record = await engine.enqueue(Job())
            await engine.wait_until_idle()
            entries = await engine.audit_log(record.id)
            worker = engine.worker_id
    assert _trail(entries) == [
        ("enqueue", None, "pending", 0),
        ("claim", "pending", "running", 1),
        ("complete", "running", "completed", 1),
    ]
    assert [e.worker_id for e in entries] == [None, worker, worker]
    assert entries[0].id < entries[1].id < entries[2].id
    assert entries[0].at <= entries[1].at <= entries[2].at
    assert all(e.task_id == record.id for e in entries)


async def test_retries_and_a_final_failure_carry_the_error(database_url: str) -> None:
    with trio.fail_after(15):
        async with _audited_engine(database_url) as engine:
            record = await engine.enqueue(Job(failures=5), max_attempts=2)
            await _finished(engine, record.id)
            entries = await engine.audit_log(record.id)
    assert _trail(entries) == [
        ("enqueue", None, "pending", 0),
        ("claim", "pending", "running", 1),
        ("retry", "running", "pending", 1),
        ("claim", "pending", "running", 2),
        ("fail", "running", "failed", 2),
    ]
    assert entries[2].metadata == {"error": "boom 1"}
    assert entries[4].metadata == {"error": "boom 2"}


async def test_cancel_is_audited(database_url: str) -> None:
    with trio.fail_after(10):
        async with _audited_engine(database_url, run_workers=False) as engine:
            record = await engine.enqueue(Job())
            await engine.cancel(record.id)
            entries = await engine.audit_log(record.id)
    assert _trail(entries) == [
        ("enqueue", None, "pending", 0),
        ("cancel", "pending", "cancelled", 0),
    ]


async def test_recovery_by_the_sweeper_is_audited_with_the_previous_worker(
    database_url: str, db: Db
) -> None:
    """A task left running by a dead worker (its lease long expired) is recovered; the entry
    names the sweeping engine and, in its details, the worker that died."""
    with trio.fail_after(15):
        async with _audited_engine(database_url, run_workers=False) as producer:
            record = await producer.enqueue(Job())
        dead = await db.fetchval("SELECT gen_random_uuid()")
        await db.execute(
            "UPDATE iron_defer.tasks SET status = 'running', attempts = 1, claimed_by = $2, "
            "claimed_until = now() - interval '1 minute', started_at = now() WHERE id = $1",
            record.id,
            dead,
        )
        async with _audited_engine(database_url) as engine:
            await engine.wait_until_idle()
            entries = await engine.audit_log(record.id)
            sweeper = engine.worker_id
    recover = entries[1]
    assert (recover.event, recover.from_status, recover.to_status) == (
        "recover",
        iron_defer.TaskStatus.RUNNING,
        iron_defer.TaskStatus.PENDING,
    )
    assert recover.worker_id == sweeper
    assert recover.metadata is not None
    assert recover.metadata["previous_worker"] == str(dead)
    assert "lease expired" in recover.metadata["error"]
    assert [e.event for e in entries] == ["enqueue", "recover", "claim", "complete"]


async def test_a_release_at_shutdown_is_audited(database_url: str) -> None:
    with trio.fail_after(15):
        async with _audited_engine(database_url, shutdown_timeout=0.2) as engine:
            record = await engine.enqueue(Job(seconds=30))
            while Job.attempts_seen < 1:
                await trio.sleep(0.01)
        async with _audited_engine(database_url, run_workers=False) as reader:
            entries = await reader.audit_log(record.id)
    assert _trail(entries)[-1] == ("release", "running", "pending", 1)
    assert entries[-1].metadata == {"reason": "shutdown"}
    assert entries[-1].worker_id == engine.worker_id


async def test_with_the_audit_log_off_nothing_is_written(database_url: str, db: Db) -> None:
    with trio.fail_after(15):
        async with _audited_engine(database_url, audit=False) as engine:
            record = await engine.enqueue(Job(failures=1))
            await _finished(engine, record.id)
            assert await engine.audit_log(record.id) == []
    assert await db.fetchval("SELECT count(*) FROM iron_defer.task_audit") == 0
    assert await db.statuses() == {"completed": 1}


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE iron_defer.task_audit SET event = 'fail'",
        "DELETE FROM iron_defer.task_audit",
        "TRUNCATE iron_defer.task_audit",
    ],
)
async def test_the_audit_table_is_append_only(database_url: str, db: Db, statement: str) -> None:
    with trio.fail_after(10):
        async with _audited_engine(database_url, run_workers=False) as engine:
            await engine.enqueue(Job())
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute(statement)
    assert await db.fetchval("SELECT count(*) FROM iron_defer.task_audit") == 1


async def test_change_and_audit_row_commit_together_or_not_at_all(
    database_url: str, db: Db
) -> None:
    """The connection is killed between the change and its commit: neither the task nor its
    audit row exists. Committed, both do."""
    with trio.fail_after(15):
        async with _audited_engine(database_url, run_workers=False) as engine:

            async def killed_before_commit() -> None:
                async with engine.transaction() as tx:
                    await tx.enqueue(Job())
                    pid = await tx.fetchval("SELECT pg_backend_pid()")
                    await db.execute("SELECT pg_terminate_backend($1)", pid)

            with pytest.raises(iron_defer.StoreUnavailable):
                await killed_before_commit()
            assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0
            assert await db.fetchval("SELECT count(*) FROM iron_defer.task_audit") == 0
            async with engine.transaction() as tx:
                record = await tx.enqueue(Job())
    rows = await db.fetch("SELECT task_id, event FROM iron_defer.task_audit")
    assert [(r["task_id"], r["event"]) for r in rows] == [(record.id, "enqueue")]


async def test_audit_pages_follow_the_cursor_and_unknown_tasks_are_not_found(
    database_url: str,
) -> None:
    with trio.fail_after(15):
        async with _audited_engine(database_url) as engine:
            record = await engine.enqueue(Job(failures=2), max_attempts=3)
            await _finished(engine, record.id)
            everything = await engine.audit_log(record.id)
            first = await engine.audit_log(record.id, limit=3)
            rest = await engine.audit_log(record.id, after=first[-1].id, limit=100)
            with pytest.raises(iron_defer.TaskNotFound):
                await engine.audit_log("00000000-0000-7000-8000-000000000000")
    assert len(everything) == 7  # enqueue, (claim, retry) x2, claim, complete
    assert first + rest == everything
