"""Pool exhaustion: many more running tasks than database connections, each doing database
work of its own.

Proves: a ``pool_saturated`` warning and the ``iron_defer_db_pool_waiting`` metric appear,
no task is dropped, and throughput is back to normal once the pressure is gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

from typing import ClassVar

import structlog
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

import iron_defer_trio as iron_defer
from iron_defer_trio.observability.metrics import POOL_WAITING
from tests.conftest import fast_settings

BATCH = 300
CONCURRENCY = 40
CONNECTIONS = 2


class Plain(iron_defer.Task):
    KIND: ClassVar[str] = "plain"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await trio.sleep(0.01)


class Chatty(iron_defer.Task):
    """Does database work of its own through the engine: enqueues a child, reads itself,
    reads the queue's counts and a page of up to 1,000 tasks (a few ms of connection time,
    so 40 slots really queue up for 2 connections)."""

    KIND: ClassVar[str] = "chatty"
    engine: ClassVar[iron_defer.Engine]

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await Chatty.engine.enqueue(Plain())
        await Chatty.engine.get(ctx.task_id)
        await Chatty.engine.queue_stats()
        await Chatty.engine.list(limit=1000)


def _max_waiting(reader: InMemoryMetricReader) -> float:
    data = reader.get_metrics_data()
    values = [
        float(point.value)
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == POOL_WAITING.name
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint)
    ]
    return max(values, default=0.0)


async def test_pool_exhaustion_warns_counts_drops_nothing_and_recovers(
    report: Callable[[str], None], database_url: str
) -> None:
    """40 slots on 2 connections under database-heavy handlers."""
    settings = fast_settings(database_url).model_copy(
        update={
            "database": iron_defer.DatabaseSettings(
                url=database_url, max_connections=CONNECTIONS, pool_wait_warning=0.05
            )
        }
    )
    reader = InMemoryMetricReader()
    peak_waiting = 0.0

    async def sample_gauge(stop: trio.Event) -> None:
        nonlocal peak_waiting
        while not stop.is_set():
            peak_waiting = max(peak_waiting, _max_waiting(reader))
            await trio.sleep(0.005)

    async def drain(engine: iron_defer.Engine, tasks: list[iron_defer.Task]) -> float:
        started = trio.current_time()
        await engine.enqueue_many(tasks)
        await engine.wait_until_idle()
        return len(tasks) / (trio.current_time() - started)

    with trio.fail_after(120), structlog.testing.capture_logs() as logs:
        async with iron_defer.open_engine(
            settings,
            tasks=[Plain, Chatty],
            queues={"default": CONCURRENCY},
            migrate=False,
            meter_provider=MeterProvider(metric_readers=[reader]),
        ) as engine:
            Chatty.engine = engine
            before = await drain(engine, [Plain() for _ in range(BATCH)])
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample_gauge, stop)
                under_pressure = await drain(engine, [Chatty() for _ in range(BATCH)])
                stop.set()
            after = await drain(engine, [Plain() for _ in range(BATCH)])
            stats = {s.queue: s for s in await engine.queue_stats()}
    warnings = [e for e in logs if e["event"] == "pool_saturated"]
    completed = stats["default"].completed
    assert completed == 4 * BATCH  # 300 + 300 parents + 300 children + 300, none dropped
    assert stats["default"].pending == stats["default"].running == stats["default"].failed == 0
    assert warnings, "no pool_saturated warning"
    assert warnings[0]["max_connections"] == CONNECTIONS
    assert peak_waiting >= 1, "the waiting gauge never showed a queue for connections"
    assert after >= before * 0.5, (before, after)
    report(
        f"pool exhaustion: slots={CONCURRENCY} connections={CONNECTIONS} tasks={completed} "
        f"dropped=0 warnings={len(warnings)} peak_waiting={peak_waiting:.0f} "
        f"tasks_per_s before={before:.0f} under_pressure={under_pressure:.0f} after={after:.0f}"
    )
