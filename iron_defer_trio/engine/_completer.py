"""Writes attempt outcomes to the store in batches.

A finished handler hands its outcome over and frees its slot at once; the completer writes
everything that accumulated while its previous write was in flight, in one statement. Under
load that batches naturally, with no timer adding latency when idle. Outcomes stay in the
in-flight registry (so their leases keep being renewed) until written; a write that fails
because the database is down is retried with backoff. Every write is fenced by the store, so
a late or repeated write can never overwrite another worker's result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from iron_defer_trio.engine._health import Backoff, DatabaseHealth
from iron_defer_trio.errors import StoreError, StoreUnavailable

if TYPE_CHECKING:
    import random
    from collections.abc import Callable
    from uuid import UUID

    from iron_defer_trio.engine._inflight import InFlight
    from iron_defer_trio.observability.logs import Logger
    from iron_defer_trio.store.protocol import FinishResult, Outcome, TaskStore

#: Largest batch per statement: bounds statement size and the time locks are held.
MAX_BATCH = 500


class Completer:
    """The engine's single outcome writer."""

    def __init__(
        self,
        store: TaskStore,
        worker_id: UUID,
        inflight: InFlight,
        health: DatabaseHealth,
        log: Logger,
        rng: random.Random,
        on_written: Callable[[Outcome, FinishResult | None], None],
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._inflight = inflight
        self._health = health
        self._log = log
        self._backoff = Backoff(rng)
        self._on_written = on_written
        self._pending: list[Outcome] = []
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        #: Set (and replaced) each time a batch is written.
        self._progress = trio.Event()

    def submit(self, outcome: Outcome) -> None:
        """Queue an outcome for writing (never blocks)."""
        self._pending.append(outcome)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wakeup.set()

    @property
    def backlog(self) -> int:
        """Outcomes not yet written."""
        return len(self._pending)

    async def wait_for_room(self, limit: int) -> None:
        """Return once fewer than ``limit`` outcomes wait to be written: claim loops call it
        so that an engine whose writes fall behind (a slow or busy database) stops taking
        work rather than piling up outcomes (and their leases to renew) in memory."""
        while len(self._pending) >= limit:
            await self._progress.wait()

    async def wait_idle(self) -> None:
        """Return once every submitted outcome was written (or dropped after an error).

        Shutdown calls this under its deadline while :meth:`run` keeps writing (and retrying
        while the database is unavailable)."""
        await self._idle.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write outcomes until cancelled."""
        task_status.started()
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self._write_pending()

    async def _write_pending(self) -> None:
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            started = trio.current_time()
            try:
                results = await self._store.finish(self._worker_id, batch)
            except StoreUnavailable as exc:
                self._health.failed("completer", exc)
                await trio.sleep(self._backoff.next_delay())
                continue
            except StoreError as exc:
                # Not an outage: writing this batch again would fail the same way. Write its
                # outcomes one by one so one bad outcome cannot take the others down with it.
                self._health.failed("completer", exc)
                results = await self._write_one_by_one(batch)
            else:
                self._health.succeeded(started=started)
                self._backoff.reset()
            del self._pending[: len(batch)]
            self._progress.set()
            self._progress = trio.Event()
            applied = {result.task_id: result for result in results}
            for outcome in batch:
                self._inflight.remove(outcome.task_id, outcome.attempt)
                self._on_written(outcome, applied.get(outcome.task_id))
        self._idle.set()

    async def _write_one_by_one(self, batch: list[Outcome]) -> list[FinishResult]:
        results: list[FinishResult] = []
        for outcome in batch:
            try:
                results.extend(await self._store.finish(self._worker_id, [outcome]))
            except StoreError as exc:
                # Dropped: the lease expires and the sweeper hands the task out again.
                self._log.error(
                    "outcome_dropped",
                    task_id=str(outcome.task_id),
                    attempt=outcome.attempt,
                    outcome=outcome.kind.value,
                    error=str(exc),
                )
        return results
