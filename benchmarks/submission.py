"""What submission safety costs: enqueue with and without an idempotency key, with the audit
log off and on, as ratios from one run.

    python -m benchmarks.submission [--rounds 5] [--single 1000] [--bulk 10000] [--dsn ADMIN_DSN]

One process, one database (iron_defer_bench_submission), two engines (audit off, audit on);
the four variants take turns within every round, so they share the machine's noise, and each
round starts from an empty table. Prints a table and writes
docs/benchmarks/submission.json and submission.md.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, ClassVar

import trio

import iron_defer_trio as iron_defer
from benchmarks import run
from benchmarks.iron_side import quiet_production_logging

VARIANTS = (
    ("plain", False, False),
    ("key", True, False),
    ("audit", False, True),
    ("key+audit", True, True),
)


class Noop(iron_defer.Task):
    KIND: ClassVar[str] = "noop"
    n: int = 0

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


async def _single(engine: iron_defer.Engine, count: int, keyed: bool, tag: str) -> float:
    started = time.perf_counter()
    for n in range(count):
        key = f"{tag}-{n}" if keyed else None
        await engine.enqueue(Noop(n=n), idempotency_key=key)
    return count / (time.perf_counter() - started)


async def _bulk(engine: iron_defer.Engine, count: int, keyed: bool, tag: str) -> float:
    started = time.perf_counter()
    for start in range(0, count, 500):
        batch = range(start, min(start + 500, count))
        keys = [f"{tag}-{n}" for n in batch] if keyed else None
        await engine.enqueue_many([Noop(n=n) for n in batch], idempotency_keys=keys)
    return count / (time.perf_counter() - started)


async def measure(dsn: str, rounds: int, single: int, bulk: int) -> dict[str, Any]:
    rates: dict[str, dict[str, list[float]]] = {
        name: {"single": [], "bulk": []} for name, _, _ in VARIANTS
    }
    plain = iron_defer.Settings.build(database={"url": dsn})
    audited = iron_defer.Settings.build(database={"url": dsn, "audit_log": True})
    async with (
        iron_defer.open_engine(plain, tasks=[Noop], run_workers=False, migrate=False) as off,
        iron_defer.open_engine(audited, tasks=[Noop], run_workers=False, migrate=False) as on,
    ):
        for round_ in range(rounds):
            # Rotate the order so no variant always runs first (cold caches) or last.
            order = VARIANTS[round_ % 4 :] + VARIANTS[: round_ % 4]
            for name, keyed, audit in order:
                async with off.transaction() as tx:
                    await tx.execute("TRUNCATE iron_defer.tasks")
                engine = on if audit else off
                tag = f"r{round_}-{name}"
                rates[name]["single"].append(await _single(engine, single, keyed, tag))
                rates[name]["bulk"].append(await _bulk(engine, bulk, keyed, tag))
    medians = {
        name: {kind: statistics.median(values) for kind, values in by_kind.items()}
        for name, by_kind in rates.items()
    }
    return {"rounds": rounds, "single": single, "bulk": bulk, "median": medians, "runs": rates}


def table(results: dict[str, Any]) -> str:
    medians = results["median"]
    base = medians["plain"]
    lines = [
        "| variant | one at a time (tasks/s) | ratio | 500 per call (tasks/s) | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, _, _ in VARIANTS:
        single, bulk = medians[name]["single"], medians[name]["bulk"]
        lines.append(
            f"| {name} | {single:,.0f} | {single / base['single']:.2f} | {bulk:,.0f} | "
            f"{bulk / base['bulk']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = run.side_parser(__doc__, "iron_defer_bench_submission")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--single", type=int, default=1000)
    parser.add_argument("--bulk", type=int, default=10_000)
    args = parser.parse_args()
    dsn = run.fresh(args.dsn, args.database)
    quiet_production_logging()  # as `serve` logs in production, written nowhere
    results = trio.run(measure, dsn, args.rounds, args.single, args.bulk)
    results["conditions"] = run.conditions(dsn)
    run.write_results(args.out, "submission", results, table(results))


if __name__ == "__main__":
    main()
