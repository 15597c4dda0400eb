"""A chaos worker process: an engine running ChaosWork, logging JSON lines on stdout.

``python -m tests.chaos.worker TASKS_DSN LEDGER_DSN [--concurrency N] [--lease S]
[--heartbeat S] [--sweep S] [--connections N] [--log-level L]``
"""

from __future__ import annotations

import argparse
from contextlib import asynccontextmanager

import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.observability.logs import configure_json_logging
from tests.chaos.ledger import open_ledger
from tests.chaos.tasks import ChaosWork


async def main(args: argparse.Namespace) -> None:
    settings = iron_defer.Settings.build(
        database={"url": args.tasks_dsn, "max_connections": args.connections},
        worker={
            "lease_duration": args.lease,
            "heartbeat_interval": args.heartbeat,
            "sweeper_interval": args.sweep,
            "poll_interval": 0.2,
            "shutdown_timeout": 5,
        },
        queues={"default": args.concurrency},
    )
    async with asynccontextmanager(open_ledger)(args.ledger_dsn) as ledger:
        ChaosWork.ledger = ledger
        async with iron_defer.open_engine(settings, tasks=[ChaosWork], migrate=False) as engine:
            print(f"ready {engine.worker_id}", flush=True)
            await trio.sleep_forever()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("tasks_dsn")
    parser.add_argument("ledger_dsn")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--sweep", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--log-level", default="info")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    configure_json_logging(arguments.log_level)
    trio.run(main, arguments)
