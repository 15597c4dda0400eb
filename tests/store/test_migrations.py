"""Schema migrations and the named queries that run against the schema.

Rules: ``iron_defer_trio.migrate(dsn)`` brings an empty database to the schema of
migrations/ (schema iron_defer, tables tasks and schema_migrations, the indexes that match
the queries, the CHECK constraints), records one ledger row per migration with the file's
checksum, applies nothing the second time, serialises concurrent runs, and refuses a
database whose applied migration was edited. Every named query in store/sql prepares on the
migrated schema with the parameters its header documents. Each migration test gets an empty
database of its own (created and dropped here); every test has an absolute
``trio.fail_after``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.errors import MigrationError, StoreUnavailable
from iron_defer_trio.store._migrate import MigrationReport, load_migrations
from iron_defer_trio.store._queries import MIGRATE, OPERATIONS, TASKS, Query
from tests import pg
from tests.store._support import module_database, parameter_count

if TYPE_CHECKING:
    from collections.abc import Iterator

MIGRATIONS = load_migrations()
LATEST = tuple(m.version for m in MIGRATIONS)

EXPECTED_INDEXES = {
    ("schema_migrations", "schema_migrations_pkey"),
    ("tasks", "tasks_pkey"),
    ("tasks", "tasks_claim_idx"),
    ("tasks", "tasks_running_idx"),
    ("tasks", "tasks_queue_status_idx"),
    ("tasks", "tasks_idempotency_idx"),
    ("tasks", "tasks_idempotency_expiry_idx"),
    ("task_audit", "task_audit_pkey"),
    ("task_audit", "task_audit_task_idx"),
    ("tasks", "tasks_suspended_idx"),
    ("queue_pauses", "queue_pauses_pkey"),
    ("periodic_schedules", "periodic_schedules_pkey"),
    ("tasks", "tasks_retention_idx"),
}

EXPECTED_CHECKS = {
    "tasks_status_known",
    "tasks_queue_name",
    "tasks_kind_length",
    "tasks_max_attempts_range",
    "tasks_attempts_within_budget",
    "tasks_pending_has_attempt_left",
    "tasks_lease_iff_running",
    "tasks_finished_iff_final",
    "tasks_last_error_bounded",
    "tasks_traceparent_format",
    "tasks_scheduled_at_finite",
    "tasks_idempotency_key_length",
    "tasks_attempt_timeout_range",
    "tasks_suspended_iff_suspended_at",
    "tasks_cancel_request_status",
    "tasks_region_label",
}


@pytest.fixture
def empty_url() -> Iterator[str]:
    """A brand-new database with no schema at all (not cloned from the migrated template)."""
    name = pg.unique_name("iron_defer_empty")
    pg.run_admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg.dsn_for(name)
    finally:
        pg.run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migrate_creates_the_schema_tables_indexes_and_constraints(empty_url: str) -> None:
    """On an empty database, migrate applies every migration and leaves schema iron_defer
    with its four tables, the expected indexes (claim index partial on pending) and every
    CHECK constraint."""
    with trio.fail_after(15):
        report = await iron_defer.migrate(empty_url)
        async with pg.connect(empty_url) as db:
            tables = await db.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'iron_defer' ORDER BY 1"
            )
            indexes = await db.fetch(
                "SELECT tablename, indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = 'iron_defer'"
            )
            checks = await db.fetch(
                "SELECT conname FROM pg_constraint"
                " WHERE conrelid = 'iron_defer.tasks'::regclass AND contype = 'c'"
            )
            primary = await db.fetchval(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'iron_defer.tasks'::regclass AND contype = 'p'"
            )
    assert report == MigrationReport(applied=LATEST, unknown=())
    assert [t["table_name"] for t in tables] == [
        "periodic_schedules",
        "queue_pauses",
        "schema_migrations",
        "task_audit",
        "tasks",
    ]
    assert {(i["tablename"], i["indexname"]) for i in indexes} == EXPECTED_INDEXES
    definitions = {i["indexname"]: i["indexdef"] for i in indexes}
    assert (
        "(queue, COALESCE(region, ''::text), priority DESC, scheduled_at, id)"
        in definitions["tasks_claim_idx"]
    )
    assert "WHERE (status = 'pending'::text)" in definitions["tasks_claim_idx"]
    assert "(claimed_by)" in definitions["tasks_running_idx"]
    assert "WHERE (status = 'running'::text)" in definitions["tasks_running_idx"]
    assert "(queue, status, id)" in definitions["tasks_queue_status_idx"]
    assert "UNIQUE INDEX" in definitions["tasks_idempotency_idx"]
    assert "(queue, idempotency_key)" in definitions["tasks_idempotency_idx"]
    assert "(status, finished_at)" in definitions["tasks_retention_idx"]
    assert "WHERE (finished_at IS NOT NULL)" in definitions["tasks_retention_idx"]
    assert {c["conname"] for c in checks} == EXPECTED_CHECKS
    assert primary == "PRIMARY KEY (id)"


async def test_migrate_sets_the_tasks_tables_autovacuum_thresholds(empty_url: str) -> None:
    """The tasks table is vacuumed and analyzed after a fixed number of changed rows rather
    than a fraction of its size (docs/guides/retention.md), and keeps these settings."""
    with trio.fail_after(15):
        await iron_defer.migrate(empty_url)
        async with pg.connect(empty_url) as db:
            options = await db.fetchval(
                "SELECT reloptions FROM pg_class WHERE oid = 'iron_defer.tasks'::regclass"
            )
    assert sorted(options) == sorted(
        [
            "autovacuum_vacuum_scale_factor=0.01",
            "autovacuum_vacuum_threshold=1000",
            "autovacuum_vacuum_insert_scale_factor=0.01",
            "autovacuum_vacuum_insert_threshold=1000",
            "autovacuum_analyze_scale_factor=0.02",
            "autovacuum_analyze_threshold=1000",
        ]
    )


async def test_migrate_records_each_migration_with_its_checksum(empty_url: str) -> None:
    """The ledger holds one row per migration: version, name and the file's sha256."""
    with trio.fail_after(15):
        await iron_defer.migrate(empty_url)
        async with pg.connect(empty_url) as db:
            ledger = await db.fetch(
                "SELECT version, name, checksum FROM iron_defer.schema_migrations ORDER BY 1"
            )
    assert [(r["version"], r["name"], r["checksum"]) for r in ledger] == [
        (m.version, m.name, m.checksum) for m in MIGRATIONS
    ]
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["checksum"]) for r in ledger)


async def test_a_second_migrate_applies_nothing(empty_url: str) -> None:
    """Migrating an up-to-date database reports nothing applied and changes no ledger row."""
    with trio.fail_after(15):
        await iron_defer.migrate(empty_url)
        async with pg.connect(empty_url) as db:
            before = [dict(r) for r in await db.fetch("TABLE iron_defer.schema_migrations")]
            again = await iron_defer.migrate(empty_url)
            after = [dict(r) for r in await db.fetch("TABLE iron_defer.schema_migrations")]
    assert again == MigrationReport(applied=(), unknown=())
    assert after == before


async def test_concurrent_migrations_apply_each_migration_once(empty_url: str) -> None:
    """Four migrate() calls racing on an empty database all succeed; exactly one applies the
    migrations and the ledger has one row per migration."""
    reports: list[MigrationReport] = []

    async def run() -> None:
        reports.append(await iron_defer.migrate(empty_url))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(run)
        async with pg.connect(empty_url) as db:
            versions = [
                r["version"]
                for r in await db.fetch(
                    "SELECT version FROM iron_defer.schema_migrations ORDER BY 1"
                )
            ]
    assert sorted(r.applied for r in reports) == [(), (), (), LATEST]
    assert all(r.unknown == () for r in reports)
    assert tuple(versions) == LATEST


async def test_an_edited_applied_migration_is_refused(empty_url: str) -> None:
    """A ledger checksum that no longer matches the file makes migrate raise MigrationError
    naming the migration, and nothing is changed."""
    first = MIGRATIONS[0]
    with trio.fail_after(15):
        await iron_defer.migrate(empty_url)
        async with pg.connect(empty_url) as db:
            await db.execute(
                "UPDATE iron_defer.schema_migrations SET checksum = $1 WHERE version = $2",
                "0" * 64,
                first.version,
            )
            with pytest.raises(MigrationError) as caught:
                await iron_defer.migrate(empty_url)
            checksum = await db.fetchval(
                "SELECT checksum FROM iron_defer.schema_migrations WHERE version = $1",
                first.version,
            )
    assert f"{first.version:04d}_{first.name}" in str(caught.value)
    assert "checksum" in str(caught.value)
    assert checksum == "0" * 64


async def test_versions_unknown_to_this_package_are_reported(empty_url: str) -> None:
    """A ledger row from a newer release is reported as unknown, not an error."""
    with trio.fail_after(15):
        await iron_defer.migrate(empty_url)
        async with pg.connect(empty_url) as db:
            await db.execute(
                "INSERT INTO iron_defer.schema_migrations (version, name, checksum)"
                " VALUES (9999, 'from_the_future', 'x')"
            )
        report = await iron_defer.migrate(empty_url)
    assert report == MigrationReport(applied=(), unknown=(9999,))


async def test_migrate_on_an_unreachable_server_is_store_unavailable() -> None:
    """The public migrate() surfaces StoreUnavailable itself (no ExceptionGroup)."""
    with trio.fail_after(10):
        with pytest.raises(StoreUnavailable):
            await iron_defer.migrate("postgresql://postgres@127.0.0.1:1/postgres")


def _statements(query: Query) -> list[str]:
    # Line comments may contain ';' and none of our string literals contains '--'.
    code = re.sub(r"--[^\n]*", "", query.sql)
    return [part.strip() for part in code.split(";") if part.strip()]


def _documented_parameters(query: Query) -> int:
    if query.params == "none":
        return 0
    return max(int(n) for n in re.findall(r"\$(\d+)", query.params))


QUERIES = {
    **{f"tasks.{n}": q for n, q in TASKS.all().items()},
    **{f"operations.{n}": q for n, q in OPERATIONS.all().items()},
    **{f"migrate.{n}": q for n, q in MIGRATE.all().items()},
}


@pytest.fixture(scope="module")
def migrated_url(template_database: str) -> Iterator[str]:
    """One migrated database for the prepare checks (preparing changes nothing)."""
    with module_database(template_database, "iron_defer_prepare") as url:
        yield url


@pytest.mark.parametrize("query", QUERIES.values(), ids=QUERIES.keys())
async def test_named_query_prepares_with_its_documented_parameters(
    query: Query, migrated_url: str
) -> None:
    """Each statement of the query parses and plans on the migrated schema (server-side
    prepare); a query that takes parameters is one statement with exactly as many
    parameters as its ``-- params:`` header lists."""
    statements = _statements(query)
    with trio.fail_after(10):
        async with pg.connect(migrated_url) as db:
            counts = [await parameter_count(db, sql) for sql in statements]
    documented = _documented_parameters(query)
    if documented:
        assert len(statements) == 1
    assert counts == [documented] * len(statements)
