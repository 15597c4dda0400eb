"""GET /periodic: the registered schedules with their last and next fire times."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.http._app import create_app
from tests.conftest import fast_settings
from tests.http.conftest import Report

if TYPE_CHECKING:
    from collections.abc import Callable


async def test_periodic_lists_schedules_with_last_and_next_fire_times(database_url: str) -> None:
    """A schedule an engine runs is listed in camelCase, with its fire times in RFC 3339; the
    next fire time follows the last one."""
    settings = fast_settings(database_url)
    hourly = iron_defer.Periodic("0 * * * *", Report(), name="hourly", timezone="Asia/Tokyo")
    with trio.fail_after(20):
        async with iron_defer.open_engine(
            settings, tasks=[Report], periodic=[hourly], queues={"other": 1}, migrate=False
        ) as engine:
            assert engine.periodic is not None
            upcoming = await engine.periodic_schedules()
            next_fire = upcoming[0].next_fire_at
            assert next_fire is not None
            await engine.periodic.run_once(now=next_fire + timedelta(seconds=1))
            app = create_app(engine, settings)
            async with app.test_app() as test_app:
                response = await test_app.test_client().get("/periodic")
                body = json.loads(await response.get_data())
    assert response.status_code == 200
    (schedule,) = body["schedules"]
    assert {k: schedule[k] for k in ("name", "cron", "timezone", "queue", "kind", "missed")} == {
        "name": "hourly",
        "cron": "0 * * * *",
        "timezone": "Asia/Tokyo",
        "queue": "reports",
        "kind": "report",
        "missed": "run_once",
    }
    last = datetime.fromisoformat(schedule["lastFireAt"])
    assert last == next_fire
    assert datetime.fromisoformat(schedule["nextFireAt"]) == last + timedelta(hours=1)
    assert set(schedule) == {
        "name",
        "cron",
        "timezone",
        "queue",
        "kind",
        "missed",
        "lastFireAt",
        "nextFireAt",
        "createdAt",
        "updatedAt",
    }


async def test_periodic_is_empty_without_schedules(open_api: Callable[..., Any]) -> None:
    """No engine registered a schedule: an empty list, not an error."""
    with trio.fail_after(15):
        async with open_api() as (client, _engine):
            response = await client.get("/periodic")
            body = json.loads(await response.get_data())
    assert response.status_code == 200
    assert body == {"schedules": []}
