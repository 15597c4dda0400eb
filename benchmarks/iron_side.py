"""iron-defer-trio's side of every measurement (trio). Run through ``benchmarks.worker``."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, ClassVar

import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.observability.logs import configure_json_logging
from iron_defer_trio.observability.telemetry import build_telemetry


class Noop(iron_defer.Task):
    """The benchmark task: does nothing (its cost is all queue overhead)."""

    KIND: ClassVar[str] = "noop"
    n: int = 0

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


class Probe(iron_defer.Task):
    """Records when it started (in-process latency probe)."""

    KIND: ClassVar[str] = "probe"
    started: ClassVar[dict[int, float]] = {}
    arrived: ClassVar[trio.Event | None] = None
    n: int

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        Probe.started[self.n] = time.perf_counter()
        if Probe.arrived is not None:
            Probe.arrived.set()


def quiet_production_logging() -> None:
    """Logging as `serve` sets it up in production (JSON at info), written nowhere: the cost
    of producing the events is measured, not the terminal's."""
    configure_json_logging("info", stream=open(os.devnull, "w"))  # noqa: SIM115


async def migrate(dsn: str) -> dict[str, Any]:
    await iron_defer.migrate(dsn)
    return {}


async def drain(dsn: str, total: int, concurrency: int) -> dict[str, Any]:
    """Drain ``total`` pre-filled no-op tasks at ``concurrency``."""
    quiet_production_logging()
    settings = iron_defer.Settings.build(
        database={"url": dsn, "max_connections": 10},
        queues={"default": concurrency},
    )
    # Metrics on, as `serve` has them (Prometheus registry); traces as `serve` without an
    # OTLP endpoint (not built).
    telemetry = build_telemetry(settings.observability)
    iron_defer.tune_garbage_collector()  # as `serve` does once started up
    async with iron_defer.open_engine(
        settings,
        tasks=[Noop],
        migrate=False,
        meter_provider=telemetry.meter_provider,
        tracer_provider=telemetry.tracer_provider,
    ) as engine:
        # The engine starts claiming as soon as it is open: count from here, and only the
        # tasks finished after this point.
        started = time.perf_counter()
        cpu = time.process_time()
        done_before = sum(q.completed for q in engine.statistics().queues)
        while True:
            stats = engine.statistics()
            done = sum(q.completed for q in stats.queues)
            if done >= total and stats.outcome_backlog == 0 and stats.in_flight == 0:
                break
            await trio.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu_used = time.process_time() - cpu
    measured = total - done_before
    return {
        "rate": measured / elapsed,
        "seconds": elapsed,
        "cpu_us_per_task": cpu_used / measured * 1e6,
    }


async def enqueue(dsn: str, single: int, bulk: int, batch: int) -> dict[str, Any]:
    """Rates (tasks/s) of ``single`` one-at-a-time enqueues and ``bulk`` tasks in batches."""
    quiet_production_logging()
    async with iron_defer.open_engine(
        dsn, tasks=[Noop], run_workers=False, migrate=False
    ) as engine:
        started = time.perf_counter()
        for n in range(single):
            await engine.enqueue(Noop(n=n))
        single_rate = single / (time.perf_counter() - started)
        started = time.perf_counter()
        for start in range(0, bulk, batch):
            await engine.enqueue_many([Noop(n=n) for n in range(start, start + batch)])
        bulk_rate = bulk / (time.perf_counter() - started)
    return {"single": single_rate, "bulk": bulk_rate}


async def latency(dsn: str, samples: int) -> dict[str, Any]:
    """Enqueue-to-start in ms, one task at a time, to an idle engine (another process' view is
    the same: the producer is a second engine with its own pool)."""
    quiet_production_logging()
    settings = iron_defer.Settings.build(database={"url": dsn}, worker={"poll_interval": 5})
    Probe.started.clear()
    latencies: list[float] = []
    async with iron_defer.open_engine(settings, tasks=[Probe], migrate=False) as worker:
        while not worker.statistics().listening:  # noqa: ASYNC110 - a statistic, no event
            await trio.sleep(0.01)
        async with iron_defer.open_engine(
            dsn, tasks=[Probe], run_workers=False, migrate=False
        ) as producer:
            for n in range(samples):
                Probe.arrived = trio.Event()
                sent = time.perf_counter()
                await producer.enqueue(Probe(n=n))
                await Probe.arrived.wait()
                latencies.append((Probe.started[n] - sent) * 1000)
                await trio.sleep(0.01)
    return {"latencies_ms": latencies}


async def claim_latency(dsn: str, samples: int) -> dict[str, Any]:
    """Time the engine's claim statement (10 tasks) against the table as it is."""
    from iron_defer_trio.store import open_postgres_store

    worker = uuid.uuid4()
    times = []
    async with open_postgres_store(iron_defer.DatabaseSettings(url=dsn)) as store:
        for _ in range(samples):
            started = time.perf_counter()
            await store.claim("default", worker, kinds=["noop"], limit=10, lease=60)
            times.append((time.perf_counter() - started) * 1000)
    return {"latencies_ms": times}
