"""The retry endpoints, through the app's test client over a real engine and database.

``POST /tasks/{id}/retry`` answers the task, pending again, or a problem (404, 409);
``POST /tasks/retry`` counts without ``expect`` and retries with the confirmed count, and a
count that changed is 409 COUNT_CHANGED with nothing changed.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import trio

from iron_defer_trio.http._schemas import TaskOut

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.pg import Db


async def _failed(db: Db, count: int, *, kind: str = "send_email", status: str = "failed") -> None:
    await db.add_finished(count, status, queue="default", kind=kind, ago=timedelta(0))


async def _body(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data()
    body: dict[str, Any] = json.loads(await response.get_data())
    return body


async def test_retry_answers_the_task_pending_again(open_api: Callable[..., Any], db: Db) -> None:
    """200 with the task as GET answers it: pending, attempts 0, last error kept."""
    await _failed(db, 1)
    task_id = await db.fetchval("SELECT id FROM iron_defer.tasks")
    with trio.fail_after(15):
        async with open_api() as (client, engine):
            body = await _body(await client.post(f"/tasks/{task_id}/retry"), 200)
            stored = await engine.get(task_id)
    assert body == TaskOut.from_record(stored).to_json()
    assert (body["status"], body["attempts"], body["lastError"]) == ("pending", 0, "boom")
    assert body["finishedAt"] is None


async def test_retry_of_an_unretryable_or_unknown_task_is_a_problem(
    open_api: Callable[..., Any], db: Db
) -> None:
    """A pending task is 409 INVALID_TRANSITION, an unknown id 404, a malformed one 400."""
    with trio.fail_after(15):
        async with open_api() as (client, engine):
            pending = await engine.enqueue_payload("default", "send_email", {"to": "x"})
            conflict = await _body(await client.post(f"/tasks/{pending.id}/retry"), 409)
            missing = await _body(await client.post(f"/tasks/{uuid.uuid4()}/retry"), 404)
            malformed = await _body(await client.post("/tasks/nope/retry"), 400)
    assert conflict["code"] == "INVALID_TRANSITION"
    assert "pending" in conflict["detail"]
    assert missing["code"] == "TASK_NOT_FOUND"
    assert malformed["code"] == "INVALID_TASK_ID"


async def test_bulk_retry_counts_then_retries_with_the_confirmed_count(
    open_api: Callable[..., Any], db: Db
) -> None:
    """Without expect the answer counts and nothing changes; with a stale count it is 409
    COUNT_CHANGED and nothing changes; with the right count the tasks are pending."""
    await _failed(db, 3)
    await _failed(db, 2, kind="report")
    await _failed(db, 1, status="cancelled")
    with trio.fail_after(15):
        async with open_api() as (client, _engine):
            body = {"queue": "default", "status": "failed", "kind": "send_email"}
            counted = await _body(await client.post("/tasks/retry", json=body), 200)
            assert counted == {"matched": 3, "more": False, "retried": 0}
            assert await db.statuses() == {"failed": 5, "cancelled": 1}
            stale = await _body(await client.post("/tasks/retry", json=body | {"expect": 4}), 409)
            assert stale["code"] == "COUNT_CHANGED"
            assert await db.statuses() == {"failed": 5, "cancelled": 1}
            done = await _body(await client.post("/tasks/retry", json=body | {"expect": 3}), 200)
            everything = {"queue": "default", "expect": 2}
            rest = await _body(await client.post("/tasks/retry", json=everything), 200)
    assert done == {"matched": 3, "more": False, "retried": 3}
    assert rest == {"matched": 2, "more": False, "retried": 2}
    assert await db.statuses() == {"pending": 5, "cancelled": 1}


async def test_bulk_retry_rejects_a_bad_filter(open_api: Callable[..., Any], db: Db) -> None:
    """A status other than failed/cancelled, a missing queue, an unknown field or a count out
    of range is 422 VALIDATION_FAILED; an invalid queue name is 422 INVALID_TASK."""
    await _failed(db, 1)
    with trio.fail_after(15):
        async with open_api() as (client, _engine):
            for body in (
                {"queue": "default", "status": "pending"},
                {"status": "failed"},
                {"queue": "default", "everything": True},
                {"queue": "default", "expect": -1},
                {"queue": "default", "expect": 10_001},
            ):
                problem = await _body(await client.post("/tasks/retry", json=body), 422)
                assert problem["code"] == "VALIDATION_FAILED", body
            bad_queue = await _body(
                await client.post("/tasks/retry", json={"queue": "no spaces"}), 422
            )
    assert bad_queue["code"] == "INVALID_TASK"
    assert await db.statuses() == {"failed": 1}
