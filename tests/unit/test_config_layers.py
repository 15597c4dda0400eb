"""The settings chain: defaults < config.toml < config.{profile}.toml < environment < flags.

Each layer is exercised on its own and against the one below it; every rejection names the
key and the layer it came from. No I/O beyond temporary config files.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from iron_defer_trio.config import load_settings
from iron_defer_trio.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

DSN = "postgresql://app:hunter2@db.internal:5432/app"


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_defaults_apply_with_no_file_no_env_no_flags(tmp_path: Path) -> None:
    """An empty directory and environment give the documented defaults."""
    loaded = load_settings(environ={}, cwd=tmp_path)
    settings = loaded.settings
    assert settings.database.url is None
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.queues == {"default": 4}
    assert settings.tasks.modules == []
    assert loaded.origin(("server", "port")) == "default"


def test_config_toml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    """config.toml sets values, including durations with units and the queue table."""
    _write(
        tmp_path,
        "config.toml",
        '[worker]\npoll_interval = "250ms"\nmax_attempts = 5\n[queues]\nemails = 10\n'
        '[tasks]\nmodules = ["app.tasks"]\n',
    )
    loaded = load_settings(environ={}, cwd=tmp_path)
    assert loaded.settings.worker.poll_interval == 0.25
    assert loaded.settings.worker.max_attempts == 5
    assert loaded.settings.queues == {"emails": 10}
    assert loaded.settings.tasks.modules == ["app.tasks"]
    assert loaded.origin(("worker", "poll_interval")).endswith("config.toml")


def test_profile_file_overrides_the_base_file_key_by_key(tmp_path: Path) -> None:
    """config.{profile}.toml wins over config.toml for the keys it sets, only those."""
    _write(tmp_path, "config.toml", "[worker]\nmax_attempts = 5\npoll_interval = 2\n")
    _write(tmp_path, "config.prod.toml", "[worker]\nmax_attempts = 9\n")
    loaded = load_settings(environ={"IRON_DEFER_PROFILE": "prod"}, cwd=tmp_path)
    assert loaded.settings.worker.max_attempts == 9
    assert loaded.settings.worker.poll_interval == 2.0
    assert loaded.origin(("worker", "max_attempts")).endswith("config.prod.toml")


def test_environment_overrides_files_and_aliases_work(tmp_path: Path) -> None:
    """IRON_DEFER__SECTION__KEY beats the files; DATABASE_URL and PORT are shortcuts."""
    _write(tmp_path, "config.toml", "[server]\nport = 9000\n[worker]\nmax_attempts = 5\n")
    loaded = load_settings(
        environ={
            "PORT": "7000",
            "DATABASE_URL": DSN,
            "IRON_DEFER__WORKER__MAX_ATTEMPTS": "8",
            "IRON_DEFER__QUEUES": "emails=10, reports=2",
            "IRON_DEFER__TASKS__MODULES": "a.tasks, b.tasks",
            "IRON_DEFER__SERVER__API_TOKEN": "t0k3n",
            "UNRELATED": "ignored",
        },
        cwd=tmp_path,
    )
    settings = loaded.settings
    assert settings.server.port == 7000
    assert settings.worker.max_attempts == 8
    assert settings.queues == {"emails": 10, "reports": 2}
    assert settings.tasks.modules == ["a.tasks", "b.tasks"]
    assert settings.dsn() == DSN
    assert settings.server.api_token is not None
    assert loaded.origin(("server", "port")) == "env PORT"


def test_flags_override_everything_and_queue_lists_are_replaced_whole(tmp_path: Path) -> None:
    """Command-line values win; a queue list from a higher layer replaces the lower one."""
    _write(tmp_path, "config.toml", "[queues]\ndefault = 4\nemails = 10\n")
    loaded = load_settings(
        environ={"IRON_DEFER__SERVER__PORT": "7000"},
        overrides={("server", "port"): 6000, ("queues",): "reports=3"},
        override_names={("server", "port"): "--port", ("queues",): "--queue"},
        cwd=tmp_path,
    )
    assert loaded.settings.server.port == 6000
    assert loaded.settings.queues == {"reports": 3}
    assert loaded.origin(("server", "port")) == "--port"


def test_explicit_config_file_and_env_config_path(tmp_path: Path) -> None:
    """--config (or IRON_DEFER_CONFIG) names the base file; it must exist."""
    path = _write(tmp_path, "custom.toml", "[server]\nport = 9100\n")
    assert load_settings(config_file=path, environ={}).settings.server.port == 9100
    assert load_settings(environ={"IRON_DEFER_CONFIG": str(path)}).settings.server.port == 9100
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.toml", environ={})


def test_every_problem_is_reported_with_its_key_and_origin(tmp_path: Path) -> None:
    """Unknown keys, bad types and impossible values from any layer are all listed."""
    _write(
        tmp_path,
        "config.toml",
        '[worker]\npol_interval = 1\nlease_duration = "ten seconds"\n[nonsense]\nx = 1\n',
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(
            environ={
                "IRON_DEFER__SERVER__PORT": "99999",
                "IRON_DEFER__QUEUES": "emails=0",
                "IRON_DEFER__DATABASE__URL": "mysql://root:pw@h/db",
            },
            overrides={("tasks", "modules"): ["not a module!"]},
            override_names={("tasks", "modules"): "--app"},
            cwd=tmp_path,
        )
    message = str(raised.value)
    expected = [
        "worker.pol_interval: unknown setting (from " + str(tmp_path / "config.toml") + ")",
        "worker.lease_duration: Value error, invalid duration 'ten seconds'",
        "nonsense: unknown setting",
        "server.port: Input should be less than or equal to 65535 "
        "(from env IRON_DEFER__SERVER__PORT)",
        "queues.emails: Input should be greater than or equal to 1 (from env IRON_DEFER__QUEUES)",
        "database.url: Value error, must be a postgresql:// URL",
        "tasks.modules: Value error, 'not a module!' is not a Python module path",
        "(from --app)",
    ]
    for fragment in expected:
        assert fragment in message
    assert "pw@" not in message


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    """A syntax error in a config file is reported with the file, not a traceback."""
    _write(tmp_path, "config.toml", "[worker\npoll_interval = 1\n")
    with pytest.raises(ConfigError, match=r"config\.toml: not valid TOML"):
        load_settings(environ={}, cwd=tmp_path)


def test_missing_profile_file_and_bad_profile_names_are_errors(tmp_path: Path) -> None:
    """A selected profile must exist (a typo would otherwise silently use the base file)."""
    with pytest.raises(ConfigError, match=r"profile 'staging' is selected but .* does not exist"):
        load_settings(environ={"IRON_DEFER_PROFILE": "staging"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=re.escape("profile '../etc'")):
        load_settings(profile="../etc", environ={}, cwd=tmp_path)


@pytest.mark.parametrize(
    "name", ["IRON_DEFER__", "IRON_DEFER__WORKER", "IRON_DEFER__A__B__C__D", "IRON_DEFER____X"]
)
def test_malformed_environment_names_are_errors(tmp_path: Path, name: str) -> None:
    """A variable with our prefix but no usable SECTION__KEY is refused, not ignored."""
    with pytest.raises(ConfigError, match="IRON_DEFER__"):
        load_settings(environ={name: "1"}, cwd=tmp_path)


def test_environment_value_under_a_scalar_setting_conflicts(tmp_path: Path) -> None:
    """IRON_DEFER__QUEUES and IRON_DEFER__QUEUES__X together cannot both apply."""
    with pytest.raises(ConfigError, match="queues"):
        load_settings(
            environ={"IRON_DEFER__QUEUES": "a=1", "IRON_DEFER__QUEUES__B": "2"}, cwd=tmp_path
        )
