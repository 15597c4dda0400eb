"""Cancelling running tasks: ``engine.cancel`` on a running task stops its handler on
whichever engine runs it and the task ends ``cancelled``, never retried.

Rules: the handler sees ``trio.Cancelled`` at its next checkpoint and may shield its cleanup;
whatever it raises from there, the task ends cancelled with the attempt counted; the request
reaches the running engine through NOTIFY (well under a second), and through the heartbeat
when the notification was missed; an engine in another process is reached the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer
from tests.engine.proc_worker import Cancellable

if TYPE_CHECKING:
    from uuid import UUID

    from tests.conftest import EngineFactory
    from tests.pg import Db

ROOT = Path(__file__).resolve().parents[2]


class Sleeper(iron_defer.Task):
    """Runs until cancelled; records what it saw. ``cleanup`` is how long its shielded
    cleanup takes; ``raise_instead`` makes the cleanup raise an error rather than re-raise
    the cancellation."""

    KIND: ClassVar[str] = "sleeper"
    started: ClassVar[list[int]] = []
    cancelled_at: ClassVar[list[float]] = []
    cleaned: ClassVar[int] = 0
    running: ClassVar[trio.Event | None] = None
    cleanup: float = 0.0
    raise_instead: bool = False

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Sleeper.started.append(ctx.attempt)
        if Sleeper.running is not None:
            Sleeper.running.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            Sleeper.cancelled_at.append(trio.current_time())
            with trio.CancelScope(shield=True):
                await trio.sleep(self.cleanup)
                Sleeper.cleaned += 1
            if self.raise_instead:
                raise RuntimeError("cleanup failed") from None
            raise


@pytest.fixture(autouse=True)
def _reset() -> None:
    Sleeper.started = []
    Sleeper.cancelled_at = []
    Sleeper.cleaned = 0
    Sleeper.running = trio.Event()


async def _wait_for(engine: iron_defer.Engine, task_id: UUID, status: str) -> iron_defer.TaskRecord:
    while (record := await engine.get(task_id)).status != status:
        await trio.sleep(0.01)
    return record


async def _started(record: iron_defer.TaskRecord, engine: iron_defer.Engine) -> None:
    assert Sleeper.running is not None
    await Sleeper.running.wait()
    await _wait_for(engine, record.id, "running")


async def test_cancel_stops_the_handler_and_the_task_ends_cancelled(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """The handler sees trio.Cancelled, its shielded cleanup runs to the end, the task is
    cancelled with its one attempt counted and never runs again."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Sleeper], poll_interval=5.0) as engine:
            record = await engine.enqueue(Sleeper(cleanup=0.2), max_attempts=5)
            await _started(record, engine)
            asked = await engine.cancel(record.id)
            final = await _wait_for(engine, record.id, "cancelled")
            await trio.sleep(1.0)  # past a poll and a sweep: nothing picks it up again
            await engine.wait_until_idle(include_scheduled=True)
            again = await engine.get(record.id)
    assert asked.status is iron_defer.TaskStatus.RUNNING
    assert asked.cancel_requested_at is not None
    assert Sleeper.started == [1]
    assert len(Sleeper.cancelled_at) == 1 and Sleeper.cleaned == 1
    assert (final.attempts, final.claimed_by, final.last_error) == (1, None, None)
    assert final.finished_at is not None
    assert final.cancel_requested_at == asked.cancel_requested_at
    assert again == final
    stats = engine.statistics().queues[0]
    assert (stats.cancelled, stats.retried, stats.failed) == (1, 0, 0)


async def test_a_cleanup_that_raises_still_ends_cancelled_with_its_error(
    open_test_engine: EngineFactory,
) -> None:
    """An error raised while cancelled is kept as last_error, but the task is cancelled, not
    retried."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Sleeper]) as engine:
            record = await engine.enqueue(Sleeper(raise_instead=True), max_attempts=5)
            await _started(record, engine)
            await engine.cancel(record.id)
            final = await _wait_for(engine, record.id, "cancelled")
            await engine.wait_until_idle(include_scheduled=True)
    assert final.last_error == "RuntimeError: cleanup failed"
    assert final.attempts == 1
    assert Sleeper.started == [1]


async def test_cancel_reaches_the_engine_running_the_task_through_notify(
    open_test_engine: EngineFactory,
) -> None:
    """A producer engine asks; the worker engine's handler sees the cancellation well under a
    second later (heartbeat 10 s, so only the notification can explain it)."""
    with trio.fail_after(30):
        async with (
            open_test_engine(
                tasks=[Sleeper], heartbeat_interval=10.0, lease_duration=30.0
            ) as worker,
            open_test_engine(tasks=[Sleeper], run_workers=False) as producer,
        ):
            while not worker.statistics().listening:
                await trio.sleep(0.01)
            record = await producer.enqueue(Sleeper())
            await _started(record, producer)
            asked_at = trio.current_time()
            await producer.cancel(record.id)
            await _wait_for(producer, record.id, "cancelled")
    [seen_at] = Sleeper.cancelled_at
    assert seen_at - asked_at < 1.0


async def test_a_missed_notification_is_caught_up_by_the_heartbeat(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """A request written without its NOTIFY (as if the listener were down) still stops the
    handler, at the next heartbeat."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Sleeper], heartbeat_interval=0.3) as engine:
            record = await engine.enqueue(Sleeper())
            await _started(record, engine)
            await db.execute(
                "UPDATE iron_defer.tasks SET cancel_requested_at = now() WHERE id = $1",
                record.id,
            )
            final = await _wait_for(engine, record.id, "cancelled")
    assert final.attempts == 1
    assert len(Sleeper.cancelled_at) == 1


async def test_cancel_beats_the_attempt_timeout_and_retries(
    open_test_engine: EngineFactory,
) -> None:
    """A task with retries left and a timeout is cancelled, not retried."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Sleeper]) as engine:
            record = await engine.enqueue(Sleeper(), max_attempts=3, attempt_timeout=60)
            await _started(record, engine)
            await engine.cancel(record.id)
            final = await _wait_for(engine, record.id, "cancelled")
            await engine.wait_until_idle(include_scheduled=True)
    assert (final.attempts, Sleeper.started) == (1, [1])


async def test_a_request_not_yet_seen_holds_when_shutdown_hands_the_task_back(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """The engine drains before it learns of the request (no NOTIFY, heartbeat 10 s): the
    shutdown deadline cuts the handler short and the hand-back ends the task cancelled, not
    pending."""
    with trio.fail_after(20):
        async with open_test_engine(
            tasks=[Sleeper], shutdown_timeout=0.3, heartbeat_interval=10.0, lease_duration=30.0
        ) as engine:
            record = await engine.enqueue(Sleeper())
            await _started(record, engine)
            await db.execute(
                "UPDATE iron_defer.tasks SET cancel_requested_at = now() WHERE id = $1",
                record.id,
            )
            engine.stop()
        row = await db.fetchrow(
            "SELECT status, attempts, claimed_by FROM iron_defer.tasks WHERE id = $1", record.id
        )
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("cancelled", 1, None)
    assert len(Sleeper.cancelled_at) == 1


async def test_cancelling_a_finished_task_is_still_a_conflict(
    open_test_engine: EngineFactory,
) -> None:
    """Completed, failed and cancelled tasks cannot be cancelled (InvalidTransition)."""
    with trio.fail_after(20):
        async with open_test_engine(tasks=[Sleeper]) as engine:
            record = await engine.enqueue(Sleeper())
            await _started(record, engine)
            await engine.cancel(record.id)
            await _wait_for(engine, record.id, "cancelled")
            with pytest.raises(iron_defer.InvalidTransition) as caught:
                await engine.cancel(record.id)
    assert caught.value.status == "cancelled"


async def _lines(stream: trio.abc.ReceiveStream, into: trio.MemorySendChannel[str]) -> None:
    buffer = b""
    async with into:
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode()
                # The engine's own log lines go to stdout too; keep the worker's messages.
                if text.split(" ", 1)[0] in ("ready", "started", "cancelled"):
                    await into.send(text)


async def test_cancel_of_a_task_running_in_another_process(
    open_test_engine: EngineFactory, db: Db, database_url: str
) -> None:
    """The worker is its own process: its handler observes trio.Cancelled (and says so from a
    shielded cleanup) within a second of the request; the task ends cancelled and is never run
    again, not even after the lease and sweeper intervals have passed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.engine.proc_worker", database_url],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    send, lines = trio.open_memory_channel[str](100)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_lines, process.stdout, send)
            with trio.fail_after(60):
                assert (await lines.receive()).startswith("ready ")
                async with open_test_engine(tasks=[Cancellable], run_workers=False) as producer:
                    record = await producer.enqueue(Cancellable(), max_attempts=3)
                    assert await lines.receive() == f"started {record.id} 1"
                    # The engine lists after its handler printed; wait until it listens too.
                    await _wait_for(producer, record.id, "running")
                    asked = time.time()
                    await producer.cancel(record.id)
                    word, task_id, seen = (await lines.receive()).split()
                    final = await _wait_for(producer, record.id, "cancelled")
                    await trio.sleep(3.0)  # > lease (2 s) + sweeper interval (0.5 s) there
                    after = await producer.get(record.id)
            with trio.move_on_after(0.5):
                extra = await lines.receive()
                pytest.fail(f"the worker printed more: {extra}")
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
    delay = float(seen) - asked
    print(f"request -> handler saw trio.Cancelled in another process: {delay * 1000:.1f} ms")
    assert (word, task_id) == ("cancelled", str(record.id))
    assert 0 <= delay < 1.0
    assert (final.attempts, final.status) == (1, iron_defer.TaskStatus.CANCELLED)
    assert after == final
