"""Recovers tasks whose lease expired (their worker died, hung, or lost the database), frees
idempotency keys past their retention, fails tasks suspended past the suspend timeout, and
deletes finished tasks past their retention (``[retention]`` settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.errors import StoreError

if TYPE_CHECKING:
    import random
    from collections.abc import Mapping
    from datetime import datetime
    from uuid import UUID

    from iron_defer_trio.engine._health import DatabaseHealth
    from iron_defer_trio.observability.logs import Logger
    from iron_defer_trio.observability.metrics import Metrics
    from iron_defer_trio.store.protocol import RecoveredTask, TaskStore

#: Tasks recovered per statement; a backlog is worked through in several statements.
BATCH = 500


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep did."""

    recovered: tuple[RecoveredTask, ...]
    #: Idempotency keys of tasks finished longer than the retention ago, freed for reuse.
    keys_freed: int = 0
    #: Tasks failed because they stayed suspended longer than the suspend timeout.
    suspensions_expired: int = 0
    #: Finished tasks deleted because they were older than their status's retention.
    deleted: Mapping[TaskStatus, int] = field(default_factory=dict)

    @property
    def requeued(self) -> int:
        """Tasks made pending again."""
        return sum(1 for task in self.recovered if task.status is TaskStatus.PENDING)

    @property
    def failed(self) -> int:
        """Tasks failed because their expired attempt was the last."""
        return sum(1 for task in self.recovered if task.status is TaskStatus.FAILED)


class Sweeper:
    """Runs :meth:`run_once` every interval. Any number of engines may sweep at once: each
    expired row is taken by exactly one of them (``SKIP LOCKED``)."""

    def __init__(
        self,
        store: TaskStore,
        health: DatabaseHealth,
        log: Logger,
        rng: random.Random,
        *,
        interval: float,
        metrics: Metrics,
        worker_id: UUID | None = None,
        idempotency_retention: float = 86_400.0,
        suspend_timeout: float = 86_400.0,
        retention: Mapping[TaskStatus, float | None] | None = None,
        retention_batch: int = 1000,
    ) -> None:
        # Statuses whose finished tasks are deleted, with their age; 0 or None keeps them.
        self._retention = {status: age for status, age in (retention or {}).items() if age}
        self._retention_batch = retention_batch
        self._metrics = metrics
        self._worker_id = worker_id
        self._key_retention = idempotency_retention
        self._suspend_timeout = suspend_timeout
        self._store = store
        self._health = health
        self._log = log
        self._rng = rng
        self._interval = interval

    async def run_once(self, *, now: datetime | None = None) -> SweepResult:
        """Recover every task whose lease expired before ``now`` (None: the database clock),
        free the idempotency keys past their retention, fail expired suspensions, then delete
        the finished tasks past their retention."""
        recovered = await self._recover(now)
        freed = 0
        while True:
            count = await self._store.free_idempotency_keys(
                retention=self._key_retention, limit=BATCH, now=now
            )
            freed += count
            if count < BATCH:
                break
        if freed:
            self._log.info("idempotency_keys_freed", count=freed)
        expired = await self._fail_suspended(now)
        deleted = await self._delete_finished(now)
        return SweepResult(
            tuple(recovered), keys_freed=freed, suspensions_expired=expired, deleted=deleted
        )

    async def _delete_finished(self, now: datetime | None) -> dict[TaskStatus, int]:
        """Delete finished tasks past their retention, status by status, in batches of
        ``retention_batch`` rows per statement until a batch comes back short."""
        deleted: dict[TaskStatus, int] = {}
        for status, age in self._retention.items():
            count = 0
            while True:
                batch = await self._store.delete_finished(
                    status=status, older_than=age, limit=self._retention_batch, now=now
                )
                count += batch
                if batch < self._retention_batch:
                    break
            if count:
                deleted[status] = count
                self._metrics.tasks_deleted.add(count, {"status": status.value})
        if deleted:
            self._log.info(
                "tasks_deleted",
                count=sum(deleted.values()),
                **{status.value: n for status, n in deleted.items()},
            )
        return deleted

    async def _fail_suspended(self, now: datetime | None) -> int:
        expired = 0
        while True:
            batch = await self._store.fail_suspended(
                older_than=self._suspend_timeout, limit=BATCH, worker_id=self._worker_id, now=now
            )
            expired += len(batch)
            for task in batch:
                self._log.warning(
                    "task_suspend_expired",
                    task_id=str(task.task_id),
                    queue=task.queue,
                    kind=task.kind,
                    error=task.error,
                )
            if len(batch) < BATCH:
                return expired

    async def _recover(self, now: datetime | None) -> list[RecoveredTask]:
        recovered: list[RecoveredTask] = []
        while True:
            batch = await self._store.recover_expired(
                limit=BATCH, worker_id=self._worker_id, now=now
            )
            recovered.extend(batch)
            for task in batch:
                self._metrics.lease_recoveries.add(
                    1, {"queue": task.queue, "status": task.status.value}
                )
                self._log.warning(
                    "task_recovered",
                    task_id=str(task.task_id),
                    queue=task.queue,
                    kind=task.kind,
                    attempt=task.attempts,
                    max_attempts=task.max_attempts,
                    status=task.status.value,
                    previous_worker=str(task.previous_worker),
                )
            if len(batch) < BATCH:
                return recovered

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep now, then every interval (with a little jitter so engines started together
        do not sweep in lockstep), until cancelled."""
        task_status.started()
        while True:
            started = trio.current_time()
            try:
                await self.run_once()
            except StoreError as exc:
                self._health.failed("sweeper", exc)
            else:
                self._health.succeeded(started=started)
            await trio.sleep(self._interval * (0.9 + 0.2 * self._rng.random()))
