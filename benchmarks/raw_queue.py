"""The ceiling: a minimal job queue on plain asyncio + asyncpg, without any of the guarantees
that cost time (no leases renewed, no fencing, no retries, no logs, no metrics).

It never imports iron_defer_trio: importing trio-asyncio replaces ``asyncio.new_event_loop``
with its own loop class, which would slow the ceiling down.

Its claim (SKIP LOCKED, sized to free slots, several claimers overlapping) and its batched
completion are the same techniques the engine uses, so the ratio between the two is the
price of the bridge and of everything iron-defer-trio guarantees.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg

SCHEMA = """
DROP TABLE IF EXISTS raw_jobs;
CREATE TABLE raw_jobs (
    id         bigserial   PRIMARY KEY,
    payload    jsonb       NOT NULL,
    status     text        NOT NULL DEFAULT 'pending',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX raw_jobs_pending ON raw_jobs (id) WHERE status = 'pending';
"""
CLAIM = """
WITH picked AS (
    SELECT id FROM raw_jobs WHERE status = 'pending' ORDER BY id LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE raw_jobs AS j SET status = 'running' FROM picked WHERE j.id = picked.id
RETURNING j.id, j.payload
"""
COMPLETE = "UPDATE raw_jobs SET status = 'done' WHERE id = ANY($1::bigint[])"
INSERT_ONE = "INSERT INTO raw_jobs (payload) VALUES ($1::jsonb) RETURNING id"
INSERT_MANY = "INSERT INTO raw_jobs (payload) SELECT unnest($1::text[])::jsonb"
LISTEN_CHANNEL = "raw_jobs"


async def prepare(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()


async def enqueue_one_by_one(dsn: str, count: int) -> float:
    """Rate of single-row inserts through a pool, one at a time (tasks/s)."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        started = time.perf_counter()
        for n in range(count):
            await pool.fetchval(INSERT_ONE, json.dumps({"n": n}))
        return count / (time.perf_counter() - started)
    finally:
        await pool.close()


async def enqueue_bulk(dsn: str, count: int, batch: int) -> float:
    """Rate of batched inserts (tasks/s)."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        started = time.perf_counter()
        for start in range(0, count, batch):
            payloads = [json.dumps({"n": n}) for n in range(start, min(start + batch, count))]
            await pool.execute(INSERT_MANY, payloads)
        return count / (time.perf_counter() - started)
    finally:
        await pool.close()


async def drain(
    dsn: str, total: int, *, concurrency: int, per_claim: int, claimers: int = 2
) -> dict[str, Any]:
    """Run no-op jobs until ``total`` are done: ``concurrency`` runners execute jobs from a
    local buffer that claim loops keep filled, ``per_claim`` rows per claim statement
    (fetch-ahead), completions flushed in batches while the previous flush is in flight."""
    pool = await asyncpg.create_pool(dsn, min_size=claimers + 1, max_size=claimers + 2)
    buffer: asyncio.Queue[int] = asyncio.Queue()
    room = asyncio.Condition()
    reserved = 0
    running = 0
    done: list[int] = []
    finished = 0
    flush_wanted = asyncio.Event()
    capacity = concurrency + per_claim

    def outstanding() -> int:
        return buffer.qsize() + running + reserved

    async def runner() -> None:
        nonlocal running
        while True:
            job_id = await buffer.get()
            running += 1
            await asyncio.sleep(0)  # a no-op job still yields once, like an async handler
            running -= 1
            done.append(job_id)
            flush_wanted.set()
            async with room:
                room.notify_all()

    async def claimer() -> None:
        nonlocal reserved
        while True:
            async with room:
                await room.wait_for(lambda: capacity - outstanding() >= per_claim)
                want = per_claim
                reserved += want
            try:
                rows = await pool.fetch(CLAIM, want)
            finally:
                reserved -= want
            for row in rows:
                buffer.put_nowait(row["id"])
            if not rows:
                await asyncio.sleep(0.005)

    async def completer() -> None:
        nonlocal finished
        while finished < total:
            await flush_wanted.wait()
            flush_wanted.clear()
            batch, done[:] = list(done), []
            if batch:
                await pool.execute(COMPLETE, batch)
                finished += len(batch)

    started = time.perf_counter()
    cpu_started = time.process_time()
    tasks = [asyncio.create_task(claimer()) for _ in range(claimers)]
    tasks += [asyncio.create_task(runner()) for _ in range(concurrency)]
    await completer()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await pool.close()
    return {"rate": total / elapsed, "cpu_us_per_task": cpu / total * 1e6, "seconds": elapsed}


async def latency(dsn: str, samples: int) -> list[float]:
    """Enqueue-to-start in ms: INSERT + NOTIFY in one statement, a LISTENing claimer."""
    started: dict[int, float] = {}
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=3)
    listener = await asyncpg.connect(dsn)
    wake = asyncio.Event()
    arrived = asyncio.Event()

    def on_notify(*_: object) -> None:
        wake.set()

    await listener.add_listener(LISTEN_CHANNEL, on_notify)

    async def worker() -> None:
        while True:
            await wake.wait()
            wake.clear()
            for row in await pool.fetch(CLAIM, 10):
                started[json.loads(row["payload"])["n"]] = time.perf_counter()
                arrived.set()
                await pool.execute(COMPLETE, [row["id"]])

    task = asyncio.create_task(worker())
    latencies = []
    try:
        for n in range(samples):
            arrived.clear()
            sent = time.perf_counter()
            await pool.execute(
                "WITH i AS (INSERT INTO raw_jobs (payload) VALUES ($1::jsonb) RETURNING id) "
                "SELECT pg_notify($2, 'x') FROM i",
                json.dumps({"n": n}),
                LISTEN_CHANNEL,
            )
            await arrived.wait()
            latencies.append((started[n] - sent) * 1000)
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await listener.close()
        await pool.close()
    return latencies
