"""Chaos fixtures: the ledger table in the test's database, and enqueueing in bulk."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

import iron_defer_trio as iron_defer
from tests.chaos import ledger
from tests.chaos.tasks import ChaosWork

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


@pytest.fixture
def ledger_url(database_url: str) -> str:
    """The ledger lives in the test's own database (scenarios that stop the tasks' database
    keep their tasks elsewhere)."""
    ledger.create(database_url)
    return database_url


def enqueue(dsn: str, tasks: Sequence[ChaosWork], *, batch: int = 500) -> list[str]:
    """Enqueue from the test process (synchronous)."""

    async def go() -> list[str]:
        ids: list[str] = []
        async with iron_defer.open_engine(
            dsn, tasks=[ChaosWork], run_workers=False, migrate=False
        ) as engine:
            for start in range(0, len(tasks), batch):
                records = await engine.enqueue_many(list(tasks[start : start + batch]))
                ids.extend(str(r.id) for r in records)
        return ids

    return trio.run(go)


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print a scenario's evidence line even when pytest captures output, so CI logs show
    the counts (tasks, kills, duplicates, lost, recovery seconds)."""

    def emit(line: str) -> None:
        with capsys.disabled():
            print(f"\n[chaos] {line}", flush=True)

    return emit
