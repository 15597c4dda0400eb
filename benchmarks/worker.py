"""One measurement in a fresh process; prints one JSON line (with this process's peak RSS).

    python -m benchmarks.worker iron|raw drain DSN --total N --concurrency C [--per-claim K]
    python -m benchmarks.worker iron|raw enqueue DSN --single N --bulk M --batch B
    python -m benchmarks.worker iron|raw latency DSN --samples N
    python -m benchmarks.worker iron claim DSN --samples N
    python -m benchmarks.worker iron migrate DSN

The raw side never imports iron_defer_trio (see benchmarks.raw_queue).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over
    exec from the parent, so a small child would report its parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_iron(args: argparse.Namespace) -> dict[str, Any]:
    import trio

    from benchmarks import iron_side

    if args.what == "drain":
        return trio.run(iron_side.drain, args.dsn, args.total, args.concurrency)
    if args.what == "enqueue":
        return trio.run(iron_side.enqueue, args.dsn, args.single, args.bulk, args.batch)
    if args.what == "latency":
        return trio.run(iron_side.latency, args.dsn, args.samples)
    if args.what == "claim":
        return trio.run(iron_side.claim_latency, args.dsn, args.samples)
    return trio.run(iron_side.migrate, args.dsn)


def run_raw(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio
    import time

    from benchmarks import raw_queue

    if args.what == "drain":
        return asyncio.run(
            raw_queue.drain(
                args.dsn, args.total, concurrency=args.concurrency, per_claim=args.per_claim
            )
        )
    if args.what == "enqueue":
        return {
            "single": asyncio.run(raw_queue.enqueue_one_by_one(args.dsn, args.single)),
            "bulk": asyncio.run(raw_queue.enqueue_bulk(args.dsn, args.bulk, args.batch)),
        }
    if args.what == "latency":
        return {"latencies_ms": asyncio.run(raw_queue.latency(args.dsn, args.samples))}
    if args.what == "prepare":
        started = time.perf_counter()
        asyncio.run(raw_queue.prepare(args.dsn))
        return {"seconds": time.perf_counter() - started}
    raise SystemExit(f"the raw queue has no {args.what!r} measurement")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["iron", "raw"])
    parser.add_argument(
        "what", choices=["drain", "enqueue", "latency", "claim", "migrate", "prepare"]
    )
    parser.add_argument("dsn")
    parser.add_argument("--total", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--per-claim", type=int, default=100)
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--bulk", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    result = run_iron(args) if args.system == "iron" else run_raw(args)
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
