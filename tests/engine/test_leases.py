"""Leases: heartbeats keep long tasks from being run twice, lost leases stop their handler,
stale workers cannot overwrite a newer owner's outcome, and a killed worker's task runs
again elsewhere within lease + sweeper interval.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest
import structlog
import trio

import iron_defer_trio as iron_defer

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db

ROOT = Path(__file__).resolve().parents[2]


class Long(iron_defer.Task):
    """Runs longer than the lease."""

    KIND: ClassVar[str] = "long"
    runs: ClassVar[int] = 0
    seconds: float

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Long.runs += 1
        await trio.sleep(self.seconds)


class Gate(iron_defer.Task):
    """Waits for the test to open its gate; records cancellation."""

    KIND: ClassVar[str] = "gate"
    started: ClassVar[trio.Event]
    release: ClassVar[trio.Event]
    cancelled: ClassVar[bool] = False
    runs: ClassVar[list[uuid.UUID]] = []

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Gate.runs.append(ctx.worker_id)
        Gate.started.set()
        try:
            await Gate.release.wait()
        except trio.Cancelled:
            Gate.cancelled = True
            raise


class Block(iron_defer.Task):
    """Same kind as the one the killed process runs; here it completes at once."""

    KIND: ClassVar[str] = "block"
    label: str = ""
    done: ClassVar[trio.Event]

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Block.done.set()


@pytest.fixture(autouse=True)
def _reset() -> None:
    Long.runs = 0
    Gate.started = trio.Event()
    Gate.release = trio.Event()
    Gate.cancelled = False
    Gate.runs = []
    Block.done = trio.Event()


async def _wait_for(db: Db, sql: str, *args: object) -> None:
    while not await db.fetchval(sql, *args):
        await trio.sleep(0.01)


async def test_task_three_times_longer_than_its_lease_runs_once(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Heartbeats renew the lease, so sweepers (here a second engine) never recover it."""
    with trio.fail_after(30):
        async with (
            open_test_engine(
                tasks=[Long], lease_duration=1.0, heartbeat_interval=0.25, sweeper_interval=0.2
            ) as first,
            open_test_engine(
                tasks=[Long], lease_duration=1.0, heartbeat_interval=0.25, sweeper_interval=0.2
            ) as second,
        ):
            record = await first.enqueue(Long(seconds=3.0))
            await first.wait_until_idle()
            await second.wait_until_idle()
        row = await db.fetchrow("SELECT * FROM iron_defer.tasks WHERE id = $1", record.id)
    assert Long.runs == 1
    assert (row["status"], row["attempts"]) == ("completed", 1)


async def test_lost_lease_cancels_the_handler(open_test_engine: EngineFactory, db: Db) -> None:
    """When the heartbeat finds the lease taken over, the local handler is cancelled and its
    outcome is not written."""
    intruder = uuid.uuid4()
    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        async with open_test_engine(tasks=[Gate], heartbeat_interval=0.2) as engine:
            record = await engine.enqueue(Gate())
            await Gate.started.wait()
            # Another worker now owns the attempt (as after a recovery and re-claim).
            await db.execute(
                "UPDATE iron_defer.tasks SET claimed_by = $2 WHERE id = $1", record.id, intruder
            )
            while not Gate.cancelled:
                await trio.sleep(0.01)
        row = await db.fetchrow("SELECT * FROM iron_defer.tasks WHERE id = $1", record.id)
    assert Gate.cancelled
    assert (row["status"], row["claimed_by"]) == ("running", intruder)
    assert any(e["event"] == "task_lease_lost" and e["task_id"] == str(record.id) for e in logs)


async def test_stale_worker_cannot_overwrite_the_new_owners_outcome(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """A worker whose lease expired and was recovered finishes late: its write is refused,
    and the row keeps the outcome of the worker that owns the task now."""
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        # The stale engine renews rarely, so the test expires its lease before it notices; its
        # one slot stays busy with the stale attempt, so the fresh engine claims attempt 2.
        async with open_test_engine(
            tasks=[Gate],
            queues={"default": 1},
            lease_duration=30.0,
            heartbeat_interval=15.0,
            sweeper_interval=60.0,
        ) as stale:
            record = await stale.enqueue(Gate())
            await Gate.started.wait()
            await db.execute(
                "UPDATE iron_defer.tasks SET claimed_until = now() - interval '1 second' "
                "WHERE id = $1",
                record.id,
            )
            Gate.started = trio.Event()
            async with open_test_engine(tasks=[Gate], sweeper_interval=0.1) as fresh:
                # fresh recovers the task, claims attempt 2 and finishes it
                await Gate.started.wait()
                Gate.release.set()
                await fresh.wait_until_idle()
            # the stale handler returned too (same gate): its completion of attempt 1 is fenced
            await stale.wait_until_idle()
        row = await db.fetchrow("SELECT * FROM iron_defer.tasks WHERE id = $1", record.id)
    assert Gate.runs == [stale.worker_id, fresh.worker_id]
    assert (row["status"], row["attempts"]) == ("completed", 2)
    refused = [e for e in logs if e["event"] == "outcome_refused"]
    assert [(e["task_id"], e["attempt"]) for e in refused] == [(str(record.id), 1)]


async def test_killed_worker_process_task_reruns_within_lease_plus_sweep(
    open_test_engine: EngineFactory, db: Db, database_url: str
) -> None:
    """SIGKILL a worker process mid-task: another engine runs the task again within
    lease_duration + sweeper_interval of the kill."""
    lease, sweep = 2.0, 0.5
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.engine.proc_worker", database_url], env=env, cwd=ROOT
    )
    try:
        with trio.fail_after(40):
            async with open_test_engine(tasks=[Block], run_workers=False) as producer:
                record = await producer.enqueue(Block(label="victim"))
            await _wait_for(
                db,
                "SELECT status = 'running' FROM iron_defer.tasks WHERE id = $1",
                record.id,
            )
            victim = await db.fetchval(
                "SELECT claimed_by FROM iron_defer.tasks WHERE id = $1", record.id
            )
            process.send_signal(signal.SIGKILL)
            killed_at = trio.current_time()
            await process.wait()
            async with open_test_engine(
                tasks=[Block], lease_duration=lease, sweeper_interval=sweep
            ) as rescuer:
                await Block.done.wait()
                recovered_after = trio.current_time() - killed_at
                await rescuer.wait_until_idle()
            row = await db.fetchrow("SELECT * FROM iron_defer.tasks WHERE id = $1", record.id)
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    assert process.returncode == -signal.SIGKILL
    assert (row["status"], row["attempts"]) == ("completed", 2)
    assert row["last_error"] is not None and str(victim) in row["last_error"]
    # jittered sweeps wait up to 1.1 x the interval; 0.5 s covers claim and bookkeeping
    assert recovered_after <= lease + sweep * 1.1 + 0.5, recovered_after
    print(f"killed worker's task ran again {recovered_after:.2f} s after SIGKILL")


async def test_engine_that_reclaims_its_own_lost_task_cancels_the_stale_attempt(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """After its lease expired and was recovered, the same engine may claim the next attempt
    while the stale one still runs: the heartbeat cancels the stale attempt only, and the
    task completes once, as attempt 2."""
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with open_test_engine(
            tasks=[Gate], queues={"default": 2}, heartbeat_interval=0.2, sweeper_interval=0.1
        ) as engine:
            record = await engine.enqueue(Gate())
            await Gate.started.wait()
            Gate.started = trio.Event()
            await db.execute(
                "UPDATE iron_defer.tasks SET claimed_until = now() - interval '1 second' "
                "WHERE id = $1",
                record.id,
            )
            await Gate.started.wait()  # attempt 2 started, on this same engine
            while not Gate.cancelled:  # the heartbeat found attempt 1 stale
                await trio.sleep(0.01)
            Gate.release.set()
            await engine.wait_until_idle()
        row = await db.fetchrow("SELECT * FROM iron_defer.tasks WHERE id = $1", record.id)
    assert Gate.runs == [engine.worker_id, engine.worker_id]
    assert (row["status"], row["attempts"]) == ("completed", 2)
    lost = [e for e in logs if e["event"] == "task_lease_lost"]
    assert [(e["task_id"], e["attempt"]) for e in lost] == [(str(record.id), 1)]
