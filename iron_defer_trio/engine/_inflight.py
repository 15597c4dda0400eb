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
    started_at: float = 0.0


class InFlight:
    """Registry shared by the queue workers (add), the completer (remove) and the heartbeat
    (renew every id; cancel the ones whose lease was lost)."""

    def __init__(self) -> None:
        self._tasks: dict[UUID, Running] = {}

    def add(self, record: TaskRecord) -> Running:
        running = Running(record, started_at=trio.current_time())
        self._tasks[record.id] = running
        return running

    def remove(self, task_id: UUID) -> None:
        self._tasks.pop(task_id, None)

    def get(self, task_id: UUID) -> Running | None:
        return self._tasks.get(task_id)

    def ids(self) -> list[UUID]:
        return list(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)
