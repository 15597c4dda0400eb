"""Claim throughput as history grows, and after retention deleted it: an engine drains N
pending no-op tasks (concurrency 50) with an empty table, with 1,000,000 finished tasks in
it, and after the sweeper's retention deleted them; plus the claim statement's own latency
in each state. Ratios to the empty table come from this one run.

    python -m benchmarks.retention [--finished 1000000] [--tasks 20000] [--repeat 3]
                                   [--dsn ADMIN_DSN]

Uses its own database (iron_defer_bench_retention). The finished rows are inserted in one
statement (run.FILL_IRON); retention is the engine's own sweeper (batches of
retention.batch_size = 1000), run with its clock two days ahead so every finished row is due.
Each drain is a fresh worker process (run.measure). Prints a table and writes
docs/benchmarks/retention.json and retention.md.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

import iron_defer_trio as iron_defer
from benchmarks import run
from benchmarks.iron_side import quiet_production_logging
from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.engine._health import DatabaseHealth
from iron_defer_trio.engine._sweeper import Sweeper
from iron_defer_trio.observability import default_logger
from iron_defer_trio.observability.metrics import metrics_for
from iron_defer_trio.store import open_postgres_store

#: Drains run at this concurrency (as the history row of benchmarks.run).
CONCURRENCY = 50
#: Claim statements timed per state (10 tasks each).
CLAIM_SAMPLES = 200


def _prepare(dsn: str, pending: int) -> None:
    """Add ``pending`` due tasks, refresh the statistics, and start from a checkpoint."""
    run.sql(dsn, run.FILL_IRON, pending, "pending")
    run.sql(dsn, "ANALYZE iron_defer.tasks")
    run.checkpoint(dsn)


def _drop_active(dsn: str) -> None:
    # What the claim-latency measurement leaves behind (claimed or unclaimed), so the next
    # state starts with the same rows as the previous one did.
    run.sql(dsn, "DELETE FROM iron_defer.tasks WHERE status IN ('pending', 'running')")


def measure_state(dsn: str, tasks: int, repeat: int) -> dict[str, Any]:
    """Drain ``tasks`` tasks ``repeat`` times, then time the claim statement once, on the
    table as it is (each drain adds its tasks as completed rows)."""
    drains = []
    for _ in range(repeat):
        _prepare(dsn, tasks)
        drains.append(run.measure("iron", "drain", dsn, total=tasks, concurrency=CONCURRENCY))
    _prepare(dsn, CLAIM_SAMPLES * 10)
    claim = run.measure("iron", "claim", dsn, samples=CLAIM_SAMPLES)["latencies_ms"]
    _drop_active(dsn)
    return {
        "rate": statistics.median(d["rate"] for d in drains),
        "rates": [d["rate"] for d in drains],
        "claim_ms": run.percentiles(claim),
        "rows": run.sql(dsn, "SELECT count(*) AS n FROM iron_defer.tasks")[0]["n"],
    }


async def apply_retention(dsn: str) -> dict[str, Any]:
    """One sweep of the engine's sweeper with completed tasks due after a day (its clock two
    days ahead): every finished row goes, 1000 per statement."""
    log = default_logger()
    async with open_postgres_store(iron_defer.DatabaseSettings(url=dsn)) as store:
        sweeper = Sweeper(
            store,
            DatabaseHealth(log),
            log,
            random.Random(1),
            interval=60,
            metrics=metrics_for(),
            retention={TaskStatus.COMPLETED: 86_400.0},
            retention_batch=1000,
        )
        started = time.perf_counter()
        result = await sweeper.run_once(now=datetime.now(UTC) + timedelta(days=2))
        elapsed = time.perf_counter() - started
    deleted = result.deleted.get(TaskStatus.COMPLETED, 0)
    return {"deleted": deleted, "seconds": elapsed, "rows_per_second": deleted / elapsed}


def measure(dsn: str, finished: int, tasks: int, repeat: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "finished_rows": finished,
        "tasks": tasks,
        "concurrency": CONCURRENCY,
        "repeat": repeat,
    }
    print("empty table ...", flush=True)
    run.reset(dsn)
    results["empty"] = measure_state(dsn, tasks, repeat)

    print(f"{finished:,} finished rows ...", flush=True)
    run.reset(dsn)
    run.sql(dsn, run.FILL_IRON, finished, "completed")
    results["history"] = measure_state(dsn, tasks, repeat)

    print("retention ...", flush=True)
    results["retention"] = trio.run(apply_retention, dsn)
    # No manual VACUUM: what the claims meet is what autovacuum (with the table's own
    # thresholds, migration 0010) has or has not cleaned up yet.
    results["after_retention"] = measure_state(dsn, tasks, repeat)

    empty = results["empty"]
    for state in ("history", "after_retention"):
        results[state]["ratio"] = results[state]["rate"] / empty["rate"]
        results[state]["claim_p50_ratio"] = (
            empty["claim_ms"]["p50"] / results[state]["claim_ms"]["p50"]
        )
    return results


def table(results: dict[str, Any]) -> str:
    finished, tasks = results["finished_rows"], results["tasks"]
    lines = [
        f"| table state (drain {tasks:,} at {CONCURRENCY}) | rows before the drains | "
        "drain (tasks/s) | ratio to empty | claim p50 (ms) | claim p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "empty": "empty",
        "history": f"{finished:,} finished rows",
        "after_retention": "after retention deleted them",
    }
    for key, label in labels.items():
        state = results[key]
        ratio = f"{state['ratio']:.2f}" if "ratio" in state else "1.00"
        lines.append(
            f"| {label} | {state['rows'] - tasks * results['repeat']:,} | {state['rate']:,.0f} | "
            f"{ratio} | {state['claim_ms']['p50']:.2f} | {state['claim_ms']['p99']:.2f} |"
        )
    deletion = results["retention"]
    lines.append("")
    lines.append(
        f"Retention deleted {deletion['deleted']:,} rows in {deletion['seconds']:.1f} s "
        f"({deletion['rows_per_second']:,.0f} rows/s, 1000 per statement)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = run.side_parser(__doc__, "iron_defer_bench_retention")
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dsn = run.fresh(args.dsn, args.database)
    quiet_production_logging()  # the sweeper logs as `serve` does, written nowhere
    results = measure(dsn, args.finished, args.tasks, args.repeat)
    results["conditions"] = run.conditions(dsn)
    run.write_results(args.out, "retention", results, table(results))


if __name__ == "__main__":
    main()
