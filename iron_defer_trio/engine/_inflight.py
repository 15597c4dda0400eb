"""The tasks this engine holds a lease on, from claim until their outcome is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from uuid import UUID

    from iron_defer_trio.domain import TaskRecord
    from iron_defer_trio.observability.logs import Logger


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
    #: When its attempt started here (trio clock; set as the slot starts it).
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
        running = Running(record)
        self._tasks[record.id, record.attempts] = running
        return running

    def remove(self, task_id: UUID, attempt: int) -> None:
        self._tasks.pop((task_id, attempt), None)

    def request_cancel(self, task_id: UUID, log: Logger, *, via: str) -> None:
        """Cancel the attempts of ``task_id`` held here whose handler has not finished (one,
        or none when another engine runs it), and log each (``via``: how the request came)."""
        for (held_id, _), running in self._tasks.items():
            if held_id != task_id or running.finished or running.cancel_requested:
                continue
            running.cancel_requested = True
            running.scope.cancel()
            log.info(
                "task_cancel_observed",
                task_id=str(task_id),
                queue=running.record.queue,
                kind=running.record.kind,
                via=via,
            )

    def task_ids(self) -> list[UUID]:
        """Ids of every leased task (once each)."""
        return list({task_id for task_id, _ in self._tasks})

    def entries(self) -> list[Running]:
        return list(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)
