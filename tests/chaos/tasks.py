"""The chaos task: sleeps a little and records its execution in the ledger."""

from __future__ import annotations

from typing import ClassVar

import trio

import iron_defer_trio as iron_defer
from tests.chaos.ledger import Ledger


class ChaosWork(iron_defer.Task):
    KIND: ClassVar[str] = "chaos_work"
    # Outages make attempts fail; the scenarios count executions, not attempts.
    MAX_ATTEMPTS: ClassVar[int | None] = 50
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = iron_defer.RetryPolicy(
        base_delay=0.1, max_delay=1.0
    )
    #: Set by the worker process before its engine starts.
    ledger: ClassVar[Ledger | None] = None

    n: int
    seconds: float = 0.0

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        ledger = ChaosWork.ledger
        assert ledger is not None, "the worker process opens the ledger first"
        await ledger.record(self.n, ctx.task_id, ctx.worker_id, ctx.attempt, "start")
        if self.seconds:
            await trio.sleep(self.seconds)
        await ledger.record(self.n, ctx.task_id, ctx.worker_id, ctx.attempt, "done")
