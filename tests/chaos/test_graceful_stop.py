"""Graceful stop under load: SIGTERM to the real ``serve`` while it works through short tasks
and a few that outlast the shutdown deadline.

Proves: exit status 0 within shutdown_timeout plus a small margin, no task left running,
the short tasks done or still pending (never lost), the long ones pending again with the
interrupted attempt not counted.
"""

from __future__ import annotations

import random
import signal
import time
from typing import TYPE_CHECKING

from tests import pg
from tests.e2e.serving import base_env, start_server, wait_for, write_tasks_module

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

SHUTDOWN_TIMEOUT = 3.0
#: Process exit, pool close and the final release on top of the drain deadline.
MARGIN = 2.0


def test_sigterm_under_load_exits_zero_and_leaves_nothing_running(
    report: Callable[[str], None], database_url: str, tmp_path: Path
) -> None:
    """SIGTERM while 300 short and 4 long tasks are queued or running."""
    rng = random.Random(3)
    app_dir = write_tasks_module(tmp_path)
    server = start_server(
        "--app",
        "e2e_tasks",
        "--queue",
        "default=16",
        cwd=app_dir,
        env=base_env(
            DATABASE_URL=database_url,
            IRON_DEFER__WORKER__SHUTDOWN_TIMEOUT=f"{SHUTDOWN_TIMEOUT}s",
        ),
    )
    try:
        long_ids = [
            server.request("POST", "/tasks", {"kind": "sleep", "payload": {"seconds": 120}}).json()[
                "id"
            ]
            for _ in range(4)
        ]
        for _ in range(300):
            server.request(
                "POST", "/tasks", {"kind": "sleep", "payload": {"seconds": rng.uniform(0.05, 0.3)}}
            )

        def completed() -> int:
            rows = pg.fetch_sync(
                database_url,
                "SELECT count(*) AS n FROM iron_defer.tasks WHERE status = 'completed'",
            )
            return int(rows[0]["n"])

        wait_for(lambda: completed() >= 50, timeout=60)
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = server.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        server.stop()
    rows = pg.fetch_sync(
        database_url, "SELECT id::text, status, attempts, claimed_by FROM iron_defer.tasks"
    )
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    long_rows = [r for r in rows if r["id"] in long_ids]
    assert code == 0
    assert took <= SHUTDOWN_TIMEOUT + MARGIN, took
    assert set(statuses) <= {"completed", "pending"}, statuses
    assert sum(statuses.values()) == 304
    assert [(r["status"], r["attempts"], r["claimed_by"]) for r in long_rows] == [
        ("pending", 0, None)
    ] * 4
    report(
        f"graceful stop: tasks=304 completed={statuses.get('completed', 0)} "
        f"pending={statuses.get('pending', 0)} running=0 exit={code} "
        f"stopped_in_s={took:.2f} (shutdown_timeout={SHUTDOWN_TIMEOUT})"
    )
