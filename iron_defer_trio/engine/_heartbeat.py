"""Renews the leases of every task this engine holds, in one statement per interval."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from iron_defer_trio.engine._health import Backoff, DatabaseHealth
from iron_defer_trio.errors import StoreError

if TYPE_CHECKING:
    import random
    from uuid import UUID

    from iron_defer_trio.engine._inflight import InFlight
    from iron_defer_trio.observability.logs import Logger
    from iron_defer_trio.store.protocol import TaskStore


class Heartbeat:
    """Keeps leases alive; a task whose lease was lost has its handler cancelled, and so has
    one whose cancellation was requested (when its notification did not arrive)."""

    def __init__(
        self,
        store: TaskStore,
        worker_id: UUID,
        inflight: InFlight,
        health: DatabaseHealth,
        log: Logger,
        rng: random.Random,
        *,
        interval: float,
        lease: float,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._inflight = inflight
        self._health = health
        self._log = log
        self._backoff = Backoff(rng)
        self._interval = interval
        self._lease = lease

    async def run_once(self) -> set[tuple[UUID, int]]:
        """Renew every lease once; return the (task id, attempt) pairs found lost."""
        ids = self._inflight.task_ids()
        if not ids:
            return set()
        held = await self._store.heartbeat(self._worker_id, ids, lease=self._lease)
        lost: set[tuple[UUID, int]] = set()
        for running in self._inflight.entries():
            record = running.record
            # Only attempts leased before this beat and still executing can have lost their
            # lease; one whose outcome was handed to the completer is finished.
            if running.finished or record.id not in ids:
                continue
            lease = held.get(record.id)
            if lease is not None and lease.attempt == record.attempts:
                if lease.cancel_requested:
                    self._inflight.request_cancel(record.id, self._log, via="heartbeat")
                continue
            lost.add((record.id, record.attempts))
            running.lease_lost = True
            running.scope.cancel()
            self._log.warning(
                "task_lease_lost",
                task_id=str(record.id),
                queue=record.queue,
                kind=record.kind,
                attempt=record.attempts,
            )
        return lost

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew leases every interval until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            started = trio.current_time()
            try:
                await self.run_once()
            except StoreError as exc:
                self._health.failed("heartbeat", exc)
                # Retry sooner than the interval: the lease is running out meanwhile.
                with trio.move_on_after(self._interval):
                    while True:
                        await trio.sleep(self._backoff.next_delay())
                        try:
                            await self.run_once()
                        except StoreError as again:
                            self._health.failed("heartbeat", again)
                            continue
                        break
            else:
                self._health.succeeded(started=started)
            self._backoff.reset()
