"""Database outages mid-drain: the tasks' PostgreSQL (a private cluster) is stopped for 5 s and
restarted, and, separately, SIGKILLed and restarted (crash recovery).

Proves: zero loss; the same engine processes resume without being restarted; enqueue calls
during the outage fail with StoreUnavailable and write nothing (not even part of a batch).
The ledger lives on the shared server, so it keeps recording through the outage.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import pytest
import trio

import iron_defer_trio as iron_defer
from tests import pg
from tests.chaos import ledger
from tests.chaos.conftest import enqueue
from tests.chaos.fleet import Fleet, wait_for
from tests.chaos.tasks import ChaosWork

if TYPE_CHECKING:
    from collections.abc import Callable

    from iron_defer_trio.store._cluster import PrivateCluster

TASKS = 1000
OUTAGE = 5.0


def _enqueue_during_outage(dsn: str) -> str:
    """A batch enqueue attempted while the database is down: the error it raised."""
    try:
        enqueue(dsn, [ChaosWork(n=-(i + 1)) for i in range(10)])
    except iron_defer.StoreUnavailable as exc:
        return str(exc)
    raise AssertionError("enqueue during the outage succeeded")


@pytest.mark.parametrize("crash", [False, True], ids=["stop-5s", "sigkill"])
def test_engines_ride_out_a_database_outage_without_loss(
    report: Callable[[str], None], private_cluster: PrivateCluster, ledger_url: str, crash: bool
) -> None:
    """Stop (or SIGKILL) PostgreSQL mid-drain: every task completes, the same processes
    carry on, and enqueues during the outage fail cleanly with nothing written."""
    tasks_dsn = private_cluster.create_database("chaos_tasks")
    trio.run(iron_defer.migrate, tasks_dsn)
    rng = random.Random(7 if crash else 11)
    enqueue(tasks_dsn, [ChaosWork(n=n, seconds=rng.uniform(0.01, 0.05)) for n in range(TASKS)])
    # A lease longer than the outage: tasks finished meanwhile keep their lease until their
    # outcome can be written, so nothing needs recovering.
    fleet = Fleet(tasks_dsn, ledger_url, "--concurrency", "8", "--lease", "10", "--heartbeat", "2")
    try:
        for _ in range(2):
            fleet.start()
        pids = sorted(w.process.pid for w in fleet.workers)

        def started() -> int:
            rows = pg.fetch_sync(ledger_url, "SELECT count(DISTINCT n) AS n FROM ledger")
            return int(rows[0]["n"])

        wait_for(lambda: started() >= TASKS // 4, timeout=60)
        if crash:
            private_cluster.kill()
        else:
            private_cluster.stop()
        down_at = time.monotonic()
        error = _enqueue_during_outage(tasks_dsn)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
        private_cluster.start()
        restarted_at = time.monotonic()

        def remaining() -> int:
            try:
                rows = pg.fetch_sync(
                    tasks_dsn,
                    "SELECT count(*) AS n FROM iron_defer.tasks WHERE status <> 'completed'",
                )
            except OSError:
                return -1
            return int(rows[0]["n"])

        wait_for(lambda: remaining() == 0, timeout=90)
        resumed_in = time.monotonic() - restarted_at
        rows = pg.fetch_sync(
            tasks_dsn, "SELECT status, count(*) AS n FROM iron_defer.tasks GROUP BY 1"
        )
        marked = pg.fetch_sync(
            tasks_dsn, "SELECT count(*) AS n FROM iron_defer.tasks WHERE (payload->>'n')::int < 0"
        )
        runs = ledger.executions(ledger_url)
        alive = sorted(w.process.pid for w in fleet.alive)
        outage_logs = len(fleet.events("database_unavailable"))
        recovered_logs = len(fleet.events("database_recovered"))
    finally:
        fleet.stop()
    assert {r["status"]: r["n"] for r in rows} == {"completed": TASKS}
    assert marked[0]["n"] == 0, "an enqueue during the outage was (half) written"
    assert "unavailable" in error or "cannot reach" in error, error
    assert alive == pids, "an engine process had to be restarted"
    assert sorted(runs) == list(range(TASKS))
    duplicates = sum(1 for executions in runs.values() if len(executions) > 1)
    assert outage_logs >= 2  # both engines noticed
    assert recovered_logs >= 2
    report(
        f"database {'sigkill' if crash else 'stop'}: tasks={TASKS} engines=2 "
        f"outage_s={OUTAGE} executions={sum(len(r) for r in runs.values())} "
        f"duplicates={duplicates} lost={TASKS - len(runs)} resumed_all_in_s={resumed_in:.1f} "
        f"failed_enqueue={error!r}"
    )
