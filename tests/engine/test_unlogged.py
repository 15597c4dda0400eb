"""UNLOGGED mode (``database.unlogged_tables``): a faster, non-durable tasks table.

Rules: an engine configured so makes the table UNLOGGED (checked in pg_class) and warns that
crash recovery empties it; the setting is refused together with audit_log; an engine never
turns the table back into a logged one by itself (``migrate(unlogged=False)`` does), and
refuses to audit on an UNLOGGED table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pytest
import structlog
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.config import Settings

if TYPE_CHECKING:
    from tests.pg import Db


class Nop(iron_defer.Task):
    KIND: ClassVar[str] = "nop"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


async def _persistence(db: Db) -> str:
    value: str = await db.fetchval(
        "SELECT relpersistence::text FROM pg_class WHERE oid = 'iron_defer.tasks'::regclass"
    )
    return value


def _settings(database_url: str, **database: object) -> Settings:
    return Settings.build(database={"url": database_url, **database})


async def test_an_unlogged_engine_makes_the_table_unlogged_warns_and_runs_tasks(
    database_url: str, db: Db
) -> None:
    with trio.fail_after(15), structlog.testing.capture_logs() as logs:
        async with iron_defer.open_engine(
            _settings(database_url, unlogged_tables=True), tasks=[Nop], migrate=False
        ) as engine:
            await engine.enqueue(Nop())
            await engine.wait_until_idle()
    assert await _persistence(db) == "u"
    # Its indexes follow the table.
    assert await db.fetchval(
        "SELECT bool_and(c.relpersistence = 'u') FROM pg_class c JOIN pg_index i "
        "ON i.indexrelid = c.oid WHERE i.indrelid = 'iron_defer.tasks'::regclass"
    )
    events = [(e["event"], e["log_level"]) for e in logs]
    assert ("tasks_table_converting", "warning") in events
    assert ("tasks_table_unlogged", "warning") in events
    assert await db.statuses() == {"completed": 1}


def test_unlogged_tables_together_with_the_audit_log_are_refused() -> None:
    with pytest.raises(iron_defer.ConfigError, match="audit_log and unlogged_tables") as caught:
        Settings.build(database={"audit_log": True, "unlogged_tables": True})
    assert "emptied by crash recovery" in str(caught.value)


async def test_a_default_engine_leaves_an_unlogged_table_unlogged_and_says_so(
    database_url: str, db: Db
) -> None:
    await db.execute("ALTER TABLE iron_defer.tasks SET UNLOGGED")
    with trio.fail_after(15), structlog.testing.capture_logs() as logs:
        async with iron_defer.open_engine(
            _settings(database_url), tasks=[Nop], run_workers=False, migrate=False
        ):
            pass
    assert await _persistence(db) == "u"
    warnings = [e for e in logs if e["event"] == "tasks_table_unlogged"]
    assert warnings and "migrate --logged" in warnings[0]["consequence"]


async def test_an_audited_engine_refuses_an_unlogged_table(database_url: str, db: Db) -> None:
    await db.execute("ALTER TABLE iron_defer.tasks SET UNLOGGED")
    with trio.fail_after(15), pytest.raises(iron_defer.ConfigError, match="UNLOGGED"):
        async with iron_defer.open_engine(
            _settings(database_url, audit_log=True), tasks=[Nop], migrate=False
        ):
            pass


async def test_migrate_switches_the_table_both_ways_and_keeps_its_rows(
    database_url: str, db: Db
) -> None:
    with trio.fail_after(20):
        async with iron_defer.open_engine(
            database_url, tasks=[Nop], run_workers=False, migrate=False
        ) as engine:
            await engine.enqueue(Nop())
        await iron_defer.migrate(database_url, unlogged=True)
        assert await _persistence(db) == "u"
        await iron_defer.migrate(database_url, unlogged=False)
        assert await _persistence(db) == "p"
    assert await db.statuses() == {"pending": 1}
