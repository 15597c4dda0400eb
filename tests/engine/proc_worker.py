"""An engine in its own process, for tests that SIGKILL it.

Usage: ``python -m tests.engine.proc_worker DSN``. It runs tasks of kind ``block`` (which
never finish), ``progress`` (which checkpoint, see :class:`Progress`) and ``cancellable``
(see :class:`Cancellable`), and prints ``ready <worker_id>`` once its workers run.
"""

from __future__ import annotations

import sys
import time
from typing import ClassVar

import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.config import Settings


class Block(iron_defer.Task):
    KIND: ClassVar[str] = "block"
    label: str = ""

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await trio.sleep_forever()


class Progress(iron_defer.Task):
    """Works through ``steps`` steps, checkpointing after each; resumes from the checkpoint.
    The first attempt hangs after ``hang_after`` steps (to be killed there)."""

    KIND: ClassVar[str] = "progress"
    #: (attempt, step) of every step run in this process.
    seen: ClassVar[list[tuple[int, int]]] = []
    done: ClassVar[trio.Event | None] = None
    steps: int
    hang_after: int | None = None

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        checkpoint = ctx.last_checkpoint
        start = checkpoint["step"] if isinstance(checkpoint, dict) else 0
        assert isinstance(start, int)
        for step in range(start, self.steps):
            Progress.seen.append((ctx.attempt, step))
            await ctx.checkpoint({"step": step + 1})
            if ctx.attempt == 1 and step + 1 == self.hang_after:
                await trio.sleep_forever()
        if Progress.done is not None:
            Progress.done.set()


class Cancellable(iron_defer.Task):
    """Waits forever; prints ``started <id> <attempt>`` when it starts and, when cancelled,
    ``cancelled <id> <wall-clock time>`` from a shielded cleanup."""

    KIND: ClassVar[str] = "cancellable"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        print(f"started {ctx.task_id} {ctx.attempt}", flush=True)
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            seen = time.time()
            with trio.CancelScope(shield=True):
                await trio.sleep(0.05)  # cleanup that itself awaits
                print(f"cancelled {ctx.task_id} {seen}", flush=True)
            raise


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
    async with iron_defer.open_engine(
        settings, tasks=[Block, Progress, Cancellable], migrate=False
    ) as engine:
        print(f"ready {engine.worker_id}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
