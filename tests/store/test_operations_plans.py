"""Retention and history keep away from the claim path, whatever the planner believes.

With a table full of finished history (statistics taken before it finished, generic plans
forced, as a long-running engine's prepared statements get): the claim reads tasks only
through the partial pending index and the primary key, never past finished rows; the
retention delete reads them only through its own partial index over finished rows, and the
bulk retry updates the rows it locked by primary key.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from iron_defer_trio.store._queries import OPERATIONS, TASKS
from tests.store.test_plans import _generic_plan, _reads

if TYPE_CHECKING:
    from iron_defer_trio.store._queries import Queries
    from tests.pg import Db

ROWS = 20_000


async def _history_table(db: Db, status: str = "completed") -> None:
    """ROWS tasks analysed while pending, then all but 100 finished (``status``) two days
    ago."""
    await db.execute("ALTER TABLE iron_defer.tasks SET (autovacuum_enabled = off)")
    await db.execute(
        "INSERT INTO iron_defer.tasks (id, queue, kind, payload, max_attempts) "
        "SELECT gen_random_uuid(), 'default', 'noop', '{}', 3 FROM generate_series(1, $1)",
        ROWS,
    )
    await db.execute("ANALYZE iron_defer.tasks")
    await db.execute(
        "UPDATE iron_defer.tasks SET status = $1, attempts = 1, "
        "finished_at = now() - interval '2 days' "
        "WHERE id NOT IN (SELECT id FROM iron_defer.tasks ORDER BY id LIMIT 100)",
        status,
    )
    await db.execute("SET plan_cache_mode = force_generic_plan")


async def _plan_reads(
    db: Db, queries: Queries, name: str, arguments: str
) -> tuple[list[str], list[str]]:
    return _reads(await _generic_plan(db, name, arguments, queries))


async def test_claim_never_reads_finished_history(db: Db) -> None:
    """Only the pending index and primary-key lookups: the finished rows are not visited."""
    await _history_table(db)
    nodes, indexes = await _plan_reads(
        db,
        TASKS,
        "claim",
        f"'default', '{uuid.uuid4()}', ARRAY['noop'], 500, 30, NULL, false, NULL",
    )
    assert "Seq Scan" not in nodes
    assert set(indexes) <= {"tasks_claim_idx", "tasks_pkey"}
    assert "tasks_claim_idx" in indexes


async def test_retention_delete_reads_only_the_finished_index(db: Db) -> None:
    """The retention scan goes through tasks_retention_idx, then primary-key lookups."""
    await _history_table(db)
    nodes, indexes = await _plan_reads(
        db, OPERATIONS, "delete_finished", "NULL, 'completed', 86400, 1000"
    )
    assert "Seq Scan" not in nodes
    assert "tasks_retention_idx" in indexes
    assert set(indexes) <= {"tasks_retention_idx", "tasks_pkey"}


async def test_bulk_retry_reads_tasks_only_through_indexes(db: Db) -> None:
    """The bulk retry finds its rows through an index and updates them by primary key."""
    await _history_table(db, "failed")
    nodes, indexes = await _plan_reads(
        db, OPERATIONS, "retry_many", "'default', 'failed', NULL, 1000, 10000, false"
    )
    assert "Seq Scan" not in nodes
    assert "tasks_pkey" in indexes
