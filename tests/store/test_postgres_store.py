"""The PostgreSQL TaskStore's reads and writes outside the claim/lease cycle: enqueue, get,
list_tasks, cancel, queue_statistics, count_due and make_due.

Rules: each test opens its own store on a fresh migrated database (``database_url``), wraps
its body in an absolute ``trio.fail_after``, drives time through ``now=`` parameters or
explicit ``scheduled_at`` values (never a sleep), and checks the real rows through ``db`` as
well as the return values.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import asyncpg
import pytest
import trio

from iron_defer_trio.config import DatabaseSettings
from iron_defer_trio.domain import TaskRecord, TaskStatus
from iron_defer_trio.errors import StoreError, StoreUnavailable
from iron_defer_trio.store import open_postgres_store
from iron_defer_trio.store.protocol import Outcome, OutcomeKind
from tests.store._support import db_now, new_task, row, seconds

if TYPE_CHECKING:
    from tests.pg import Db

# --- enqueue and get ----------------------------------------------------------------------


async def test_enqueue_one_task_returns_its_pending_record_and_row(
    database_url: str, db: Db
) -> None:
    """One NewTask comes back as a pending record with defaults, equal to the stored row."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            before = await db_now(db)
            [record] = await store.enqueue(
                [new_task("emails", "send", payload={"to": "a@b.c"}, priority=7, max_attempts=5)]
            )
            after = await db_now(db)
        stored = await row(db, record.id)
    assert record.queue == "emails"
    assert record.kind == "send"
    assert record.payload == {"to": "a@b.c"}
    assert record.status is TaskStatus.PENDING
    assert (record.priority, record.attempts, record.max_attempts) == (7, 0, 5)
    assert record.last_error is None
    assert record.claimed_by is None and record.claimed_until is None
    assert record.started_at is None and record.finished_at is None
    # scheduled_at=None means the database's now(), the same instant as created_at.
    assert before <= record.scheduled_at <= after
    assert record.scheduled_at == record.created_at == record.updated_at
    assert stored["status"] == "pending"
    assert stored["attempts"] == 0
    assert stored["scheduled_at"] == record.scheduled_at
    assert json.loads(stored["payload"]) == {"to": "a@b.c"}


async def test_enqueue_many_returns_records_in_given_order_with_increasing_ids(
    database_url: str, db: Db
) -> None:
    """A batch is inserted in one call; records come back in the order given, ids increasing."""
    kinds = [f"kind{i:03d}" for i in range(120)]
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            records = await store.enqueue([new_task(kind=k) for k in reversed(kinds)])
        count = await db.fetchval("SELECT count(*) FROM iron_defer.tasks")
        stored_ids = [r["id"] for r in await db.fetch("SELECT id FROM iron_defer.tasks")]
    assert [r.kind for r in records] == list(reversed(kinds))
    ids = [r.id for r in records]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids) == count == 120
    assert set(stored_ids) == set(ids)
    # One statement, one transaction: every default scheduled_at is the same now().
    assert len({r.scheduled_at for r in records}) == 1


@pytest.mark.parametrize(
    "variation",
    ["shared options", "one priority differs", "one idempotency key", "all options differ"],
)
async def test_a_batch_stores_every_field_of_every_task_in_order(
    database_url: str, db: Db, variation: str
) -> None:
    """Whether the tasks of a batch share their options (stored through the cheaper uniform
    statement) or not, each row holds exactly its task's fields, the records come back in
    the order given, and each new task gets its audit row."""
    scheduled = await db_now(db) - seconds(60)
    shared = replace(
        new_task("mail", "send", priority=3, max_attempts=4, scheduled_at=scheduled),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        attempt_timeout=12.5,
        region="eu",
    )
    tasks = [replace(shared, payload_json=json.dumps({"n": n})) for n in range(40)]
    if variation == "one priority differs":
        tasks[17] = replace(tasks[17], priority=-1)
    elif variation == "one idempotency key":
        tasks[5] = replace(tasks[5], idempotency_key="order-5")
    elif variation == "all options differ":
        tasks = [
            replace(
                t,
                queue=f"q{n % 3}",
                kind=f"k{n % 2}",
                priority=n,
                max_attempts=n + 1,
                scheduled_at=scheduled - seconds(n),
                traceparent=None if n % 2 else t.traceparent,
                attempt_timeout=None if n % 3 else float(n + 1),
                region=None if n % 4 else f"r{n}",
            )
            for n, t in enumerate(tasks)
        ]
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url, audit_log=True)) as store:
            records = await store.enqueue(tasks)
        rows = {r["id"]: r for r in await db.fetch("SELECT * FROM iron_defer.tasks")}
        audited = await db.fetch("SELECT task_id, event, trace_id FROM iron_defer.task_audit")
    assert len(records) == len(rows) == len(tasks)
    assert all(r.created for r in records)
    for task, record in zip(tasks, records, strict=True):
        stored = rows[record.id]
        for field in ("queue", "kind", "priority", "max_attempts", "scheduled_at"):
            assert stored[field] == getattr(task, field) == getattr(record, field), field
        for field in ("traceparent", "idempotency_key", "attempt_timeout", "region"):
            assert stored[field] == getattr(task, field) == getattr(record, field), field
        assert json.loads(stored["payload"]) == json.loads(task.payload_json) == record.payload
    assert sorted((a["task_id"], a["event"]) for a in audited) == sorted(
        (r.id, "enqueue") for r in records
    )
    assert {a["trace_id"] for a in audited if rows[a["task_id"]]["traceparent"]} <= {
        "0af7651916cd43dd8448eb211c80319c"
    }


async def test_enqueue_keeps_an_explicit_scheduled_at(database_url: str, db: Db) -> None:
    """An explicit scheduled_at (past or future) is stored as given, not replaced by now()."""
    with trio.fail_after(10):
        now = await db_now(db)
        future, past = now + seconds(3600), now - seconds(86400)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            later, earlier = await store.enqueue(
                [new_task(scheduled_at=future), new_task(scheduled_at=past)]
            )
        stored = await row(db, later.id)
    assert later.scheduled_at == future
    assert earlier.scheduled_at == past
    assert stored["scheduled_at"] == future
    assert stored["status"] == "pending"


async def test_enqueue_of_nothing_returns_an_empty_list(database_url: str, db: Db) -> None:
    """An empty batch writes nothing."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            assert await store.enqueue([]) == []
        assert await db.fetchval("SELECT count(*) FROM iron_defer.tasks") == 0


#: NUL-free JSON values of every shape, sent in one batch.
PAYLOADS: list[Any] = [
    {},
    [],
    None,
    0,
    "text",
    {"nested": {"list": [1, 2.5, -3, True, False, None, {"deep": [[], {}]}]}},
    {"unicode": "héllo wörld ✓ 日本語 🎉", 'quote"key': "back\\slash\ttab\nnewline"},
    {"big": 2**62, "small": -(2**62), "float": 0.1, "exp": 1e-300},
    {"escaped": "\u00e9\u2028\U0001f600"},  # a surrogate pair in the JSON text (ensure_ascii)
]


async def test_payload_round_trips_through_jsonb(database_url: str, db: Db) -> None:
    """Any NUL-free JSON value comes back from enqueue and get equal to what was sent."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            records = await store.enqueue([new_task(payload=p) for p in PAYLOADS])
            fetched = [await store.get(r.id) for r in records]
        stored = await db.fetch("SELECT payload::text AS p FROM iron_defer.tasks ORDER BY id")
    assert [r.payload for r in records] == PAYLOADS
    assert [None if f is None else f.payload for f in fetched] == PAYLOADS
    assert [json.loads(s["p"]) for s in stored] == PAYLOADS


async def test_payload_written_without_ascii_escapes_is_stored_as_real_characters(
    database_url: str, db: Db
) -> None:
    """Unicode arrives in the database as characters, queryable with ->>."""
    text = "Grüße, 世界 🎉"
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task(payload={"text": text})])
        stored = await db.fetchval(
            "SELECT payload->>'text' FROM iron_defer.tasks WHERE id = $1", record.id
        )
    assert stored == text


async def test_payload_with_a_nul_character_is_refused_as_store_error(
    database_url: str, db: Db
) -> None:
    """jsonb cannot hold U+0000: the batch fails as a StoreError (22P05) and nothing is written."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            with pytest.raises(StoreError) as caught:
                await store.enqueue([new_task(), new_task(payload={"s": "a\x00b"})])
        count = await db.fetchval("SELECT count(*) FROM iron_defer.tasks")
    assert type(caught.value) is StoreError
    assert caught.value.sqlstate == "22P05"
    assert count == 0


async def test_get_of_an_unknown_id_returns_none(database_url: str, db: Db) -> None:
    """get() of an id that was never inserted is None, not an error."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            await store.enqueue([new_task()])
            assert await store.get(uuid4()) is None


async def test_get_reads_the_current_row(database_url: str, db: Db) -> None:
    """get() returns the task as it is now, including changes made by plain SQL."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task(priority=1)])
            await db.execute("UPDATE iron_defer.tasks SET priority = 42 WHERE id = $1", record.id)
            fetched = await store.get(record.id)
    assert fetched is not None
    assert fetched.id == record.id
    assert fetched.priority == 42
    assert fetched.created_at == record.created_at


async def test_records_read_back_equal_a_validated_model_of_the_same_row(
    database_url: str, db: Db
) -> None:
    """The store builds records from rows without re-validating them (a claim builds one per
    task); the result must be indistinguishable from validating the row: same fields, same
    types, same JSON, usable with model_copy."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task(payload={"n": [1, "é", None]})])
            await db.execute(
                "UPDATE iron_defer.tasks SET status = 'running', attempts = 1, "
                "claimed_by = gen_random_uuid(), claimed_until = now() + interval '1 minute', "
                "started_at = now(), last_error = 'boom', "
                "traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' "
                "WHERE id = $1",
                record.id,
            )
            fetched = await store.get(record.id)
        stored = dict(await row(db, record.id))
    stored["payload"] = json.loads(stored["payload"])
    validated = TaskRecord.model_validate(stored)
    assert fetched == validated
    assert fetched.model_dump_json() == validated.model_dump_json()
    assert {name: type(value) for name, value in fetched} == {
        name: type(value) for name, value in validated
    }
    assert fetched.status is TaskStatus.RUNNING
    assert fetched.model_copy(update={"attempts": 2}).attempts == 2


# --- constraint errors through the store --------------------------------------------------


async def test_invalid_queue_name_is_a_store_error_with_check_violation_sqlstate(
    database_url: str, db: Db
) -> None:
    """A NewTask the schema refuses raises StoreError(sqlstate 23514), never a raw asyncpg
    error, chained from the driver's CheckViolationError; the whole batch is rolled back."""
    errors: list[StoreError] = []
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            for queue in ["", "has space", "-leading-dash", "ü", "x" * 129]:
                with pytest.raises(StoreError) as caught:
                    await store.enqueue([new_task("good"), new_task(queue)])
                errors.append(caught.value)
        count = await db.fetchval("SELECT count(*) FROM iron_defer.tasks")
    for error in errors:
        assert type(error) is StoreError  # not StoreUnavailable: retrying cannot help
        assert error.sqlstate == "23514"
        assert "tasks_queue_name" in str(error)
        assert isinstance(error.__cause__, asyncpg.exceptions.CheckViolationError)
    assert count == 0


async def test_store_error_message_leaves_out_row_values(database_url: str, db: Db) -> None:
    """The error text keeps PostgreSQL's message but not its DETAIL, which quotes the row
    (and so the payload)."""
    secret = "s3cr3t-payload-value"
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            with pytest.raises(StoreError) as caught:
                await store.enqueue([new_task("bad queue", payload={"token": secret})])
    cause = caught.value.__cause__
    assert isinstance(cause, asyncpg.exceptions.CheckViolationError)
    assert secret in (cause.detail or "")  # the driver has it ...
    assert secret not in str(caught.value)  # ... our error does not
    assert "violates check constraint" in str(caught.value)


async def test_store_errors_are_not_store_unavailable(database_url: str, db: Db) -> None:
    """A refused statement is a plain StoreError; StoreUnavailable is kept for outages."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            with pytest.raises(StoreError) as caught:
                await store.enqueue([new_task(kind="")])
    assert not isinstance(caught.value, StoreUnavailable)
    assert caught.value.sqlstate == "23514"
    assert "tasks_kind_length" in str(caught.value)


# --- list_tasks ---------------------------------------------------------------------------


async def test_list_tasks_returns_newest_first_and_respects_limit(
    database_url: str, db: Db
) -> None:
    """Without filters, list_tasks is every task by id descending, cut at limit."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            records = await store.enqueue([new_task(kind=f"k{i}") for i in range(7)])
            everything = await store.list_tasks(
                queue=None, status=None, kind=None, before=None, limit=100
            )
            first_three = await store.list_tasks(
                queue=None, status=None, kind=None, before=None, limit=3
            )
            none = await store.list_tasks(queue=None, status=None, kind=None, before=None, limit=0)
    newest_first = [r.id for r in reversed(records)]
    assert [r.id for r in everything] == newest_first
    assert [r.id for r in first_three] == newest_first[:3]
    assert none == []


async def test_list_tasks_filters_by_queue_status_and_kind(database_url: str, db: Db) -> None:
    """Each filter narrows the list; filters combine with AND; None means any."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            a_x1, a_x2, a_y, b_x = await store.enqueue(
                [new_task("a", "x"), new_task("a", "x"), new_task("a", "y"), new_task("b", "x")]
            )
            # a_x1 is the oldest 'a'/'x' task, so the claim takes it.
            [claimed] = await store.claim("a", worker, kinds=["x"], limit=1, lease=60)
            assert claimed.id == a_x1.id

            async def ids(**filters: Any) -> list[Any]:
                query: dict[str, Any] = {"queue": None, "status": None, "kind": None}
                query.update(filters)
                found = await store.list_tasks(**query, before=None, limit=100)
                return [r.id for r in found]

            assert await ids(queue="a") == [a_y.id, a_x2.id, a_x1.id]
            assert await ids(queue="b") == [b_x.id]
            assert await ids(kind="x") == [b_x.id, a_x2.id, a_x1.id]
            assert await ids(status=TaskStatus.RUNNING) == [a_x1.id]
            assert await ids(status=TaskStatus.PENDING) == [b_x.id, a_y.id, a_x2.id]
            assert await ids(queue="a", kind="x", status=TaskStatus.PENDING) == [a_x2.id]
            assert await ids(queue="a", status=TaskStatus.COMPLETED) == []
            assert await ids(queue="nope") == []


async def test_list_tasks_keyset_pages_are_stable_while_new_rows_arrive(
    database_url: str, db: Db
) -> None:
    """Paging with before=<last id seen> walks the original tasks exactly once, newest
    first, even when new tasks are inserted between pages (they sort before page one)."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            original = await store.enqueue([new_task(kind=f"k{i}") for i in range(10)])
            seen: list[Any] = []
            before = None
            while True:
                page = await store.list_tasks(
                    queue=None, status=None, kind=None, before=before, limit=3
                )
                if not page:
                    break
                assert len(page) <= 3
                seen.extend(r.id for r in page)
                before = page[-1].id
                await store.enqueue([new_task(kind="late"), new_task(kind="late")])
            total = await db.fetchval("SELECT count(*) FROM iron_defer.tasks")
    assert seen == [r.id for r in reversed(original)]
    assert total == 10 + 2 * 4  # 4 pages read (3+3+3+1), new rows after each


async def test_list_tasks_before_an_unknown_id_still_pages_by_id(database_url: str, db: Db) -> None:
    """before is a position, not a row: an id that does not exist (deleted) still works."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            records = await store.enqueue([new_task(kind=f"k{i}") for i in range(5)])
            await db.execute("DELETE FROM iron_defer.tasks WHERE id = $1", records[2].id)
            page = await store.list_tasks(
                queue=None, status=None, kind=None, before=records[2].id, limit=10
            )
    assert [r.id for r in page] == [records[1].id, records[0].id]


# --- cancel -------------------------------------------------------------------------------


async def test_cancel_of_a_pending_task_cancels_it(database_url: str, db: Db) -> None:
    """A pending task becomes cancelled with finished_at set; the result carries it."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task()])
            result = await store.cancel(record.id)
        stored = await row(db, record.id)
    assert result.current is None
    assert result.cancelled is not None
    assert result.cancelled.id == record.id
    assert result.cancelled.status is TaskStatus.CANCELLED
    assert result.cancelled.finished_at is not None
    assert stored["status"] == "cancelled"
    assert stored["finished_at"] == result.cancelled.finished_at


@pytest.mark.parametrize("final", [OutcomeKind.COMPLETED, OutcomeKind.FAILED])
async def test_cancel_of_a_finished_task_reports_it_unchanged(
    final: OutcomeKind, database_url: str, db: Db
) -> None:
    """A completed or failed task is not cancelled; the result's current shows its status."""
    worker = uuid4()
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task()])
            [claimed] = await store.claim("default", worker, kinds=["job"], limit=1, lease=60)
            await store.finish(worker, [Outcome(record.id, claimed.attempts, final, error="e")])
            before = await row(db, record.id)
            result = await store.cancel(record.id)
        after = await row(db, record.id)
    assert result.cancelled is None
    assert result.current is not None
    assert result.current.status == TaskStatus(final.value)
    assert after == before


async def test_cancel_of_an_unknown_task_finds_nothing(database_url: str, db: Db) -> None:
    """An id with no row gives a CancelResult with neither field set."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            result = await store.cancel(uuid4())
    assert result.cancelled is None
    assert result.current is None


async def test_cancel_twice_reports_the_cancelled_task_the_second_time(
    database_url: str, db: Db
) -> None:
    """A second cancel refuses (the task is no longer pending) and shows it cancelled."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task()])
            first = await store.cancel(record.id)
            second = await store.cancel(record.id)
    assert first.cancelled is not None
    assert second.cancelled is None
    assert second.current is not None
    assert second.current.status is TaskStatus.CANCELLED
    assert second.current.finished_at == first.cancelled.finished_at


async def test_ten_concurrent_cancels_of_one_task_cancel_it_exactly_once(
    database_url: str, db: Db
) -> None:
    """Of 10 concurrent cancels, exactly one gets ``cancelled``; the others see it cancelled."""
    results = []
    with trio.fail_after(15):
        async with open_postgres_store(
            DatabaseSettings(url=database_url, max_connections=10)
        ) as store:
            [record] = await store.enqueue([new_task()])

            async def cancel() -> None:
                results.append(await store.cancel(record.id))

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(cancel)
        stored = await row(db, record.id)
    assert len(results) == 10
    winners = [r for r in results if r.cancelled is not None]
    assert len(winners) == 1
    for result in results:
        if result.cancelled is None:
            assert result.current is not None
            assert result.current.status is TaskStatus.CANCELLED
    assert stored["status"] == "cancelled"


async def test_cancelled_task_is_never_claimed(database_url: str, db: Db) -> None:
    """Cancelling takes the task out of the claimable set."""
    with trio.fail_after(10):
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            [record] = await store.enqueue([new_task()])
            await store.cancel(record.id)
            claimed = await store.claim("default", uuid4(), kinds=["job"], limit=10, lease=60)
    assert claimed == []


# --- queue_statistics, count_due, make_due ------------------------------------------------


async def test_queue_statistics_counts_per_status_and_queue(database_url: str, db: Db) -> None:
    """One row per queue (sorted) with counts per status, future pending as scheduled,
    distinct lease holders, and the wait of the oldest due pending task."""
    w1, w2 = uuid4(), uuid4()
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            await store.enqueue(
                [
                    new_task("a", "wait", scheduled_at=now - seconds(3600)),
                    new_task("a", "wait"),
                    new_task("a", "wait", scheduled_at=now + seconds(3600)),
                    *(new_task("a", "run") for _ in range(5)),
                    new_task("b", "run"),
                    new_task("b", "cancel"),
                ]
            )
            one = await store.claim("a", w1, kinds=["run"], limit=1, lease=60)
            two = await store.claim("a", w1, kinds=["run"], limit=2, lease=60)
            other = await store.claim("a", w2, kinds=["run"], limit=2, lease=60)
            await store.finish(w1, [Outcome(one[0].id, 1, OutcomeKind.COMPLETED)])
            await store.finish(w2, [Outcome(other[0].id, 1, OutcomeKind.FAILED, error="x")])
            [b_run] = await store.claim("b", w2, kinds=["run"], limit=1, lease=60)
            await store.finish(w2, [Outcome(b_run.id, 1, OutcomeKind.COMPLETED)])
            [b_cancel] = await store.list_tasks(
                queue="b", status=None, kind="cancel", before=None, limit=1
            )
            await store.cancel(b_cancel.id)
            stats = await store.queue_statistics()
    assert len(two) == 2
    assert [s.queue for s in stats] == ["a", "b"]
    a, b = stats
    assert (a.pending, a.scheduled, a.running) == (3, 1, 3)
    assert (a.completed, a.failed, a.cancelled) == (1, 1, 0)
    assert a.active_workers == 2  # w1 holds two, w2 holds one
    assert a.oldest_pending_age is not None
    assert 3600 <= a.oldest_pending_age < 3600 + 60
    assert (b.pending, b.scheduled, b.running) == (0, 0, 0)
    assert (b.completed, b.failed, b.cancelled) == (1, 0, 1)
    assert b.active_workers == 0
    assert b.oldest_pending_age is None


async def test_queue_statistics_ignores_future_tasks_for_the_oldest_pending_age(
    database_url: str, db: Db
) -> None:
    """A queue whose only pending tasks are in the future has no oldest_pending_age."""
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            assert await store.queue_statistics() == []
            await store.enqueue([new_task("later", scheduled_at=now + seconds(60))])
            [stats] = await store.queue_statistics()
    assert (stats.queue, stats.pending, stats.scheduled) == ("later", 1, 1)
    assert stats.oldest_pending_age is None


async def test_count_due_counts_due_pending_tasks_of_the_given_queues_and_kinds(
    database_url: str, db: Db
) -> None:
    """count_due ignores other queues, other kinds, future tasks and non-pending tasks."""
    with trio.fail_after(10):
        now = await db_now(db)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            await store.enqueue(
                [
                    new_task("a", "x"),
                    new_task("a", "x"),
                    new_task("a", "y"),
                    new_task("b", "x"),
                    new_task("c", "x"),
                    new_task("a", "x", scheduled_at=now + seconds(3600)),
                ]
            )
            await store.claim("b", uuid4(), kinds=["x"], limit=1, lease=60)
            assert await store.count_due(["a"], ["x"]) == 2
            assert await store.count_due(["a"], ["x", "y"]) == 3
            assert await store.count_due(["a", "b", "c"], ["x"]) == 3  # b's task is running
            assert await store.count_due(["a"], []) == 0
            assert await store.count_due([], ["x"]) == 0


async def test_make_due_moves_future_pending_tasks_of_the_given_queues_to_now(
    database_url: str, db: Db
) -> None:
    """make_due returns how many it moved; only future pending tasks of those queues move."""
    with trio.fail_after(10):
        now = await db_now(db)
        future = now + seconds(3600)
        async with open_postgres_store(DatabaseSettings(url=database_url)) as store:
            due_a, later_a, later_b, later_c = await store.enqueue(
                [
                    new_task("a"),
                    new_task("a", scheduled_at=future),
                    new_task("b", scheduled_at=future),
                    new_task("c", scheduled_at=future),
                ]
            )
            assert await store.count_due(["a", "b", "c"], ["job"]) == 1
            moved = await store.make_due(["a", "b"])
            db_time = await db_now(db)
            assert await store.count_due(["a", "b", "c"], ["job"]) == 3
            assert await store.make_due(["a", "b"]) == 0
        rows = {r["id"]: r for r in await db.fetch("SELECT * FROM iron_defer.tasks")}
    assert moved == 2
    assert rows[due_a.id]["scheduled_at"] == due_a.scheduled_at  # already due: untouched
    assert rows[later_a.id]["scheduled_at"] <= db_time
    assert rows[later_b.id]["scheduled_at"] <= db_time
    assert rows[later_c.id]["scheduled_at"] == future
