"""Wake-ups: NOTIFY starts idle workers at once; the poll is only the fallback."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, ClassVar

import trio

import iron_defer_trio as iron_defer

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db


class Ping(iron_defer.Task):
    KIND: ClassVar[str] = "ping"
    started: ClassVar[trio.Event]

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Ping.started.set()


async def _until_listening(engine: iron_defer.Engine) -> None:
    while not engine.statistics().listening:
        await trio.sleep(0.01)


async def test_notification_wakes_an_idle_worker_long_before_the_poll(
    open_test_engine: EngineFactory,
) -> None:
    """With a 30 s poll interval, enqueue-to-start stays far below a second."""
    latencies = []
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Ping], poll_interval=30.0) as engine:
            await _until_listening(engine)
            for _ in range(10):
                Ping.started = trio.Event()
                sent = trio.current_time()
                await engine.enqueue(Ping())
                await Ping.started.wait()
                latencies.append(trio.current_time() - sent)
    assert max(latencies) < 1.0, latencies
    print(f"enqueue-to-start median {statistics.median(latencies) * 1000:.1f} ms")


async def test_enqueue_from_another_engine_wakes_the_worker(
    open_test_engine: EngineFactory,
) -> None:
    """A producer in another engine (another process in production) wakes the worker."""
    with trio.fail_after(30):
        async with (
            open_test_engine(tasks=[Ping], poll_interval=30.0) as worker,
            open_test_engine(tasks=[Ping], run_workers=False) as producer,
        ):
            await _until_listening(worker)
            Ping.started = trio.Event()
            sent = trio.current_time()
            await producer.enqueue(Ping())
            await Ping.started.wait()
            assert trio.current_time() - sent < 1.0


async def test_poll_finds_work_when_the_listener_is_gone(
    open_test_engine: EngineFactory, db: Db
) -> None:
    """Kill the LISTEN connection: the poll still picks up work, and the listener comes back."""
    with trio.fail_after(30):
        async with open_test_engine(tasks=[Ping], poll_interval=0.3) as engine:
            await _until_listening(engine)
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'iron-defer-trio listen' AND datname = current_database()"
            )
            while engine.statistics().listening:
                await trio.sleep(0.01)
            Ping.started = trio.Event()
            await engine.enqueue(Ping())
            await Ping.started.wait()
            await _until_listening(engine)
