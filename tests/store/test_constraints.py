"""The schema's CHECK constraints hold for any writer, plain SQL included.

Rules: the invariants of a task row live in the database (migrations/0001), so these tests
bypass the store and write rows with direct SQL; each bad row must fail with asyncpg's
CheckViolationError naming the constraint, and leave nothing behind. Every test has an
absolute ``trio.fail_after``.

The cases only ever add rows with fresh ids and look at those ids, so they share one migrated
database per module (cloned from the session template) instead of paying for a database each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import uuid4

import asyncpg
import pytest
import trio

from tests import pg
from tests.store._support import module_database, row

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(scope="module")
def shared_url(template_database: str) -> Iterator[str]:
    """One migrated database for every case of this module."""
    with module_database(template_database, "iron_defer_checks") as url:
        yield url


#: Column values of a valid pending row; each case overrides some of them.
VALID = {
    "queue": "'default'",
    "kind": "'job'",
    "payload": "'{}'::jsonb",
    "status": "'pending'",
    "attempts": "0",
    "max_attempts": "3",
    "last_error": "NULL",
    "claimed_by": "NULL",
    "claimed_until": "NULL",
    "finished_at": "NULL",
}

RUNNING = {
    "status": "'running'",
    "attempts": "1",
    "claimed_by": "gen_random_uuid()",
    "claimed_until": "now() + interval '1 minute'",
}


def insert_sql(**overrides: str) -> str:
    """An INSERT of one task row with VALID columns, some replaced by SQL expressions."""
    columns = {**VALID, **overrides}
    names = ", ".join(["id", *columns])
    values = ", ".join(["$1", *columns.values()])
    return f"INSERT INTO iron_defer.tasks ({names}) VALUES ({values})"


BAD_ROWS: dict[str, tuple[str, dict[str, str]]] = {
    "attempts_above_max_attempts": (
        "tasks_attempts_within_budget",
        {"status": "'failed'", "attempts": "4", "finished_at": "now()"},
    ),
    "negative_attempts": ("tasks_attempts_within_budget", {"attempts": "-1"}),
    "pending_without_an_attempt_left": ("tasks_pending_has_attempt_left", {"attempts": "3"}),
    "running_without_claimed_by": (
        "tasks_lease_iff_running",
        {**RUNNING, "claimed_by": "NULL", "claimed_until": "NULL"},
    ),
    "running_without_claimed_until": (
        "tasks_lease_iff_running",
        {**RUNNING, "claimed_until": "NULL"},
    ),
    "pending_with_a_lease": (
        "tasks_lease_iff_running",
        {"claimed_by": "gen_random_uuid()", "claimed_until": "now()"},
    ),
    "unknown_status": ("tasks_status_known", {"status": "'paused'"}),
    "completed_without_finished_at": (
        "tasks_finished_iff_final",
        {"status": "'completed'", "attempts": "1"},
    ),
    "pending_with_finished_at": ("tasks_finished_iff_final", {"finished_at": "now()"}),
    "empty_queue_name": ("tasks_queue_name", {"queue": "''"}),
    "queue_name_with_space": ("tasks_queue_name", {"queue": "'two words'"}),
    "queue_name_starting_with_dot": ("tasks_queue_name", {"queue": "'.hidden'"}),
    "queue_name_too_long": ("tasks_queue_name", {"queue": "repeat('q', 129)"}),
    "empty_kind": ("tasks_kind_length", {"kind": "''"}),
    "kind_too_long": ("tasks_kind_length", {"kind": "repeat('k', 256)"}),
    "zero_max_attempts": (
        "tasks_max_attempts_range",
        {"max_attempts": "0", "status": "'failed'", "finished_at": "now()"},
    ),
    "max_attempts_above_limit": ("tasks_max_attempts_range", {"max_attempts": "1001"}),
    "last_error_too_long": ("tasks_last_error_bounded", {"last_error": "repeat('e', 4097)"}),
}


@pytest.mark.parametrize(("constraint", "overrides"), BAD_ROWS.values(), ids=BAD_ROWS.keys())
async def test_direct_insert_of_an_invalid_row_fails_its_check_constraint(
    constraint: str, overrides: dict[str, str], shared_url: str
) -> None:
    """An INSERT that breaks an invariant is refused with CheckViolationError; no row stays."""
    task_id = uuid4()
    with trio.fail_after(10):
        async with pg.connect(shared_url) as db:
            with pytest.raises(asyncpg.exceptions.CheckViolationError) as caught:
                await db.execute(insert_sql(**overrides), task_id)
            count = await db.fetchval(
                "SELECT count(*) FROM iron_defer.tasks WHERE id = $1", task_id
            )
    assert caught.value.constraint_name == constraint
    assert caught.value.sqlstate == "23514"
    assert count == 0


GOOD_ROWS: dict[str, dict[str, str]] = {
    "pending": {},
    "pending_with_one_attempt_left": {"attempts": "2"},
    "running_on_its_last_attempt": {**RUNNING, "attempts": "3"},
    "failed_with_every_attempt_used": {
        "status": "'failed'",
        "attempts": "3",
        "finished_at": "now()",
        "last_error": "repeat('é', 2048)",  # exactly 4096 bytes
    },
    "cancelled_before_running": {"status": "'cancelled'", "finished_at": "now()"},
    "longest_names": {"queue": "'A' || repeat('z', 127)", "kind": "repeat('k', 255)"},
    "queue_name_punctuation": {"queue": "'0tenant:emails.high-prio_v2'"},
    "max_attempts_limit": {"max_attempts": "1000", "attempts": "999"},
}


@pytest.mark.parametrize("overrides", GOOD_ROWS.values(), ids=GOOD_ROWS.keys())
async def test_direct_insert_of_a_valid_row_is_accepted(
    overrides: dict[str, str], shared_url: str
) -> None:
    """The constraints are not stricter than the states the engine really uses."""
    task_id = uuid4()
    with trio.fail_after(10):
        async with pg.connect(shared_url) as db:
            await db.execute(insert_sql(**overrides), task_id)
            count = await db.fetchval(
                "SELECT count(*) FROM iron_defer.tasks WHERE id = $1", task_id
            )
    assert count == 1


BAD_UPDATES: dict[str, tuple[str, str]] = {
    "attempts_past_the_budget": (
        "tasks_attempts_within_budget",
        "status = 'failed', finished_at = now(), attempts = max_attempts + 1",
    ),
    "running_without_a_lease": ("tasks_lease_iff_running", "status = 'running', attempts = 1"),
    "completed_without_finished_at": ("tasks_finished_iff_final", "status = 'completed'"),
    "pending_out_of_attempts": ("tasks_pending_has_attempt_left", "attempts = max_attempts"),
    "renamed_to_a_bad_queue": ("tasks_queue_name", "queue = 'bad/queue'"),
}


@pytest.mark.parametrize(("constraint", "assignment"), BAD_UPDATES.values(), ids=BAD_UPDATES.keys())
async def test_direct_update_into_an_invalid_row_fails_and_leaves_it_unchanged(
    constraint: str, assignment: str, shared_url: str
) -> None:
    """An UPDATE that would break an invariant is refused and the row keeps its values."""
    task_id = uuid4()
    with trio.fail_after(10):
        async with pg.connect(shared_url) as db:
            await db.execute(insert_sql(), task_id)
            before = await row(db, task_id)
            with pytest.raises(asyncpg.exceptions.CheckViolationError) as caught:
                await db.execute(f"UPDATE iron_defer.tasks SET {assignment} WHERE id = $1", task_id)
            after = await row(db, task_id)
    assert caught.value.constraint_name == constraint
    assert after == before
