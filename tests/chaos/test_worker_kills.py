"""Worker kills: 3 engine processes drain 2,000 tasks while a driver SIGKILLs a random one at
random moments and restarts it.

Proves: every task completes, none is lost, every task that ran more than once was in
flight on a killed engine, and each killed engine's tasks were recovered within
lease + sweeper interval of the kill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

import random
import time
from datetime import datetime

from tests import pg
from tests.chaos import ledger
from tests.chaos.conftest import enqueue
from tests.chaos.fleet import Fleet, wait_for
from tests.chaos.tasks import ChaosWork

TASKS = 2000
ENGINES = 3
MIN_KILLS = 5
LEASE, SWEEP = 2.0, 0.5


def test_sigkilled_workers_lose_nothing_and_rerun_only_what_they_held(
    report: Callable[[str], None], database_url: str, ledger_url: str
) -> None:
    """SIGKILL at random moments: zero lost, reruns only for tasks in flight on a killed
    engine, recovery within lease + sweeper interval."""
    rng = random.Random(20261130)
    enqueue(database_url, [ChaosWork(n=n, seconds=rng.uniform(0.05, 0.25)) for n in range(TASKS)])
    fleet = Fleet(
        database_url,
        ledger_url,
        "--concurrency",
        "8",
        "--lease",
        str(LEASE),
        "--heartbeat",
        "0.5",
        "--sweep",
        str(SWEEP),
    )
    kills: list[tuple[str, float]] = []
    started = time.time()
    try:
        for _ in range(ENGINES):
            fleet.start()

        def remaining() -> int:
            rows = pg.fetch_sync(
                database_url,
                "SELECT count(*) AS n FROM iron_defer.tasks WHERE status <> 'completed'",
            )
            return int(rows[0]["n"])

        while remaining() > TASKS * 0.05 or len(kills) < MIN_KILLS:
            if remaining() == 0:
                break
            time.sleep(rng.uniform(0.6, 1.6))
            victim = rng.choice(fleet.alive)
            assert victim.worker_id is not None
            kills.append((str(victim.worker_id), fleet.kill(victim)))
            fleet.start()
        wait_for(lambda: remaining() == 0, timeout=60)
        drained_in = time.time() - started
        statuses = pg.fetch_sync(
            database_url, "SELECT status, count(*) AS n FROM iron_defer.tasks GROUP BY 1"
        )
        runs = ledger.executions(ledger_url)
        recovered = fleet.events("task_recovered")
    finally:
        fleet.stop()

    assert {r["status"]: r["n"] for r in statuses} == {"completed": TASKS}
    assert sorted(runs) == list(range(TASKS)), "a task never ran"
    killed = {worker for worker, _ in kills}
    duplicates = {n: executions for n, executions in runs.items() if len(executions) > 1}
    for n, executions in duplicates.items():
        # every execution but the last was cut short by a kill of its engine
        for execution in executions[:-1]:
            assert str(execution.worker_id) in killed, (n, executions)
    # recovery: each task a killed engine held was back to pending within lease + sweep
    recovery_times = []
    kill_at = dict(kills)
    for event in recovered:
        previous = event["previous_worker"]
        if previous in kill_at:
            recovered_at = datetime.fromisoformat(event["timestamp"]).timestamp()
            recovery_times.append(recovered_at - kill_at[previous])
    assert len(kills) >= MIN_KILLS
    assert recovery_times, "no killed engine held a task (no recovery to measure)"
    assert max(recovery_times) <= LEASE + SWEEP * 1.1 + 0.5, recovery_times
    lost = TASKS - len(runs)
    report(
        f"worker kills: tasks={TASKS} engines={ENGINES} kills={len(kills)} "
        f"executions={sum(len(r) for r in runs.values())} duplicates={len(duplicates)} "
        f"lost={lost} recoveries={len(recovery_times)} "
        f"recovery_s_max={max(recovery_times):.2f} "
        f"recovery_s_median={sorted(recovery_times)[len(recovery_times) // 2]:.2f} "
        f"drained_in_s={drained_in:.1f}"
    )
