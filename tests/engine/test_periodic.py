"""Periodic (cron) schedules on real PostgreSQL: one task per fire time across engines, the
missed-run policy after downtime, and clear errors for bad schedules.

Passes that must not depend on the wall clock call ``engine.periodic.run_once(now=...)`` with
chosen times; the multi-engine test runs the real schedulers and waits on rows.
"""

from __future__ import annotations

import random
from collections import Counter
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.domain.periodic import ScheduleDefinition, previous_fire
from iron_defer_trio.engine._health import DatabaseHealth
from iron_defer_trio.engine._periodic import PeriodicScheduler
from iron_defer_trio.observability.logs import default_logger
from iron_defer_trio.observability.metrics import metrics_for
from iron_defer_trio.store import open_postgres_store
from tests.conftest import fast_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.pg import Db


class Report(iron_defer.Task):
    KIND: ClassVar[str] = "report"
    to: str = "ops"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


class Nightly(iron_defer.Task):
    KIND: ClassVar[str] = "nightly"
    PERIODIC: ClassVar[tuple[iron_defer.Periodic, ...]] = (
        iron_defer.Periodic("0 3 * * *", timezone="Europe/Paris", queue="reports"),
    )

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


def _engine(
    url: str,
    periodic: list[iron_defer.Periodic],
    tasks: list[type[iron_defer.Task]] | None = None,
    **kwargs: Any,
) -> Any:
    return iron_defer.open_engine(
        fast_settings(url),
        tasks=tasks or [Report],
        periodic=periodic,
        migrate=False,
        rng=random.Random(7),
        **kwargs,
    )


async def _tasks(db: Db) -> list[Any]:
    return list(await db.fetch("SELECT * FROM iron_defer.tasks ORDER BY scheduled_at, id"))


async def test_three_engines_enqueue_exactly_one_task_per_fire_time(
    database_url: str, db: Db
) -> None:
    """Three engines run one every-second schedule for five seconds: every fire time from
    the first to the last has exactly one task, none is doubled and none is skipped."""
    every_second = iron_defer.Periodic("* * * * * *", Report(to="all"), name="tick")
    with trio.fail_after(40):
        async with (
            _engine(database_url, [every_second]),
            _engine(database_url, [every_second]),
            _engine(database_url, [every_second]),
        ):
            start = await db.fetchval("SELECT now()")
            while True:
                last = await db.fetchval(
                    "SELECT last_fire_at FROM iron_defer.periodic_schedules WHERE name = 'tick'"
                )
                if last is not None and last >= start + timedelta(seconds=5):
                    break
                await trio.sleep(0.1)
        tasks = await _tasks(db)
    fires = Counter(row["scheduled_at"] for row in tasks)
    assert all(count == 1 for count in fires.values()), fires
    times = sorted(fires)
    assert len(times) >= 5
    assert times == [times[0] + timedelta(seconds=n) for n in range(len(times))]
    assert {row["kind"] for row in tasks} == {"report"}
    assert {row["payload"] for row in tasks} == {'{"to": "all"}'}


def _hourly(missed: str) -> ScheduleDefinition:
    return ScheduleDefinition(
        name="hourly",
        cron="0 * * * *",
        timezone="UTC",
        queue="default",
        kind="report",
        missed=missed,
        payload_json='{"to": "ops"}',
        priority=0,
        max_attempts=3,
    )


@asynccontextmanager
async def _scheduler(url: str, missed: str) -> AsyncIterator[PeriodicScheduler]:
    """A scheduler of one hourly schedule on the test database, driven by run_once only (no
    engine runs it in the background)."""
    log = default_logger()
    async with open_postgres_store(fast_settings(url).database) as store:
        yield PeriodicScheduler(
            store,
            [_hourly(missed)],
            DatabaseHealth(log),
            log,
            metrics=metrics_for(),
            misfire_grace=60.0,
            retry_interval=0.2,
        )


@pytest.mark.parametrize(
    ("missed", "expected_tasks"), [("run_once", 1), ("skip", 0)], ids=["run_once", "skip"]
)
async def test_runs_missed_during_downtime_fire_at_most_once(
    database_url: str, db: Db, missed: str, expected_tasks: int
) -> None:
    """After five hours without an engine, ``run_once`` enqueues one task for the latest
    missed fire time and ``skip`` none; either way the fence moves to that fire time, a
    second pass does nothing, and the next on-time fire time gets its task."""
    with trio.fail_after(20):
        async with _scheduler(database_url, missed) as scheduler:
            await scheduler.register()
            # As if registered five hours ago and no engine ran since.
            await db.execute(
                "UPDATE iron_defer.periodic_schedules SET created_at = now() - interval '5 hours'"
            )
            latest_missed = previous_fire("0 * * * *", "UTC", datetime.now(UTC))
            now = latest_missed + timedelta(minutes=10)
            result = await scheduler.run_once(now=now)
            again = await scheduler.run_once(now=now + timedelta(minutes=1))
            tasks = await _tasks(db)
            row = await db.fetchrow("SELECT * FROM iron_defer.periodic_schedules")
            on_time = await scheduler.run_once(now=latest_missed + timedelta(hours=1, seconds=2))
    assert len(result.enqueued) == expected_tasks
    assert len(result.skipped) == 1 - expected_tasks
    assert [t["scheduled_at"] for t in tasks] == [latest_missed] * expected_tasks
    assert again.enqueued == () and again.skipped == ()
    assert row["last_fire_at"] == latest_missed
    assert row["next_fire_at"] == latest_missed + timedelta(hours=1)
    assert [(f.fire_at, f.missed) for f in on_time.enqueued] == [
        (latest_missed + timedelta(hours=1), False)
    ]


async def test_class_attribute_schedule_is_registered_with_its_time_zone(
    database_url: str, db: Db
) -> None:
    """A Task class's PERIODIC is run by engines that register the class; its next fire time
    is read in the schedule's time zone (03:00 in Paris is 01:00 or 02:00 UTC)."""
    with trio.fail_after(20):
        async with _engine(database_url, [], tasks=[Report, Nightly]) as engine:
            schedules = await engine.periodic_schedules()
    (nightly,) = schedules
    assert (nightly.name, nightly.queue, nightly.kind) == ("nightly", "reports", "nightly")
    assert nightly.timezone == "Europe/Paris" and nightly.last_fire_at is None
    assert nightly.next_fire_at is not None
    assert nightly.next_fire_at.astimezone(UTC).hour in {1, 2}
    assert nightly.next_fire_at.minute == 0


async def test_producer_engines_fire_nothing(database_url: str, db: Db) -> None:
    """An engine without workers neither registers nor fires schedules."""
    with trio.fail_after(20):
        async with _engine(database_url, [], run_workers=False) as engine:
            assert engine.periodic is None
            assert await engine.periodic_schedules() == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: iron_defer.Periodic("61 * * * *", Report()), "invalid cron expression"),
        (lambda: iron_defer.Periodic("* * * *", Report()), "invalid cron expression"),
        (
            lambda: iron_defer.Periodic("* * * * *", Report(), timezone="Mars/Olympus"),
            "unknown time zone 'Mars/Olympus'",
        ),
        (lambda: iron_defer.Periodic("* * * * *", Report(), missed="later"), "missed='later'"),  # type: ignore[arg-type]
    ],
    ids=["out-of-range", "four-fields", "unknown-zone", "unknown-policy"],
)
def test_invalid_schedules_are_refused_with_a_config_error(make: Any, message: str) -> None:
    """Bad cron expressions, time zones and policies fail when the Periodic is built."""
    with pytest.raises(iron_defer.ConfigError, match=message):
        make()


class Unregistered(iron_defer.Task):
    KIND: ClassVar[str] = "unregistered"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


async def test_schedule_of_an_unregistered_kind_is_refused_at_start(database_url: str) -> None:
    """A schedule whose task class the engine does not register fails open_engine."""
    with (
        trio.fail_after(20),
        pytest.raises(iron_defer.ConfigError, match="no task class is registered"),
    ):
        async with _engine(database_url, [iron_defer.Periodic("* * * * *", Unregistered())]):
            pass


async def test_configured_schedule_of_an_unknown_kind_is_refused_at_start(
    database_url: str,
) -> None:
    """A schedule in the settings naming an unregistered kind fails open_engine, naming the
    setting."""
    settings = iron_defer.Settings.build(
        database={"url": database_url},
        periodic={"schedules": [{"cron": "*/5 * * * *", "kind": "nope"}]},
    )
    with (
        trio.fail_after(20),
        pytest.raises(iron_defer.ConfigError, match=r"periodic.schedules\[0\].*'nope'"),
    ):
        async with iron_defer.open_engine(settings, tasks=[Report], migrate=False):
            pass


async def test_configured_schedule_fires_its_payload(database_url: str, db: Db) -> None:
    """A schedule from the settings enqueues its kind and payload into its queue."""
    settings = iron_defer.Settings.build(
        database={"url": database_url},
        periodic={
            "schedules": [
                {
                    "name": "cfg",
                    "cron": "*/5 * * * *",
                    "kind": "report",
                    "payload": {"to": "x"},
                    "queue": "mail",
                }
            ]
        },
    )
    with trio.fail_after(20):
        async with iron_defer.open_engine(
            settings, tasks=[Report], migrate=False, queues={"other": 1}
        ) as engine:
            assert engine.periodic is not None
            fire = previous_fire("*/5 * * * *", "UTC", datetime.now(UTC)) + timedelta(minutes=5)
            result = await engine.periodic.run_once(now=fire + timedelta(seconds=1))
            tasks = await _tasks(db)
    assert [f.fire_at for f in result.enqueued] == [fire]
    assert [(t["queue"], t["kind"], t["payload"], t["scheduled_at"]) for t in tasks] == [
        ("mail", "report", '{"to": "x"}', fire)
    ]


async def test_two_schedules_with_one_name_are_refused(database_url: str) -> None:
    """Two schedules resolving to one name fail open_engine, asking for distinct names."""
    with (
        trio.fail_after(20),
        pytest.raises(iron_defer.ConfigError, match="give each a distinct name"),
    ):
        async with _engine(
            database_url,
            [
                iron_defer.Periodic("* * * * *", Report()),
                iron_defer.Periodic("0 * * * *", Report()),
            ],
        ):
            pass


class PinnedReport(iron_defer.Task):
    KIND: ClassVar[str] = "pinned_report"
    REGION: ClassVar[str | None] = "eu-west"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


async def test_a_fired_task_carries_its_class_region(database_url: str, db: Db) -> None:
    """A schedule of a class pinned to a region enqueues pinned tasks (run only there)."""
    with trio.fail_after(20):
        async with _engine(
            database_url,
            [iron_defer.Periodic("* * * * * *", PinnedReport())],
            tasks=[PinnedReport],
        ):
            while not await db.fetchval("SELECT count(*) FROM iron_defer.tasks"):
                await trio.sleep(0.05)
        regions = {row["region"] for row in await _tasks(db)}
    assert regions == {"eu-west"}
