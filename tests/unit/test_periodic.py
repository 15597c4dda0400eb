"""Fire-time arithmetic of periodic schedules (pure) and their settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

import iron_defer_trio as iron_defer
from iron_defer_trio.config import load_settings
from iron_defer_trio.domain.periodic import fires_between, next_fire, previous_fire

T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)


def test_next_fire_is_strictly_after_the_given_time() -> None:
    """A time that is itself a fire time is not returned again."""
    assert next_fire("0 * * * *", "UTC", T0) == T0 + timedelta(hours=1)
    assert next_fire("0 * * * *", "UTC", T0 - timedelta(microseconds=1)) == T0


def test_previous_fire_includes_the_given_time() -> None:
    """The latest fire time at or before the time, with sub-second times rounded down."""
    assert previous_fire("0 * * * *", "UTC", T0) == T0
    assert previous_fire("0 * * * *", "UTC", T0 + timedelta(minutes=59, seconds=59.5)) == T0
    assert previous_fire("* * * * * *", "UTC", T0 + timedelta(seconds=2.7)) == T0 + timedelta(
        seconds=2
    )


def test_six_fields_fire_on_seconds() -> None:
    """A leading seconds field: every ten seconds."""
    fires = fires_between("*/10 * * * * *", "UTC", T0, T0 + timedelta(seconds=35), limit=100)
    assert fires == [T0 + timedelta(seconds=s) for s in (10, 20, 30)]


def test_fires_between_stops_at_the_limit() -> None:
    """A pathological window yields at most ``limit`` fire times, oldest first."""
    fires = fires_between("* * * * * *", "UTC", T0, T0 + timedelta(days=1), limit=3)
    assert fires == [T0 + timedelta(seconds=s) for s in (1, 2, 3)]


def test_time_zone_fire_times_follow_daylight_saving() -> None:
    """09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer; a 02:30 job on the
    spring-forward night runs at 03:00 local (the skipped hour's end)."""
    winter = next_fire("0 9 * * *", "Europe/Paris", datetime(2030, 1, 15, tzinfo=UTC))
    summer = next_fire("0 9 * * *", "Europe/Paris", datetime(2030, 7, 15, tzinfo=UTC))
    assert (winter.hour, summer.hour) == (8, 7)
    spring = next_fire("30 2 * * *", "Europe/Paris", datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert spring == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_periodic_names_are_checked() -> None:
    """A blank name is refused like a bad expression."""
    with pytest.raises(iron_defer.ConfigError, match="schedule name"):
        iron_defer.Periodic("* * * * *", name=" ")


def test_schedules_come_from_the_environment_as_json() -> None:
    """IRON_DEFER__PERIODIC__SCHEDULES holds a JSON array of schedule objects."""
    value = json.dumps([{"cron": "*/5 * * * *", "kind": "digest", "payload": {"a": 1}}])
    loaded = load_settings(
        environ={
            "IRON_DEFER__PERIODIC__SCHEDULES": value,
            "IRON_DEFER__PERIODIC__MISFIRE_GRACE": "5m",
        },
        config_file=None,
        cwd="/nonexistent-dir-for-test",
    )
    (schedule,) = loaded.settings.periodic.schedules
    assert (schedule.cron, schedule.kind, schedule.payload) == ("*/5 * * * *", "digest", {"a": 1})
    assert (schedule.timezone, schedule.missed) == ("UTC", "run_once")
    assert loaded.settings.periodic.misfire_grace == 300.0


def test_bad_configured_schedules_name_the_key() -> None:
    """A bad expression, time zone or policy in the settings names its key path."""
    with pytest.raises(iron_defer.ConfigError) as caught:
        iron_defer.Settings.build(
            periodic={
                "schedules": [
                    {"cron": "* * *", "kind": "a"},
                    {"cron": "* * * * *", "kind": "b", "timezone": "Nowhere/Land"},
                    {"cron": "* * * * *", "kind": "c", "missed": "twice"},
                ]
            }
        )
    message = str(caught.value)
    assert "periodic.schedules.0.cron: Value error, invalid cron expression" in message
    assert "periodic.schedules.1.timezone: Value error, unknown time zone" in message
    assert "periodic.schedules.2.missed" in message


def test_schedules_in_the_environment_must_be_json() -> None:
    """Anything but JSON in the variable is a ConfigError naming it."""
    with pytest.raises(iron_defer.ConfigError, match="IRON_DEFER__PERIODIC__SCHEDULES"):
        load_settings(
            environ={"IRON_DEFER__PERIODIC__SCHEDULES": "*/5 * * * * digest"},
            cwd="/nonexistent-dir-for-test",
        )
