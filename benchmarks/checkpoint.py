"""Checkpoint write latency: ``await ctx.checkpoint(data)`` from inside a running task, for
1 KiB, 64 KiB and 1 MiB of JSON (encoding, size check and the fenced UPDATE included).

    python -m benchmarks.checkpoint [--samples 200] [--dsn ADMIN_DSN]

Uses its own database (iron_defer_bench_checkpoint). Prints a table and writes
docs/benchmarks/checkpoint.json and checkpoint.md.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

import trio

import iron_defer_trio as iron_defer
from benchmarks import run
from benchmarks.iron_side import quiet_production_logging

if TYPE_CHECKING:
    from pydantic import JsonValue

SIZES = {"1 KiB": 1024, "64 KiB": 64 * 1024, "1 MiB": 1024 * 1024 - 64}


class Saver(iron_defer.Task):
    """Writes ``samples`` checkpoints of ``size`` bytes and records each call's duration."""

    KIND: ClassVar[str] = "saver"
    timings: ClassVar[dict[str, list[float]]] = {}
    done: ClassVar[trio.Event]
    label: str
    size: int
    samples: int

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        # Text that stays the same size encoded (plain ASCII), slightly different per sample
        # so no layer can skip an identical write.
        filler = "x" * (self.size - 40)
        durations = Saver.timings.setdefault(self.label, [])
        for n in range(self.samples):
            data: dict[str, JsonValue] = {"n": n, "filler": filler}
            started = time.perf_counter()
            await ctx.checkpoint(data)
            durations.append((time.perf_counter() - started) * 1000)
        Saver.done.set()


async def measure(dsn: str, samples: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with iron_defer.open_engine(dsn, tasks=[Saver], migrate=False) as engine:
        for label, size in SIZES.items():
            Saver.done = trio.Event()
            count = samples if size < 512 * 1024 else max(20, samples // 4)
            await engine.enqueue(Saver(label=label, size=size, samples=count))
            await Saver.done.wait()
            results[label] = run.percentiles(Saver.timings[label]) | {"samples": count}
    return results


def table(results: dict[str, Any]) -> str:
    lines = ["| checkpoint size | p50 (ms) | p99 (ms) | samples |", "|---|---:|---:|---:|"]
    for label, stats in results.items():
        lines.append(f"| {label} | {stats['p50']:.2f} | {stats['p99']:.2f} | {stats['samples']} |")
    return "\n".join(lines)


def main() -> None:
    parser = run.side_parser(__doc__, "iron_defer_bench_checkpoint")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    dsn = run.fresh(args.dsn, args.database)
    quiet_production_logging()  # as `serve` logs in production, written nowhere
    results = trio.run(measure, dsn, args.samples)
    run.write_results(args.out, "checkpoint", results, table(results))


if __name__ == "__main__":
    main()
