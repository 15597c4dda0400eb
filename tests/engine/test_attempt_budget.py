"""The attempt budget across every way an attempt can end: completion, an exception, a
timeout, a suspension (not counted), a cancel while running (counted, final). Whatever the
mix, a task never starts more counted attempts than ``max_attempts`` and its row never says
more (the schema's CHECK would refuse the write, so the outcome would be lost instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer

if TYPE_CHECKING:
    from tests.conftest import EngineFactory
    from tests.pg import Db


class Scripted(iron_defer.Task):
    """Run number n (every start, counted or not) does ``script[n]``: complete, raise,
    timeout (sleeps past the attempt timeout), suspend, or hold (waits to be cancelled)."""

    KIND: ClassVar[str] = "scripted"
    ATTEMPT_TIMEOUT: ClassVar[float | None] = 0.2
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = iron_defer.RetryPolicy(
        base_delay=0.01, max_delay=0.01
    )
    runs: ClassVar[dict[str, list[int]]] = {}
    name: str
    script: list[str]

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        runs = Scripted.runs.setdefault(self.name, [])
        runs.append(ctx.attempt)
        step = self.script[len(runs) - 1]
        if step == "raise":
            raise RuntimeError("scripted failure")
        if step == "timeout":
            await trio.sleep(5)
        if step == "suspend":
            await ctx.suspend()
        if step == "hold":
            await trio.sleep_forever()


@pytest.fixture(autouse=True)
def _reset() -> None:
    Scripted.runs = {}


#: name -> (script, max_attempts, final status, final attempts). Every script's last step is
#: one the task never reaches unless it completes.
CASES = {
    "suspends then succeeds": (["suspend", "suspend", "raise", "complete"], 2, "completed", 2),
    "suspends then runs out": (["suspend", "raise", "timeout", "complete"], 2, "failed", 2),
    "times out to the end": (["timeout", "timeout", "complete"], 2, "failed", 2),
    "one attempt, suspended twice": (["suspend", "suspend", "complete"], 1, "completed", 1),
    "cancelled on its last attempt": (["raise", "hold", "complete"], 2, "cancelled", 2),
    "cancelled after a suspension": (["suspend", "hold", "complete"], 1, "cancelled", 1),
}


async def test_no_path_starts_more_counted_attempts_than_max_attempts(
    open_test_engine: EngineFactory, db: Db
) -> None:
    with trio.fail_after(60):
        async with open_test_engine(tasks=[Scripted]) as engine:
            records = {
                name: await engine.enqueue(
                    Scripted(name=name, script=script), max_attempts=max_attempts
                )
                for name, (script, max_attempts, _, _) in CASES.items()
            }
            final_statuses = {"completed", "failed", "cancelled"}
            pending = dict(records)
            while pending:
                for name, record in list(pending.items()):
                    current = await engine.get(record.id)
                    if current.status == "suspended":
                        await engine.signal(record.id, "go")
                    elif (
                        current.status == "running"
                        and current.cancel_requested_at is None
                        and CASES[name][0][len(Scripted.runs.get(name, [])) - 1] == "hold"
                    ):
                        await engine.cancel(record.id)
                    elif current.status in final_statuses:
                        del pending[name]
                await trio.sleep(0.02)
            finals = {name: await engine.get(r.id) for name, r in records.items()}
        over_budget = await db.fetchval(
            "SELECT count(*) FROM iron_defer.tasks WHERE attempts > max_attempts"
        )
    for name, (script, max_attempts, status, attempts) in CASES.items():
        final = finals[name]
        assert (final.status, final.attempts) == (status, attempts), name
        # Every start shows an attempt number within the budget, and the script never ran
        # past the step that ended the task.
        assert all(1 <= seen <= max_attempts for seen in Scripted.runs[name]), name
        ran = len(script) if status == "completed" else len(script) - 1
        assert len(Scripted.runs[name]) == ran, name
    assert over_budget == 0
