"""Database outages: PostgreSQL (a private cluster) is stopped, or killed, mid-drain. The
engine keeps running, enqueue fails cleanly meanwhile, work resumes by itself, nothing is
lost.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import structlog
import trio

import iron_defer_trio as iron_defer
from tests import pg
from tests.conftest import fast_settings

if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from iron_defer_trio.store._cluster import PrivateCluster

TASKS = 300
#: How long the server stays down when stopped.
OUTAGE = 2.0


class Work(iron_defer.Task):
    KIND: ClassVar[str] = "work"
    runs: ClassVar[Counter[int]] = Counter()
    n: int

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await trio.sleep(0.01)
        Work.runs[self.n] += 1


@pytest.fixture(autouse=True)
def _reset() -> None:
    Work.runs.clear()


async def _drain_through_outage(
    cluster: PrivateCluster, *, crash: bool
) -> list[MutableMapping[str, Any]]:
    dsn = cluster.create_database("outage")
    await iron_defer.migrate(dsn)
    # A lease longer than the outage: tasks finished during it keep their lease until their
    # outcome can be written, so nothing needs recovering and nothing runs twice.
    settings = fast_settings(dsn, lease_duration=10.0, heartbeat_interval=2.0)
    with structlog.testing.capture_logs() as logs:
        async with iron_defer.open_engine(
            settings, tasks=[Work], queues={"default": 10}, rng=random.Random(7)
        ) as engine:
            await engine.enqueue_many([Work(n=i) for i in range(TASKS)])
            while len(Work.runs) < TASKS // 5:
                await trio.sleep(0.01)
            if crash:
                await trio.to_thread.run_sync(cluster.kill)
            else:
                await trio.to_thread.run_sync(cluster.stop)
            down_at = trio.current_time()
            with pytest.raises(iron_defer.StoreUnavailable):
                await engine.enqueue(Work(n=-1))
            assert engine.state is iron_defer.EngineState.RUNNING
            await trio.sleep(max(0.0, OUTAGE - (trio.current_time() - down_at)))
            done_before_restart = len(Work.runs)
            await trio.to_thread.run_sync(cluster.start)
            restarted_at = trio.current_time()
            while len(Work.runs) == done_before_restart:
                await trio.sleep(0.01)
            resumed_after = trio.current_time() - restarted_at
            await engine.wait_until_idle()
        async with pg.connect(dsn) as db:
            statuses = await db.statuses()
    assert statuses == {"completed": TASKS}  # nothing lost, the failed enqueue wrote nothing
    assert sorted(Work.runs) == list(range(TASKS))
    assert set(Work.runs.values()) == {1}
    assert resumed_after < 6.0, resumed_after
    print(f"outage crash={crash}: work resumed {resumed_after:.2f} s after the restart")
    return logs


async def test_engine_rides_out_a_stopped_server(private_cluster: PrivateCluster) -> None:
    """Stop PostgreSQL for 2 s mid-drain: every task completes once, and the outage is
    logged once with its recovery."""
    with trio.fail_after(60):
        logs = await _drain_through_outage(private_cluster, crash=False)
    events = [e["event"] for e in logs]
    assert events.count("database_unavailable") == 1
    assert events.count("database_recovered") == 1


async def test_engine_rides_out_a_crashed_server(private_cluster: PrivateCluster) -> None:
    """SIGKILL PostgreSQL mid-drain; after crash recovery every task completes once."""
    with trio.fail_after(60):
        await _drain_through_outage(private_cluster, crash=True)
