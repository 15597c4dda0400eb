"""Pins settings validation: duration strings, unknown keys reported with their dotted path,
impossible combinations, every problem listed in one ConfigError, and the DSN never shown."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from iron_defer_trio.config import (
    DatabaseSettings,
    Settings,
    WorkerSettings,
    mask_dsn,
    parse_duration,
)
from iron_defer_trio.errors import ConfigError

SECRET = "s3cr3t-Pa55"
DSN = f"postgresql://app:{SECRET}@db.internal:5432/tasks"


def _config_error(data: dict[str, Any]) -> str:
    """The message of the ConfigError that building ``data`` raises."""
    with pytest.raises(ConfigError) as info:
        Settings.build(data)
    return str(info.value)


# --- parse_duration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("10", 10.0),
        (" 3 s ", 3.0),
        ("0", 0.0),
    ],
)
def test_duration_strings_are_converted_to_seconds(text: str, seconds: float) -> None:
    """A number with an optional ms/s/m/h/d unit becomes a float number of seconds."""
    assert parse_duration(text) == pytest.approx(seconds)
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize("value", [0, 5, 2.5, None, [1]])
def test_non_string_durations_pass_through_untouched(value: Any) -> None:
    """Numbers (and anything else) are left for pydantic to judge."""
    assert parse_duration(value) is value


@pytest.mark.parametrize(
    "text", ["", "fast", "5 sec", "5S", "-5s", "1e3s", "5s5", "ms", "1.2.3s", "5 m s"]
)
def test_garbage_durations_raise_a_message_showing_the_accepted_forms(text: str) -> None:
    """Unparseable strings raise ValueError quoting the input and listing the units."""
    with pytest.raises(ValueError, match=r"invalid duration") as info:
        parse_duration(text)
    message = str(info.value)
    assert repr(text) in message
    assert "ms, s, m, h, d" in message


def test_duration_strings_are_accepted_in_settings() -> None:
    """Duration fields take unit strings and store seconds."""
    settings = Settings.build(
        worker={"poll_interval": "250ms", "lease_duration": "1m", "heartbeat_interval": "10s"},
        database={"connect_timeout": "2s"},
    )
    assert settings.worker.poll_interval == pytest.approx(0.25)
    assert settings.worker.lease_duration == 60.0
    assert settings.worker.heartbeat_interval == 10.0
    assert settings.database.connect_timeout == 2.0


def test_bad_duration_in_settings_is_reported_with_its_path() -> None:
    """A garbage duration string is reported under worker.<key>."""
    message = _config_error({"worker": {"poll_interval": "soon"}})
    assert "worker.poll_interval: " in message
    assert "invalid duration 'soon'" in message


# --- defaults and construction -----------------------------------------------------------


def test_defaults_are_valid_and_documented_values() -> None:
    """Settings.build() with nothing gives the documented defaults and no database URL."""
    settings = Settings.build()
    assert settings.database.url is None
    assert settings.database.max_connections == 10
    assert settings.worker.lease_duration == 20.0
    assert settings.worker.heartbeat_interval == 5.0
    assert settings.worker.max_attempts == 3
    assert settings.queues == {"default": 4}


def test_keyword_overrides_merge_into_sections_of_the_dict() -> None:
    """build(data, **overrides) applies the keywords on top of the dict key by key, so an
    override of one key keeps the section's other keys."""
    settings = Settings.build(
        {"queues": {"a": 1}, "worker": {"max_attempts": 7}},
        queues={"b": 2},
        worker={"poll_interval": 2},
    )
    assert settings.queues == {"a": 1, "b": 2}
    assert (settings.worker.max_attempts, settings.worker.poll_interval) == (7, 2.0)


def test_dsn_returns_the_url_in_clear_and_fails_when_unset() -> None:
    """dsn() is the one place the URL is revealed; without one it raises ConfigError."""
    assert Settings.build(database={"url": DSN}).dsn() == DSN
    with pytest.raises(ConfigError, match=r"database\.url is not set"):
        Settings.build().dsn()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres_url_schemes_are_accepted(scheme: str) -> None:
    """Both postgresql:// and postgres:// are accepted."""
    url = f"{scheme}://localhost/db"
    assert Settings.build(database={"url": url}).dsn() == url


# --- unknown keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"wroker": {}}, "wroker"),
        ({"worker": {"pol_interval": 1}}, "worker.pol_interval"),
        ({"database": {"uri": DSN}}, "database.uri"),
    ],
)
def test_unknown_setting_is_rejected_with_its_path(data: dict[str, Any], path: str) -> None:
    """A misspelt key at any depth fails with '<dotted.path>: unknown setting'."""
    message = _config_error(data)
    assert f"{path}: unknown setting" in message


def test_unknown_keyword_override_is_rejected() -> None:
    """Unknown keyword arguments to build() are unknown settings too."""
    with pytest.raises(ConfigError, match="queue: unknown setting"):
        Settings.build(queue={"default": 1})


# --- bad types and impossible values -----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"worker": {"max_attempts": "many"}}, "worker.max_attempts"),
        ({"worker": {"lease_duration": [20]}}, "worker.lease_duration"),
        ({"database": {"max_connections": "ten"}}, "database.max_connections"),
        ({"database": {"url": 5432}}, "database.url"),
        ({"queues": ["default"]}, "queues"),
        ({"queues": {"default": "four"}}, "queues.default"),
        ({"worker": "fast"}, "worker"),
    ],
)
def test_wrong_types_are_rejected_with_their_path(data: dict[str, Any], path: str) -> None:
    """A value of the wrong type is reported under its dotted path."""
    assert f"\n  {path}: " in _config_error(data)


@pytest.mark.parametrize("connections", [1, 101, 0, -5])
def test_max_connections_outside_two_to_a_hundred_is_rejected(connections: int) -> None:
    """The pool needs at least 2 connections and at most 100."""
    assert "database.max_connections: " in _config_error(
        {"database": {"max_connections": connections}}
    )


@pytest.mark.parametrize("connections", [2, 100])
def test_max_connections_at_the_bounds_is_accepted(connections: int) -> None:
    """2 and 100 connections are both valid."""
    settings = Settings.build(database={"max_connections": connections})
    assert settings.database.max_connections == connections


def test_heartbeat_more_than_half_the_lease_is_rejected() -> None:
    """A heartbeat interval above lease_duration / 2 is refused with both numbers."""
    message = _config_error({"worker": {"lease_duration": 10, "heartbeat_interval": 5.5}})
    assert "worker: " in message
    assert "heartbeat_interval (5.5 s) must be at most half of lease_duration (10 s)" in message


def test_heartbeat_exactly_half_the_lease_is_accepted() -> None:
    """heartbeat_interval == lease_duration / 2 is the largest valid heartbeat."""
    settings = Settings.build(worker={"lease_duration": 10, "heartbeat_interval": 5})
    assert settings.worker.heartbeat_interval == 5.0


def test_base_delay_above_max_delay_is_rejected() -> None:
    """worker.base_delay > worker.max_delay is refused with both numbers."""
    message = _config_error({"worker": {"base_delay": 60, "max_delay": 30}})
    assert "base_delay (60 s) must not exceed max_delay (30 s)" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("poll_interval", 0),
        ("poll_interval", 3601),
        ("lease_duration", -1),
        ("sweeper_interval", 0),
        ("shutdown_timeout", -0.1),
        ("max_attempts", 0),
        ("max_attempts", 1001),
        ("base_delay", -1),
    ],
)
def test_out_of_range_worker_values_are_rejected(key: str, value: float) -> None:
    """Zero or negative intervals and attempts outside 1..1000 are refused by key."""
    assert f"worker.{key}: " in _config_error({"worker": {key: value}})


def test_nan_durations_are_rejected() -> None:
    """NaN is not a duration."""
    assert "worker.poll_interval: " in _config_error({"worker": {"poll_interval": math.nan}})


@pytest.mark.parametrize("concurrency", [0, -1, 10_001])
def test_queue_concurrency_outside_one_to_ten_thousand_is_rejected(concurrency: int) -> None:
    """Each queue runs 1..10000 tasks at once; the error names the queue."""
    assert "queues.emails: " in _config_error({"queues": {"emails": concurrency}})


@pytest.mark.parametrize("name", ["", "-dash", "has space", "x" * 129, "nul\x00"])
def test_invalid_queue_names_in_queues_are_rejected(name: str) -> None:
    """Queue names in settings follow the same pattern as at enqueue time."""
    message = _config_error({"queues": {"default": 1, name: 1}})
    assert "queues: " in message
    assert f"invalid queue name {name!r}" in message


def test_non_postgres_url_scheme_is_rejected() -> None:
    """A mysql:// URL is refused, naming the scheme and never echoing the value."""
    message = _config_error({"database": {"url": f"mysql://app:{SECRET}@db/tasks"}})
    assert "database.url: " in message
    assert "must be a postgresql:// URL (got scheme 'mysql')" in message
    assert "db/tasks" not in message
    assert SECRET not in message


def test_every_problem_is_listed_in_one_error() -> None:
    """Independent mistakes in different sections are all reported together, one per line."""
    message = _config_error(
        {
            "database": {"max_connections": 1, "url": f"mysql://u:{SECRET}@h/db"},
            "worker": {"pol_interval": 1, "max_attempts": 0},
            "queues": {"emails": 0},
            "extra": True,
        }
    )
    assert message.startswith("invalid settings:\n  ")
    for path in (
        "database.max_connections: ",
        "database.url: ",
        "worker.pol_interval: unknown setting",
        "worker.max_attempts: ",
        "queues.emails: ",
        "extra: unknown setting",
    ):
        assert f"\n  {path}" in message, path
    assert len(message.splitlines()) == 7
    assert SECRET not in message


def test_config_error_does_not_chain_the_pydantic_error() -> None:
    """ConfigError stands alone: no ValidationError (with raw inputs) is attached."""
    with pytest.raises(ConfigError) as info:
        Settings.build(database={"url": f"mysql://u:{SECRET}@h/db"})
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# --- secrets -----------------------------------------------------------------------------


def test_dsn_is_masked_in_repr_and_str_of_settings() -> None:
    """Neither repr() nor str() of settings (or their database section) shows the password."""
    settings = Settings.build(database={"url": DSN})
    for text in (repr(settings), str(settings), repr(settings.database), str(settings.database)):
        assert SECRET not in text
        assert "db.internal" not in text
    assert SECRET not in settings.model_dump_json()


def test_dsn_does_not_leak_into_errors_about_other_settings() -> None:
    """A valid DSN next to an invalid setting is not echoed in the error."""
    message = _config_error({"database": {"url": DSN, "max_connections": 1}})
    assert SECRET not in message
    assert "db.internal" not in message


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        (DSN, "postgresql://app:***@db.internal:5432/tasks"),
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:@host/db", "postgresql://u:***@host/db"),
        (
            f"postgresql://host/db?user=u&password={SECRET}&sslmode=require",
            "postgresql://host/db?user=u&password=***&sslmode=require",
        ),
        (f"postgresql://host/db?PASSWORD={SECRET}", "postgresql://host/db?PASSWORD=***"),
        (
            f"postgresql://u:{SECRET}@h/db?password={SECRET}",
            "postgresql://u:***@h/db?password=***",
        ),
    ],
)
def test_mask_dsn_hides_passwords_in_userinfo_and_query(dsn: str, masked: str) -> None:
    """user:password@ and password= query parameters become ***; everything else stays."""
    assert mask_dsn(dsn) == masked


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app@db.internal:5432/tasks",
        "postgresql://localhost/tasks",
        "postgres://h/db?sslmode=require",
        "postgresql:///tasks?host=/run/postgresql",
    ],
)
def test_mask_dsn_leaves_passwordless_dsns_alone(dsn: str) -> None:
    """A DSN without a password is returned unchanged."""
    assert mask_dsn(dsn) == dsn


def test_mask_dsn_masks_the_password_of_a_malformed_url() -> None:
    """Masking is textual, so a URL urllib cannot parse still loses its password."""
    assert mask_dsn(f"postgresql://u:{SECRET}@[::1/db") == "postgresql://u:***@[::1/db"


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://u:pa/ss?#x@h/db", "postgresql://u:***@h/db"),
        ("host=db user=app password=hunter2 dbname=x", "host=db user=app password=*** dbname=x"),
        ("postgresql://h/db?user=u&password=hunter2", "postgresql://h/db?user=u&password=***"),
    ],
)
def test_mask_dsn_masks_passwords_in_every_form(dsn: str, masked: str) -> None:
    """Passwords with URL metacharacters, key=value DSNs and query parameters are masked."""
    assert mask_dsn(dsn) == masked


# --- immutability ------------------------------------------------------------------------


def test_settings_and_sections_are_frozen() -> None:
    """Assigning to settings or to a section raises instead of changing a running engine."""
    settings = Settings.build()
    with pytest.raises(ValidationError, match="frozen"):
        settings.worker = WorkerSettings()  # type: ignore[misc]  # must fail at runtime
    with pytest.raises(ValidationError, match="frozen"):
        settings.worker.max_attempts = 9  # type: ignore[misc]  # must fail at runtime
    with pytest.raises(ValidationError, match="frozen"):
        settings.database.max_connections = 50  # type: ignore[misc]  # must fail at runtime
    assert settings.worker.max_attempts == 3


def test_sections_validate_on_their_own() -> None:
    """DatabaseSettings and WorkerSettings reject unknown keys when built directly too."""
    with pytest.raises(ValidationError, match="extra"):
        DatabaseSettings.model_validate({"host": "x"})
    with pytest.raises(ValidationError, match="heartbeat_interval"):
        WorkerSettings(heartbeat_interval=30.0)


def test_keyword_dsn_password_is_not_echoed_in_the_scheme_error() -> None:
    """A 'host=... password=...' DSN is refused without showing its password."""
    message = _config_error({"database": {"url": f"host=db user=app password={SECRET}"}})
    assert "database.url: " in message
    assert SECRET not in message
