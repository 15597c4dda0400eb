"""Idempotent submission and the audit trail over REST.

POST /tasks takes an ``Idempotency-Key`` header (or ``idempotencyKey`` in the body): the first
request answers 201, a retry 200 with the same task, different work under the key 409
``IDEMPOTENCY_KEY_REUSED``. GET /tasks/{id}/audit pages through a task's audit entries.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.http._app import create_app
from tests.conftest import FAST_WORKER
from tests.http.conftest import Report, SendEmail

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.pg import Db

EMAIL = {"kind": "send_email", "payload": {"to": "ada@example.com"}}


async def _json(response: Any) -> Any:
    return json.loads(await response.get_data())


async def test_a_retried_post_answers_200_with_the_first_task(
    open_api: Callable[..., Any], db: Db
) -> None:
    with trio.fail_after(15):
        async with open_api() as (client, _):
            first = await client.post("/tasks", json=EMAIL, headers={"Idempotency-Key": "req-1"})
            again = await client.post("/tasks", json=EMAIL, headers={"Idempotency-Key": "req-1"})
            by_body = await client.post("/tasks", json={**EMAIL, "idempotencyKey": "req-1"})
            body = await _json(first)
    assert (first.status_code, again.status_code, by_body.status_code) == (201, 200, 200)
    assert (await _json(again))["id"] == (await _json(by_body))["id"] == body["id"]
    assert body["idempotencyKey"] == "req-1"
    assert again.headers["Location"] == f"/tasks/{body['id']}"
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 1


async def test_ten_concurrent_posts_with_one_key_create_one_task(
    open_api: Callable[..., Any], db: Db
) -> None:
    statuses: list[int] = []
    ids: set[str] = set()
    with trio.fail_after(20):
        async with open_api() as (client, _):

            async def post() -> None:
                response = await client.post(
                    "/tasks", json=EMAIL, headers={"Idempotency-Key": "burst"}
                )
                statuses.append(response.status_code)
                ids.add((await _json(response))["id"])

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(post)
    assert sorted(statuses) == [200] * 9 + [201]
    assert len(ids) == 1
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 1


async def test_a_key_reused_for_another_payload_answers_409_and_writes_nothing(
    open_api: Callable[..., Any], db: Db
) -> None:
    with trio.fail_after(15):
        async with open_api() as (client, _):
            first = await client.post("/tasks", json=EMAIL, headers={"Idempotency-Key": "k"})
            other = await client.post(
                "/tasks",
                json={"kind": "send_email", "payload": {"to": "bob@example.com"}},
                headers={"Idempotency-Key": "k"},
            )
            problem = await _json(other)
    assert other.status_code == 409
    assert other.headers["Content-Type"] == "application/problem+json"
    assert problem["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert (await _json(first))["id"] in problem["detail"]
    assert await db.fetchval("SELECT payload->>'to' FROM iron_defer.tasks") == "ada@example.com"


async def test_header_and_body_keys_that_differ_are_refused(
    open_api: Callable[..., Any], db: Db
) -> None:
    with trio.fail_after(15):
        async with open_api() as (client, _):
            response = await client.post(
                "/tasks", json={**EMAIL, "idempotencyKey": "a"}, headers={"Idempotency-Key": "b"}
            )
            problem = await _json(response)
            too_long = await client.post(
                "/tasks", json=EMAIL, headers={"Idempotency-Key": "x" * 256}
            )
    assert response.status_code == 422 and problem["code"] == "VALIDATION_FAILED"
    assert problem["errors"] == [{"field": "idempotencyKey", "message": "differs from the header"}]
    assert too_long.status_code == 422 and (await _json(too_long))["code"] == "INVALID_TASK"
    assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0


async def test_the_audit_endpoint_pages_through_a_task_trail(database_url: str) -> None:
    settings = iron_defer.Settings.build(
        database={"url": database_url, "audit_log": True}, worker=FAST_WORKER
    )
    with trio.fail_after(20):
        async with iron_defer.open_engine(
            settings, tasks=[SendEmail, Report], migrate=False
        ) as engine:
            record = await engine.enqueue(SendEmail(to="ada@example.com"))
            await engine.wait_until_idle()
            app = create_app(engine, settings)
            async with app.test_app() as test_app:
                client = test_app.test_client()
                page1 = await client.get(f"/tasks/{record.id}/audit?limit=2")
                first = await _json(page1)
                page2 = await client.get(
                    f"/tasks/{record.id}/audit?limit=2&cursor={first['nextCursor']}"
                )
                missing = await client.get(f"/tasks/{uuid.uuid4()}/audit")
                bad = await client.get(f"/tasks/{record.id}/audit?limit=0")
    second = await _json(page2)
    assert page1.status_code == 200
    assert [e["event"] for e in first["items"]] == ["enqueue", "claim"]
    assert [e["event"] for e in second["items"]] == ["complete"]
    assert second["nextCursor"] is None
    item = first["items"][1]
    assert item["fromStatus"] == "pending" and item["toStatus"] == "running"
    assert item["workerId"] == str(engine.worker_id) and item["taskId"] == str(record.id)
    assert missing.status_code == 404 and (await _json(missing))["code"] == "TASK_NOT_FOUND"
    assert bad.status_code == 400 and (await _json(bad))["code"] == "INVALID_QUERY"


async def test_signal_resumes_a_suspended_task_and_refuses_any_other(
    open_api: Callable[..., Any], db: Db
) -> None:
    with trio.fail_after(15):
        async with open_api() as (client, _):
            created = await _json(await client.post("/tasks", json=EMAIL))
            task_id = created["id"]
            refused = await client.post(f"/tasks/{task_id}/signal", json={"payload": "early"})
            await db.execute(
                "UPDATE iron_defer.tasks SET status = 'suspended', suspended_at = now() "
                "WHERE id = $1",
                uuid.UUID(task_id),
            )
            resumed = await client.post(
                f"/tasks/{task_id}/signal", json={"payload": {"approved": True}}
            )
            body = await _json(resumed)
            missing = await client.post(f"/tasks/{uuid.uuid4()}/signal", json={})
    assert refused.status_code == 409 and (await _json(refused))["code"] == "INVALID_TRANSITION"
    assert resumed.status_code == 200
    assert (body["status"], body["signalPayload"], body["suspendedAt"]) == (
        "pending",
        {"approved": True},
        None,
    )
    assert missing.status_code == 404
