"""iron-defer-trio beside a minimal raw-asyncpg queue (the ceiling), in one run.

    python -m benchmarks.run [--quick] [--repeat 3] [--dsn postgresql://...]

Measures single and bulk enqueue rates; drain rates of pre-filled no-op tasks at
concurrency 10, 50 and 200 (20,000 and 100,000 tasks); enqueue-to-start latency with idle
workers; claim latency with 1,000,000 pending tasks; drain rate with 1,000,000 finished rows
in the table; peak RSS and CPU time per task of the worker process. Every measurement runs
in a fresh process (``benchmarks.worker``) and is repeated, iron and raw alternating so both
see the same machine; medians are reported. Prints a table, writes
docs/benchmarks/results.json and draws PNG plots there when matplotlib is installed
(``pip install -e '.[bench]'``). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
DEFAULT_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "iron_defer_bench"

FILL_IRON = """
INSERT INTO iron_defer.tasks (id, queue, kind, payload, max_attempts, status, attempts,
                              finished_at)
SELECT gen_random_uuid(), 'default', 'noop', '{"n": 0}', 3, $2,
       CASE WHEN $2 = 'pending' THEN 0 ELSE 1 END,
       CASE WHEN $2 = 'pending' THEN NULL ELSE now() END
FROM generate_series(1, $1)
"""
FILL_RAW = "INSERT INTO raw_jobs (payload) SELECT '{\"n\": 0}' FROM generate_series(1, $1)"


# --- database plumbing ----------------------------------------------------------------------


def sql(dsn: str, statement: str, *args: Any) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(statement, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def postgres_cpu_seconds() -> float | None:
    """CPU time used so far by the local PostgreSQL server, exited backends included (None if
    it cannot be read, e.g. a remote server)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    found = False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        found = True
        # utime + stime, and cutime + cstime: the postmaster collects the CPU time of the
        # backends that exited (a worker's connections end with it).
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / ticks if found else None


def measure(system: str, what: str, dsn: str, **options: int) -> dict[str, Any]:
    """Run one measurement in a fresh process and return its JSON result, with the CPU time
    the database used meanwhile (``db_cpu_seconds``)."""
    command = [sys.executable, "-m", "benchmarks.worker", system, what, dsn]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    db_cpu_before = postgres_cpu_seconds()
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    measured = dict(json.loads(result.stdout.strip().splitlines()[-1]))
    db_cpu_after = postgres_cpu_seconds()
    if db_cpu_before is not None and db_cpu_after is not None:
        measured["db_cpu_seconds"] = db_cpu_after - db_cpu_before
    return measured


def fresh(admin_dsn: str, database: str) -> str:
    """Drop and recreate the benchmark database; migrate it; create the raw queue's table."""
    sql(admin_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    sql(admin_dsn, f'CREATE DATABASE "{database}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{database}"
    measure("iron", "migrate", dsn)
    measure("raw", "prepare", dsn)
    return dsn


def reset(dsn: str) -> None:
    sql(dsn, "TRUNCATE iron_defer.tasks")
    sql(dsn, "TRUNCATE raw_jobs")
    sql(dsn, "VACUUM ANALYZE iron_defer.tasks")
    sql(dsn, "VACUUM ANALYZE raw_jobs")


def checkpoint(dsn: str) -> None:
    # Start each measurement from the same WAL state, so no run pays for another's checkpoint.
    sql(dsn, "CHECKPOINT")


# --- measurements -------------------------------------------------------------------------


def drain(
    dsn: str, system: str, total: int, concurrency: int, per_claim: int = 100
) -> dict[str, Any]:
    """Pre-fill ``total`` tasks and drain them with a fresh worker process."""
    reset(dsn)
    if system == "iron":
        sql(dsn, FILL_IRON, total, "pending")
        sql(dsn, "VACUUM ANALYZE iron_defer.tasks")
    else:
        sql(dsn, FILL_RAW, total)
        sql(dsn, "VACUUM ANALYZE raw_jobs")
    checkpoint(dsn)
    options = {"total": total, "concurrency": concurrency}
    if system == "raw":
        options["per_claim"] = per_claim
    result = measure(system, "drain", dsn, **options)
    if "db_cpu_seconds" in result:
        # Includes the worker's start-up and shutdown queries: an upper bound.
        result["db_cpu_us_per_task"] = result["db_cpu_seconds"] / total * 1e6
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": runs}


def side_parser(doc: str | None, database: str) -> argparse.ArgumentParser:
    """The options every side benchmark (submission, checkpoint, cancel) shares: the admin
    DSN, its own database and the output folder."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("IRON_DEFER_BENCH_ADMIN_DSN", DEFAULT_ADMIN)
    )
    parser.add_argument("--database", default=database)
    parser.add_argument("--out", type=Path, default=OUT)
    return parser


def write_results(out: Path, name: str, results: dict[str, Any], table: str) -> None:
    """Write ``<name>.json`` and ``<name>.md`` (the table) into ``out``; print the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / f"{name}.md").write_text(table + "\n")
    print(table)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def median_percentiles(runs: list[list[float]]) -> dict[str, Any]:
    each = [percentiles(r) for r in runs]
    return {q: statistics.median(p[q] for p in each) for q in each[0]} | {
        "runs": each,
        "samples": runs,
    }


# --- the run ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get("IRON_DEFER_BENCH_ADMIN_DSN", DEFAULT_ADMIN),
        help="an admin DSN; the run creates (and drops first) the database iron_defer_bench",
    )
    parser.add_argument("--database", default=DATABASE, help="the database to (re)create")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks the harness works, not speed"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args()
    repeat = 1 if args.quick or args.smoke else args.repeat
    concurrencies = [10, 50, 200]
    if args.smoke:
        sizes, big, samples, singles, history_size = [500], 2_000, 20, 50, 500
    elif args.quick:
        sizes, big, samples, singles, history_size = [20_000], 100_000, 100, 2_000, 20_000
    else:
        sizes, big, samples, singles, history_size = (
            [20_000, 100_000],
            1_000_000,
            500,
            2_000,
            20_000,
        )
    dsn = fresh(args.dsn, args.database)
    results: dict[str, Any] = {"conditions": conditions(dsn), "repeat": repeat}

    print("enqueue ...", flush=True)
    enqueue: dict[str, list[dict[str, Any]]] = {"iron": [], "raw": []}
    for _ in range(repeat):
        for system in ("iron", "raw"):
            reset(dsn)
            checkpoint(dsn)
            enqueue[system].append(
                measure(system, "enqueue", dsn, single=singles, bulk=10 * singles, batch=500)
            )
    results["enqueue"] = {system: median_of(runs) for system, runs in enqueue.items()}

    drains: dict[str, Any] = {}
    for total in sizes:
        for concurrency in concurrencies:
            print(f"drain {total:,} at concurrency {concurrency} ...", flush=True)
            runs: dict[str, list[dict[str, Any]]] = {"iron": [], "raw": []}
            for _ in range(repeat):
                for system in ("iron", "raw"):
                    runs[system].append(drain(dsn, system, total, concurrency))
            drains[f"{total}@{concurrency}"] = {s: median_of(r) for s, r in runs.items()}
    results["drain"] = drains

    print("latency ...", flush=True)
    latency: dict[str, list[list[float]]] = {"iron": [], "raw": []}
    for _ in range(repeat):
        for system in ("iron", "raw"):
            reset(dsn)
            latency[system].append(measure(system, "latency", dsn, samples=samples)["latencies_ms"])
    results["latency_ms"] = {system: median_percentiles(runs) for system, runs in latency.items()}

    print(f"claim latency with {big:,} pending ...", flush=True)
    reset(dsn)
    sql(dsn, FILL_IRON, big, "pending")
    sql(dsn, "VACUUM ANALYZE iron_defer.tasks")
    claim_runs = [
        measure("iron", "claim", dsn, samples=samples)["latencies_ms"] for _ in range(repeat)
    ]
    results["claim_ms_with_pending"] = {"pending": big} | median_percentiles(claim_runs)

    print(f"drain with {big:,} finished rows in the table ...", flush=True)
    empty_runs, history_runs = [], []
    for _ in range(repeat):
        empty_runs.append(drain(dsn, "iron", history_size, 50))
        history_runs.append(_drain_with_history(dsn, big, history_size))
    empty, history = median_of(empty_runs), median_of(history_runs)
    results["history"] = {
        "finished_rows": big,
        "tasks": history_size,
        "empty": empty,
        "with_history": history,
        "ratio": history["rate"] / empty["rate"],
    }
    write(results, args.out, plots=not args.no_plots)


def _drain_with_history(dsn: str, finished_rows: int, total: int) -> dict[str, Any]:
    """Drain ``total`` tasks at concurrency 50 with ``finished_rows`` completed tasks in the
    table (as a queue with days of history and no retention would have)."""
    reset(dsn)
    sql(dsn, FILL_IRON, finished_rows, "completed")
    sql(dsn, FILL_IRON, total, "pending")
    sql(dsn, "VACUUM ANALYZE iron_defer.tasks")
    checkpoint(dsn)
    return measure("iron", "drain", dsn, total=total, concurrency=50)


def conditions(dsn: str) -> dict[str, Any]:
    names = (
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "wal_level",
        "max_connections",
        "work_mem",
        "random_page_cost",
        "autovacuum",
    )
    rows = sql(dsn, "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1)", list(names))
    settings = {row["name"]: row["setting"] + (row["unit"] or "") for row in rows}
    versions = measure_versions()
    return {
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "postgresql": settings,
        "packages": versions,
        "date": time.strftime("%Y-%m-%d"),
    }


def measure_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        name: version(name)
        for name in (
            "iron-defer-trio",
            "trio",
            "trio-asyncio",
            "asyncpg",
            "structlog",
            "opentelemetry-sdk",
        )
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def write(results: dict[str, Any], out: Path, *, plots: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "table.md").write_text(table(results) + "\n")
    print(table(results))
    if not plots:
        return
    try:
        from benchmarks import plots as drawing
    except ImportError as exc:
        print(f"(no plots: {exc}; install the 'bench' extra)")
    else:
        drawing.draw(results, out)


def table(results: dict[str, Any]) -> str:
    lines = ["| measurement | iron-defer-trio | raw ceiling | ratio |", "|---|---:|---:|---:|"]
    enqueue = results["enqueue"]
    for key, label in (
        ("single", "enqueue, one at a time (tasks/s)"),
        ("bulk", "enqueue, 500 per call (tasks/s)"),
    ):
        iron, raw = enqueue["iron"][key], enqueue["raw"][key]
        lines.append(f"| {label} | {iron:,.0f} | {raw:,.0f} | {iron / raw:.2f} |")
    for key, pair in results["drain"].items():
        total, concurrency = key.split("@")
        iron, raw = pair["iron"], pair["raw"]
        label = f"drain {int(total):,} at concurrency {concurrency} (tasks/s)"
        ratio = iron["rate"] / raw["rate"]
        lines.append(f"| {label} | {iron['rate']:,.0f} | {raw['rate']:,.0f} | {ratio:.2f} |")
        lines.append(
            f"| ... worker / database CPU per task (us), peak RSS (MiB) | {_costs(iron)} | "
            f"{_costs(raw)} | |"
        )
    latency = results["latency_ms"]
    for q in ("p50", "p95", "p99"):
        lines.append(
            f"| enqueue-to-start {q} (ms) | {latency['iron'][q]:.1f} | {latency['raw'][q]:.1f} | |"
        )
    claim = results["claim_ms_with_pending"]
    lines.append(
        f"| claim of 10 with {claim['pending']:,} pending, p50 / p99 (ms) | "
        f"{claim['p50']:.1f} / {claim['p99']:.1f} | | |"
    )
    history = results["history"]
    label = (
        f"drain {history['tasks']:,} at 50, {history['finished_rows']:,} finished rows vs empty "
        "(tasks/s)"
    )
    lines.append(
        f"| {label} | {history['with_history']['rate']:,.0f} vs {history['empty']['rate']:,.0f} "
        f"| | {history['ratio']:.2f} |"
    )
    return "\n".join(lines)


def _costs(side: dict[str, Any]) -> str:
    db = side.get("db_cpu_us_per_task")
    db_text = f"{db:.0f}" if db is not None else "?"
    return f"{side['cpu_us_per_task']:.0f} / {db_text}, {side['peak_rss_mib']:.0f}"


if __name__ == "__main__":
    main()
