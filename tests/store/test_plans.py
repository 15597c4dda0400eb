"""The hot statements keep their shape whatever the planner believes about the table.

A fast drain runs claim, heartbeat and finish thousands of times a second as prepared
statements, so PostgreSQL soon caches a generic plan, built from statistics that may be
hours old. Two earlier versions were fine on fresh statistics and collapsed on stale ones:
claim joined its picked ids back to a sequential scan of the whole table, and finish
rescanned the outcome list once per running row (quadratic: ~1 s per batch of 500). These
tests force generic plans on a table whose statistics say every task is pending while all
are running, and read the plan: every visit to a task row must go through an index, and the
per-row lookups of heartbeat and finish through the primary key.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from iron_defer_trio.store._queries import TASKS

if TYPE_CHECKING:
    from iron_defer_trio.store._queries import Queries
    from tests.pg import Db

ROWS = 20_000
BATCH = 500


def _reads(plan: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The node types that read the tasks table and the indexes they go through."""
    nodes: list[str] = []
    indexes: list[str] = []
    if plan.get("Relation Name") == "tasks" and plan["Node Type"] != "ModifyTable":
        nodes.append(plan["Node Type"])
    if plan.get("Index Name", "").startswith("tasks_"):
        indexes.append(plan["Index Name"])
    for child in plan.get("Plans", []):
        child_nodes, child_indexes = _reads(child)
        nodes.extend(child_nodes)
        indexes.extend(child_indexes)
    return nodes, indexes


async def _stale_running_table(db: Db) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """ROWS tasks analysed while pending, then all leased to one worker without re-analysis."""
    await db.execute("ALTER TABLE iron_defer.tasks SET (autovacuum_enabled = off)")
    await db.execute(
        "INSERT INTO iron_defer.tasks (id, queue, kind, payload, max_attempts) "
        "SELECT gen_random_uuid(), 'default', 'noop', '{}', 3 FROM generate_series(1, $1)",
        ROWS,
    )
    await db.execute("ANALYZE iron_defer.tasks")
    worker = uuid.uuid4()
    await db.execute(
        "UPDATE iron_defer.tasks SET status = 'running', attempts = 1, claimed_by = $1, "
        "claimed_until = now() + interval '1 minute', started_at = now()",
        worker,
    )
    ids = [row["id"] for row in await db.fetch("SELECT id FROM iron_defer.tasks LIMIT $1", BATCH)]
    await db.execute("SET plan_cache_mode = force_generic_plan")
    return worker, ids


async def _generic_plan(
    db: Db, name: str, arguments: str, queries: Queries = TASKS
) -> dict[str, Any]:
    await db.execute(f"PREPARE {name} AS {queries[name]}")
    text = await db.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}({arguments})")
    plan: dict[str, Any] = json.loads(text)[0]["Plan"]
    return plan


def _uuid_array(ids: list[uuid.UUID]) -> str:
    return "ARRAY[" + ",".join(f"'{task_id}'" for task_id in ids) + "]::uuid[]"


@pytest.mark.parametrize("region", ["NULL", "'eu-west'"])
async def test_claim_reads_tasks_only_through_indexes(db: Db, region: str) -> None:
    """No sequential scan of the table, however many rows it holds, with or without a
    worker region; the pending tasks are read in claim order, never sorted."""
    worker, _ = await _stale_running_table(db)
    plan = await _generic_plan(
        db, "claim", f"'default', '{worker}', ARRAY['noop'], 500, 30, NULL, false, {region}"
    )
    nodes, indexes = _reads(plan)
    assert nodes, plan
    assert "Seq Scan" not in nodes, plan
    assert set(indexes) == {"tasks_claim_idx", "tasks_pkey"}, plan
    assert not _sorts_of_index_scans(plan), plan


def _sorts_of_index_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Sort nodes that read the tasks table below them (a sort of every pending task)."""
    found = []
    if plan["Node Type"] == "Sort" and _reads(plan)[0]:
        found.append(plan)
    for child in plan.get("Plans", []):
        found.extend(_sorts_of_index_scans(child))
    return found


@pytest.mark.parametrize("statement", ["heartbeat", "finish"])
async def test_per_task_statements_look_rows_up_by_primary_key(db: Db, statement: str) -> None:
    """Each listed task is found through the primary key, never by walking the running
    tasks and matching them against the list."""
    worker, ids = await _stale_running_table(db)
    n = len(ids)
    if statement == "heartbeat":
        arguments = f"'{worker}', {_uuid_array(ids)}, 30, NULL"
    else:
        arguments = (
            f"'{worker}', {_uuid_array(ids)}, array_fill(1, ARRAY[{n}]), "
            f"array_fill('completed'::text, ARRAY[{n}]), array_fill(NULL::text, ARRAY[{n}]), "
            f"array_fill(NULL::float8, ARRAY[{n}]), array_fill(false, ARRAY[{n}]), NULL, false"
        )
    plan = await _generic_plan(db, statement, arguments)
    nodes, indexes = _reads(plan)
    assert nodes, plan
    assert "Seq Scan" not in nodes, plan
    assert set(indexes) == {"tasks_pkey"}, plan
