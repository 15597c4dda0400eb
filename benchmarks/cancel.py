"""Cancel delay: from ``engine.cancel(id)`` on a running task to its handler seeing
``trio.Cancelled``, with the handler running in another process (another engine), and on to
the task's row being ``cancelled``.

    python -m benchmarks.cancel [--samples 100] [--dsn ADMIN_DSN]

Uses its own database (iron_defer_bench_cancel). The worker is ``python -m benchmarks.cancel
--worker DSN``, started by the benchmark; both processes stamp events with the wall clock
(same machine, same clock). Prints a table and writes docs/benchmarks/cancel.json and
cancel.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, ClassVar

import trio

import iron_defer_trio as iron_defer
from benchmarks import run
from benchmarks.iron_side import quiet_production_logging

if TYPE_CHECKING:
    from uuid import UUID

#: How often the producer reads the row while waiting for a status (ms-scale resolution).
_POLL = 0.002


class Hold(iron_defer.Task):
    """Runs until cancelled; prints ``started <id>`` and ``cancelled <id> <time>``."""

    KIND: ClassVar[str] = "bench_hold"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        print(f"started {ctx.task_id}", flush=True)
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            print(f"cancelled {ctx.task_id} {time.time()}", flush=True)
            raise


async def worker(dsn: str) -> None:
    async with iron_defer.open_engine(dsn, tasks=[Hold], migrate=False) as engine:
        while not engine.statistics().listening:  # noqa: ASYNC110 - a statistic, no event
            await trio.sleep(0.01)
        print("ready", flush=True)
        await trio.sleep_forever()


async def _lines(stream: trio.abc.ReceiveStream, into: trio.MemorySendChannel[str]) -> None:
    buffer = b""
    async with into:
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                await into.send(line.decode())


async def _wait_status(engine: iron_defer.Engine, task_id: UUID, status: str) -> None:
    while (await engine.get(task_id)).status != status:  # noqa: ASYNC110 - a row, no event
        await trio.sleep(_POLL)


async def measure(dsn: str, samples: int) -> dict[str, Any]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "benchmarks.cancel", "--worker", dsn],
        stdout=subprocess.PIPE,
        cwd=run.ROOT,
        env={**os.environ, "PYTHONPATH": str(run.ROOT)},
    )
    assert process.stdout is not None
    send, lines = trio.open_memory_channel[str](100)
    seen: list[float] = []
    final: list[float] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_lines, process.stdout, send)
            while await lines.receive() != "ready":
                pass
            async with iron_defer.open_engine(
                dsn, tasks=[Hold], run_workers=False, migrate=False
            ) as producer:
                for _ in range(samples):
                    record = await producer.enqueue(Hold())
                    while await lines.receive() != f"started {record.id}":
                        pass
                    await _wait_status(producer, record.id, "running")
                    asked = time.time()
                    await producer.cancel(record.id)
                    await _wait_status(producer, record.id, "cancelled")
                    done = time.time()
                    while not (line := await lines.receive()).startswith("cancelled "):
                        pass
                    seen.append((float(line.split()[2]) - asked) * 1000)
                    final.append((done - asked) * 1000)
            nursery.cancel_scope.cancel()
    finally:
        process.terminate()
        with trio.CancelScope(shield=True):
            await process.wait()
    return {
        "handler_sees_cancelled_ms": run.percentiles(seen),
        "task_cancelled_ms": run.percentiles(final),
        "samples": samples,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| from engine.cancel(id) to | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (
        ("handler_sees_cancelled_ms", "the handler sees trio.Cancelled (other process)"),
        ("task_cancelled_ms", "the task reads `cancelled` (polled every 2 ms)"),
    ):
        stats = results[key]
        lines.append(
            f"| {label} | {stats['p50']:.1f} | {stats['p95']:.1f} | {stats['p99']:.1f} "
            f"| {stats['max']:.1f} |"
        )
    lines.append(f"\n{results['samples']} cancels, one at a time.")
    return "\n".join(lines)


def main() -> None:
    parser = run.side_parser(__doc__, "iron_defer_bench_cancel")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--worker", metavar="DSN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet_production_logging()  # as `serve` logs in production, written nowhere
    if args.worker:
        trio.run(worker, args.worker)
        return
    dsn = run.fresh(args.dsn, args.database)
    results = trio.run(measure, dsn, args.samples)
    run.write_results(args.out, "cancel", results, table(results))


if __name__ == "__main__":
    main()
