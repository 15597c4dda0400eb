"""The task endpoints, through the app's test client over a real engine and database.

Every error answer is ``application/problem+json`` with a stable code; rejected requests
write nothing.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests.http.conftest import SendEmail

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.pg import Db

JSON = {"Content-Type": "application/json"}


async def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data()
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(await response.get_data())
    assert body["status"] == status
    assert body["code"] == code
    assert body["detail"]
    return body


async def test_post_creates_a_pending_task_and_returns_it(
    open_api: Callable[..., Any], db: Db
) -> None:
    """201 with the stored task in camelCase and a Location header; the row exists."""
    with trio.fail_after(15):
        async with open_api() as (client, _):
            response = await client.post(
                "/tasks",
                json={
                    "kind": "send_email",
                    "payload": {"to": "ada@example.com"},
                    "queue": "mail",
                    "priority": 5,
                    "maxAttempts": 7,
                    "scheduledAt": "2030-01-01T10:00:00+02:00",
                },
            )
            body = json.loads(await response.get_data())
        row = await db.fetchrow(
            "SELECT * FROM iron_defer.tasks WHERE id = $1", uuid.UUID(body["id"])
        )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/tasks/{body['id']}"
    assert body["payload"] == {
        "to": "ada@example.com",
        "subject": "hello",
    }  # as the class stores it
    assert (body["queue"], body["priority"], body["maxAttempts"], body["status"]) == (
        "mail",
        5,
        7,
        "pending",
    )
    assert body["scheduledAt"].startswith("2030-01-01T08:00:00")
    assert set(body) == {
        "id",
        "queue",
        "kind",
        "payload",
        "status",
        "priority",
        "attempts",
        "maxAttempts",
        "lastError",
        "scheduledAt",
        "createdAt",
        "updatedAt",
        "claimedBy",
        "claimedUntil",
        "startedAt",
        "finishedAt",
        "traceparent",
        "idempotencyKey",
        "checkpoint",
        "attemptTimeout",
        "suspendedAt",
        "signalPayload",
        "cancelRequestedAt",
        "region",
    }
    assert row["kind"] == "send_email"
    assert row["queue"] == "mail"


async def test_post_uses_the_class_queue_when_none_is_given(open_api: Callable[..., Any]) -> None:
    """queue is optional: the Task class's QUEUE, else "default"."""
    with trio.fail_after(15):
        async with open_api() as (client, _):
            report = await client.post("/tasks", json={"kind": "report", "payload": {}})
            email = await client.post("/tasks", json={"kind": "send_email", "payload": {"to": "x"}})
    assert json.loads(await report.get_data())["queue"] == "reports"
    assert json.loads(await email.get_data())["queue"] == "default"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"payload": {}}, ["kind"]),
        ({"kind": "send_email"}, ["payload"]),
        ({"kind": "send_email", "payload": {"to": "x"}, "colour": "red"}, ["colour"]),
        ({"kind": "send_email", "payload": {"to": "x"}, "priority": 40000}, ["priority"]),
        ({"kind": "send_email", "payload": {"to": "x"}, "maxAttempts": 0}, ["maxAttempts"]),
        (
            {"kind": "send_email", "payload": {"to": "x"}, "scheduledAt": "2030-01-01T10:00:00"},
            ["scheduledAt"],
        ),
        (
            {"kind": "send_email", "payload": {"subject": 3, "cc": "y"}},
            ["payload.to", "payload.subject", "payload.cc"],
        ),
        ([1, 2], ["(body)"]),
    ],
    ids=[
        "no-kind",
        "no-payload",
        "unknown-field",
        "priority",
        "max-attempts",
        "naive-time",
        "payload-fields",
        "not-an-object",
    ],
)
async def test_invalid_bodies_are_422_listing_each_field(
    open_api: Callable[..., Any], db: Db, body: Any, fields: list[str]
) -> None:
    """Each invalid field is named (camelCase; payload fields under payload.)."""
    with trio.fail_after(15):
        async with open_api() as (client, _):
            response = await client.post("/tasks", json=body)
            problem = await _problem(response, 422, "VALIDATION_FAILED")
        assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0
    assert sorted(e["field"] for e in problem["errors"]) == sorted(fields)


async def test_unknown_kind_and_bad_queue_are_422(open_api: Callable[..., Any], db: Db) -> None:
    """A kind no class is registered for, a bad queue name, a NUL in the payload."""
    with trio.fail_after(15):
        async with open_api() as (client, _):
            unknown = await client.post("/tasks", json={"kind": "nope", "payload": {}})
            await _problem(unknown, 422, "UNKNOWN_KIND")
            queue = await client.post(
                "/tasks", json={"kind": "send_email", "payload": {"to": "x"}, "queue": "bad queue"}
            )
            await _problem(queue, 422, "INVALID_TASK")
            nul = await client.post(
                "/tasks", json={"kind": "send_email", "payload": {"to": "a\x00b"}}
            )
            await _problem(nul, 422, "INVALID_TASK")
        assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0


@pytest.mark.parametrize(
    ("data", "headers", "status", "code"),
    [
        (b"{not json", JSON, 400, "MALFORMED_JSON"),
        (b"", JSON, 400, "MALFORMED_JSON"),
        (b'{"kind": "send_email", "payload": NaN}', JSON, 400, "MALFORMED_JSON"),
        (b'{"kind": "\xff\xfe"}', JSON, 400, "MALFORMED_JSON"),
        (
            b'{"kind": "send_email", "payload": {}}',
            {"Content-Type": "text/plain"},
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
    ],
    ids=["syntax", "empty", "nan", "invalid-utf8", "content-type"],
)
async def test_unparseable_bodies_are_rejected(
    open_api: Callable[..., Any], data: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    """Malformed JSON is 400, a non-JSON content type 415."""
    with trio.fail_after(15):
        async with open_api() as (client, _):
            response = await client.post("/tasks", data=data, headers=headers)
            await _problem(response, status, code)


async def test_body_over_the_limit_is_413(open_api: Callable[..., Any], db: Db) -> None:
    """server.max_body_bytes bounds the request body."""
    big = json.dumps({"kind": "send_email", "payload": {"to": "x" * 5000}}).encode()
    with trio.fail_after(15):
        async with open_api(max_body_bytes=4096) as (client, _):
            response = await client.post("/tasks", data=big, headers=JSON)
            await _problem(response, 413, "PAYLOAD_TOO_LARGE")
        assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0


async def test_get_returns_the_task_or_404_or_400(open_api: Callable[..., Any]) -> None:
    """A stored task is returned; an unknown id is 404; a malformed one 400."""
    with trio.fail_after(15):
        async with open_api() as (client, engine):
            record = await engine.enqueue(SendEmail(to="x"))
            found = await client.get(f"/tasks/{record.id}")
            assert found.status_code == 200
            assert json.loads(await found.get_data())["id"] == str(record.id)
            await _problem(await client.get(f"/tasks/{uuid.uuid4()}"), 404, "TASK_NOT_FOUND")
            await _problem(await client.get("/tasks/not-a-uuid"), 400, "INVALID_TASK_ID")
            await _problem(await client.get("/tasks/1' OR '1'='1"), 400, "INVALID_TASK_ID")


async def test_delete_cancels_pending_and_refuses_the_rest(
    open_api: Callable[..., Any], db: Db
) -> None:
    """Pending -> 200 cancelled; running -> 202 still running with cancelRequestedAt (the
    request recorded, the engine that runs it stops it); already cancelled -> 409; unknown ->
    404."""
    with trio.fail_after(15):
        async with open_api() as (client, engine):
            pending = await engine.enqueue(SendEmail(to="x"))
            running = await engine.enqueue(SendEmail(to="y"))
            await db.execute(
                "UPDATE iron_defer.tasks SET status = 'running', attempts = 1, "
                "claimed_by = gen_random_uuid(), claimed_until = now() + interval '1 minute' "
                "WHERE id = $1",
                running.id,
            )
            cancelled = await client.delete(f"/tasks/{pending.id}")
            assert cancelled.status_code == 200
            body = json.loads(await cancelled.get_data())
            assert (body["status"], body["cancelRequestedAt"]) == ("cancelled", None)
            again = await _problem(
                await client.delete(f"/tasks/{pending.id}"), 409, "INVALID_TRANSITION"
            )
            assert "cancelled" in again["detail"]
            asked = await client.delete(f"/tasks/{running.id}")
            assert asked.status_code == 202
            asked_body = json.loads(await asked.get_data())
            assert asked_body["status"] == "running"
            assert asked_body["cancelRequestedAt"] is not None
            await _problem(await client.delete(f"/tasks/{uuid.uuid4()}"), 404, "TASK_NOT_FOUND")
            await _problem(await client.delete("/tasks/nope"), 400, "INVALID_TASK_ID")
        stored = await db.fetchrow(
            "SELECT status, cancel_requested_at FROM iron_defer.tasks WHERE id = $1", running.id
        )
    assert stored["status"] == "running"
    assert stored["cancel_requested_at"] is not None


async def test_list_filters_and_paginates_stably_under_inserts(
    open_api: Callable[..., Any],
) -> None:
    """Newest first; nextCursor pages through without repeats or gaps while tasks arrive."""
    with trio.fail_after(20):
        async with open_api() as (client, engine):
            first = await engine.enqueue_many("a", [SendEmail(to=str(i)) for i in range(7)])
            await engine.enqueue_many("b", [SendEmail(to="b")])
            seen: list[str] = []
            cursor = None
            while True:
                url = "/tasks?queue=a&limit=3" + (f"&cursor={cursor}" if cursor else "")
                page = json.loads(await (await client.get(url)).get_data())
                seen.extend(item["id"] for item in page["items"])
                # a newer task arriving between pages must not shift the pages
                await engine.enqueue("a", SendEmail(to="late"))
                cursor = page["nextCursor"]
                if cursor is None:
                    break
            assert seen == [str(r.id) for r in reversed(first)]
            by_status = json.loads(
                await (await client.get("/tasks?status=pending&kind=send_email&queue=b")).get_data()
            )
            assert len(by_status["items"]) == 1
            assert by_status["nextCursor"] is None


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=abc",
        "status=nope",
        "cursor=xyz",
        "queue=a&queue=b",
        "colour=red",
        "limit=99999999999999999999999",
    ],
)
async def test_bad_list_queries_are_400(open_api: Callable[..., Any], query: str) -> None:
    """Out-of-range, malformed, repeated and unknown parameters are refused."""
    with trio.fail_after(15):
        async with open_api() as (client, _):
            await _problem(await client.get(f"/tasks?{query}"), 400, "INVALID_QUERY")


async def test_sql_metacharacters_are_data_not_code(open_api: Callable[..., Any], db: Db) -> None:
    """Quotes, semicolons and comments in filters and payloads are stored or matched verbatim."""
    hostile = "x'; DROP TABLE iron_defer.tasks; --"
    with trio.fail_after(15):
        async with open_api() as (client, _):
            created = await client.post(
                "/tasks",
                json={"kind": "send_email", "payload": {"to": hostile, "subject": "\\' \" %"}},
            )
            assert created.status_code == 201
            listed = await client.get("/tasks", query_string={"kind": hostile})
            assert json.loads(await listed.get_data())["items"] == []
            await _problem(
                await client.get("/tasks", query_string={"queue": hostile, "limit": "1;"}),
                400,
                "INVALID_QUERY",
            )
        stored = await db.fetchval("SELECT payload->>'to' FROM iron_defer.tasks")
    assert stored == hostile


async def test_unknown_routes_and_methods(open_api: Callable[..., Any]) -> None:
    """404 and 405 are problem documents too; 405 lists what is allowed."""
    with trio.fail_after(15):
        async with open_api() as (client, _):
            await _problem(await client.get("/nope"), 404, "NOT_FOUND")
            response = await client.put("/tasks")
            await _problem(response, 405, "METHOD_NOT_ALLOWED")
            assert "POST" in response.headers["Allow"]
