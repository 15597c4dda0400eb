"""An engine in its own process, for tests that SIGKILL it.

Usage: ``python -m tests.engine.proc_worker DSN``. It runs tasks of kind ``block`` (which
never finish) and prints ``ready <worker_id>`` once its workers run.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.config import Settings


class Block(iron_defer.Task):
    KIND: ClassVar[str] = "block"
    label: str = ""

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await trio.sleep_forever()


async def main(dsn: str) -> None:
    settings = Settings.build(
        database={"url": dsn, "max_connections": 2},
        worker={
            "lease_duration": 2.0,
            "heartbeat_interval": 0.5,
            "sweeper_interval": 0.5,
            "poll_interval": 0.2,
        },
    )
    async with iron_defer.open_engine(settings, tasks=[Block], migrate=False) as engine:
        print(f"ready {engine.worker_id}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
