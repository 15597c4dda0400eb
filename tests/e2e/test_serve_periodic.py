"""The real ``iron-defer-trio serve`` runs the schedules of its config.toml and the
environment, and lists them at GET /periodic."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.e2e.serving import base_env, start_server, wait_for

if TYPE_CHECKING:
    from pathlib import Path

CONFIG = """
[[periodic.schedules]]
name = "tick"
cron = "* * * * * *"
kind = "echo"
payload = {message = "tick"}
"""


def test_serve_fires_schedules_from_config_and_environment(
    database_url: str, app_dir: Path
) -> None:
    """A schedule from config.toml fires every second (its tasks run, with its payload); one
    from IRON_DEFER__PERIODIC__SCHEDULES is registered too; GET /periodic lists both."""
    (app_dir / "config.toml").write_text(CONFIG)
    hourly = [
        {
            "name": "hourly",
            "cron": "0 * * * *",
            "kind": "echo",
            "payload": {"message": "hour"},
            "timezone": "America/New_York",
        }
    ]
    server = start_server(
        "--app",
        "e2e_tasks",
        cwd=app_dir,
        env=base_env(DATABASE_URL=database_url),
    )
    try:
        # The environment replaces the file's list whole (like queues), so a second server
        # with the variable set is the one that registers "hourly".
        other = start_server(
            "--app",
            "e2e_tasks",
            cwd=app_dir,
            env=base_env(
                DATABASE_URL=database_url,
                IRON_DEFER__PERIODIC__SCHEDULES=json.dumps(hourly),
            ),
        )
        other.stop()

        def two_ticks_completed() -> Any:
            page = server.request("GET", "/tasks?kind=echo&status=completed").json()
            return len(page["items"]) >= 2 and page["items"]

        ticks = wait_for(two_ticks_completed)
        listing = server.request("GET", "/periodic")
    finally:
        server.stop()
    assert {item["payload"]["message"] for item in ticks} == {"tick"}
    assert listing.status == 200
    by_name = {s["name"]: s for s in listing.json()["schedules"]}
    assert sorted(by_name) == ["hourly", "tick"]
    assert by_name["tick"]["lastFireAt"] is not None
    assert by_name["hourly"]["timezone"] == "America/New_York"
    assert server.events("periodic_task_enqueued")
