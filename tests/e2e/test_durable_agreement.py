"""Durable execution through the three front doors: what one of the library, the REST API
and the CLI does (enqueue, signal a suspended task, cancel it while it runs), the other two
read identically, field for field (the shared wire format, TaskOut).

Each test drives a task of the served app's ``durable`` kind through its life from one side:
enqueued, checkpointed and suspended; signalled; running (checkpoint with the answer);
cancelled while running (it ends ``cancelled`` with one counted attempt); at each step the
other two sides are read and compared.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.config import Settings
from iron_defer_trio.http._schemas import TaskOut
from tests.e2e.serving import Server, base_env, start_server, wait_for
from tests.e2e.test_cli_migrate import cli, cli_env

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def server(database_url: str, app_dir: Path) -> Iterator[Server]:
    running = start_server(
        "--app",
        "e2e_tasks",
        cwd=app_dir,
        env=base_env(DATABASE_URL=database_url, IRON_DEFER__WORKER__SHUTDOWN_TIMEOUT="2s"),
    )
    try:
        yield running
    finally:
        running.stop()


class Sides:
    """Read a task through each front door."""

    def __init__(self, server: Server, database_url: str, app_dir: Path) -> None:
        self.server = server
        self.database_url = database_url
        self.app_dir = app_dir
        self.env = cli_env(DATABASE_URL=database_url)

    def cli(self, *args: str) -> Any:
        result = cli(*args, cwd=self.app_dir, env=self.env)
        assert result.returncode == 0, result.stderr
        return result

    def rest(self, task_id: str) -> dict[str, Any]:
        response = self.server.request("GET", f"/tasks/{task_id}")
        assert response.status == 200, response.body
        body: dict[str, Any] = response.json()
        return body

    def library(self, call: str, task_id: str, *args: Any) -> dict[str, Any]:
        """``engine.<call>(task_id, *args)`` on a producer engine; the record in wire form."""

        async def main() -> dict[str, Any]:
            settings = Settings.build(database={"url": self.database_url})
            async with iron_defer.open_engine(
                settings, tasks=[], run_workers=False, migrate=False
            ) as engine:
                record = await getattr(engine, call)(task_id, *args)
            return TaskOut.from_record(record).to_json()

        return trio.run(main)

    def wait_status(self, task_id: str, status: str) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (body := self.rest(task_id))["status"] == status and body
        )
        return found

    def agree(self, task_id: str) -> dict[str, Any]:
        """The task read by all three sides, asserted identical; returned."""
        over_rest = self.rest(task_id)
        over_cli = json.loads(self.cli("tasks", "get", task_id, "--json").stdout)
        over_library = self.library("get", task_id)
        if over_rest["status"] == "running":
            # The heartbeat may renew the lease between the three reads.
            for body in (over_rest, over_cli, over_library):
                assert body.pop("claimedUntil") is not None
        assert over_cli == over_rest
        assert over_library == over_rest
        return over_rest


@pytest.fixture
def sides(server: Server, database_url: str, app_dir: Path) -> Sides:
    return Sides(server, database_url, app_dir)


def _assert_life(sides: Sides, task_id: str, answer: object, resumed: dict[str, Any]) -> None:
    """The common end: running with the answer's checkpoint, then (after the cancel the caller
    made) cancelled with one counted attempt, read the same everywhere."""
    assert resumed["signalPayload"] == answer
    sides.wait_status(task_id, "cancelled")
    final = sides.agree(task_id)
    assert final["attempts"] == 1
    assert final["checkpoint"] == {"step": "approved", "by": answer}
    assert final["cancelRequestedAt"] is not None and final["finishedAt"] is not None
    assert final["claimedBy"] is None


def test_the_library_drives_rest_and_cli_read(sides: Sides, database_url: str) -> None:
    async def enqueue() -> str:
        settings = Settings.build(database={"url": database_url})
        async with iron_defer.open_engine(
            settings, tasks=[], run_workers=False, migrate=False
        ) as engine:
            record = await engine.enqueue_payload(None, "durable", {"hold": 60}, validate=False)
        return str(record.id)

    task_id = trio.run(enqueue)
    sides.wait_status(task_id, "suspended")
    parked = sides.agree(task_id)
    assert (parked["checkpoint"], parked["attempts"]) == ({"step": "asked"}, 0)
    sides.library("signal", task_id, {"by": "library"})
    sides.wait_status(task_id, "running")
    wait_for(lambda: sides.rest(task_id)["checkpoint"]["step"] == "approved")
    running = sides.agree(task_id)
    asked = sides.library("cancel", task_id)
    assert (asked["status"], asked["cancelRequestedAt"] is not None) == ("running", True)
    _assert_life(sides, task_id, {"by": "library"}, running)


def test_rest_drives_cli_and_library_read(sides: Sides) -> None:
    created = sides.server.request(
        "POST", "/tasks", {"kind": "durable", "payload": {"hold": 60}, "attemptTimeout": 600}
    )
    assert created.status == 201, created.body
    task_id = created.json()["id"]
    sides.wait_status(task_id, "suspended")
    parked = sides.agree(task_id)
    assert (parked["checkpoint"], parked["attemptTimeout"]) == ({"step": "asked"}, 600)
    signalled = sides.server.request("POST", f"/tasks/{task_id}/signal", {"payload": "rest"})
    assert (signalled.status, signalled.json()["status"]) == (200, "pending")
    sides.wait_status(task_id, "running")
    wait_for(lambda: sides.rest(task_id)["checkpoint"]["step"] == "approved")
    running = sides.agree(task_id)
    asked = sides.server.request("DELETE", f"/tasks/{task_id}")
    assert (asked.status, asked.json()["status"]) == (202, "running")
    _assert_life(sides, task_id, "rest", running)


def test_the_cli_drives_rest_and_library_read(sides: Sides) -> None:
    submitted = sides.cli(
        "submit",
        "durable",
        "--payload",
        '{"hold": 60}',
        "--attempt-timeout",
        "600",
        "--app",
        "e2e_tasks",
    )
    task_id = submitted.stdout.strip()
    sides.wait_status(task_id, "suspended")
    parked = sides.agree(task_id)
    assert (parked["checkpoint"], parked["attemptTimeout"]) == ({"step": "asked"}, 600)
    signalled = sides.cli("tasks", "signal", task_id, "--payload", "[1, 2]", "--json")
    assert json.loads(signalled.stdout)["status"] == "pending"
    sides.wait_status(task_id, "running")
    wait_for(lambda: sides.rest(task_id)["checkpoint"]["step"] == "approved")
    running = sides.agree(task_id)
    asked = sides.cli("tasks", "cancel", task_id)
    assert asked.stdout.startswith(f"cancellation requested for running task {task_id}")
    _assert_life(sides, task_id, [1, 2], running)
