"""Queues over REST: pausing and resuming (POST /queues/{name}/pause|resume), the by-region
view of GET /queues, and pinning a task to a region on POST /tasks."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import trio

from tests.http.conftest import SendEmail

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.pg import Db


async def _json(response: Any) -> Any:
    return json.loads(await response.get_data())


async def test_pause_and_resume_change_what_the_library_and_get_queues_see(
    open_api: Callable[..., Any], db: Db
) -> None:
    with trio.fail_after(15):
        async with open_api() as (client, engine):
            await engine.enqueue("mail", SendEmail(to="x"))
            paused = await client.post("/queues/mail/pause")
            again = await client.post("/queues/mail/pause")
            listed = await _json(await client.get("/queues"))
            library = await engine.queue_stats()
            resumed = await client.post("/queues/mail/resume")
            empty_pause = await client.post("/queues/nothing-yet/pause")
            listed_after = await _json(await client.get("/queues"))
            bad = await client.post("/queues/not%20a%20queue/pause")
        stored = await db.fetch("SELECT queue FROM iron_defer.queue_pauses")
    paused_body = await _json(paused)
    assert paused.status_code == 200
    assert (paused_body["queue"], paused_body["paused"], paused_body["pending"]) == (
        "mail",
        True,
        1,
    )
    assert (await _json(again))["pausedAt"] == paused_body["pausedAt"]
    assert listed["queues"][0]["paused"] is True
    assert library[0].paused_at is not None
    assert resumed.status_code == 200
    assert (await _json(resumed))["paused"] is False
    assert (await _json(empty_pause))["pending"] == 0
    assert [(q["queue"], q["paused"]) for q in listed_after["queues"]] == [
        ("mail", False),
        ("nothing-yet", True),
    ]
    assert bad.status_code == 400
    assert (await _json(bad))["code"] == "INVALID_QUEUE_NAME"
    assert [row["queue"] for row in stored] == ["nothing-yet"]


async def test_post_tasks_pins_a_region_and_get_queues_groups_by_it(
    open_api: Callable[..., Any],
) -> None:
    with trio.fail_after(15):
        async with open_api() as (client, engine):
            created = await client.post(
                "/tasks", json={"kind": "send_email", "payload": {"to": "a"}, "region": "eu-west"}
            )
            await client.post("/tasks", json={"kind": "send_email", "payload": {"to": "b"}})
            refused = await client.post(
                "/tasks", json={"kind": "send_email", "payload": {"to": "c"}, "region": "EU"}
            )
            grouped = await _json(await client.get("/queues?byRegion=true"))
            plain = await _json(await client.get("/queues"))
            bad_query = await client.get("/queues?byRegion=maybe")
            record = await engine.get((await _json(created))["id"])
    assert created.status_code == 201
    assert (await _json(created))["region"] == "eu-west" == record.region
    assert refused.status_code == 422
    assert (await _json(refused))["code"] == "INVALID_TASK"
    assert [(q["region"], q["pending"]) for q in grouped["queues"]] == [
        (None, 1),
        ("eu-west", 1),
    ]
    assert [(q["region"], q["pending"]) for q in plain["queues"]] == [(None, 2)]
    assert bad_query.status_code == 400
