"""Argument handling shared by the engine's and a transaction's enqueue methods."""

from __future__ import annotations

from typing import TYPE_CHECKING

from iron_defer_trio.errors import InvalidTaskError

if TYPE_CHECKING:
    from iron_defer_trio.domain import NewTask, Task


def dedupe_keys(tasks: list[NewTask]) -> tuple[list[NewTask], list[int]]:
    """The tasks to insert, without repeats of a (queue, idempotency key) within the batch
    (one statement cannot insert a key twice), and for each given task the position of its
    stored record."""
    unique: list[NewTask] = []
    positions: list[int] = []
    seen: dict[tuple[str, str], int] = {}
    for task in tasks:
        if task.idempotency_key is None:
            positions.append(len(unique))
            unique.append(task)
            continue
        slot = (task.queue, task.idempotency_key)
        if slot in seen:
            first = unique[seen[slot]]
            if (first.kind, first.payload_json) != (task.kind, task.payload_json):
                raise InvalidTaskError(
                    f"idempotency key {task.idempotency_key!r} is used twice in one batch for "
                    "different work (kind or payload)"
                )
            positions.append(seen[slot])
            continue
        seen[slot] = len(unique)
        positions.append(len(unique))
        unique.append(task)
    return unique, positions


def split_queue_and_task(queue_or_task: str | Task, task: Task | None) -> tuple[str | None, Task]:
    if isinstance(queue_or_task, str):
        if task is None:
            raise InvalidTaskError("enqueue(queue, task): the task is missing")
        return queue_or_task, task
    if task is not None:
        raise InvalidTaskError("enqueue(task) takes no second task; pass the queue first")
    return None, queue_or_task
