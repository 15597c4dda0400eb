"""The tasks this engine holds a lease on, from claim until their outcome is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from uuid import UUID

    from iron_defer_trio.domain import TaskRecord


@dataclass(slots=True, eq=False)
class Running:
    """One leased task."""

    record: TaskRecord
    #: Cancelled when the lease is lost, so the handler stops instead of running on as a
    #: duplicate of the attempt another worker now owns.
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: True once the handler finished and its outcome waits for the completer.
    finished: bool = False
    lease_lost: bool = False
    #: Cancellation of the task was requested (engine.cancel on any engine): the attempt ends
    #: cancelled.
    cancel_requested: bool = False
    started_at: float = 0.0


class InFlight:
    """Registry shared by the queue workers (add), the completer (remove) and the heartbeat
    (renew every lease; cancel the attempts whose lease was lost).

    Entries are keyed by (task id, attempt): after losing a lease, this same engine may claim
    the task's next attempt while the stale one is still being cancelled.
    """

    def __init__(self) -> None:
        self._tasks: dict[tuple[UUID, int], Running] = {}

    def add(self, record: TaskRecord) -> Running:
        running = Running(record, started_at=trio.current_time())
        self._tasks[record.id, record.attempts] = running
        return running

    def remove(self, task_id: UUID, attempt: int) -> None:
        self._tasks.pop((task_id, attempt), None)

    def request_cancel(self, task_id: UUID) -> list[Running]:
        """Cancel the attempts of ``task_id`` held here whose handler has not finished (one,
        or none when another engine runs it); return them."""
        hit = [
            running
            for (held_id, _), running in self._tasks.items()
            if held_id == task_id and not running.finished and not running.cancel_requested
        ]
        for running in hit:
            running.cancel_requested = True
            running.scope.cancel()
        return hit

    def task_ids(self) -> list[UUID]:
        """Ids of every leased task (once each)."""
        return list({task_id for task_id, _ in self._tasks})

    def entries(self) -> list[Running]:
        return list(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)
