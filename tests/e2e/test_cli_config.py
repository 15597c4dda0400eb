"""`iron-defer-trio config validate|show` and the settings layers, through the console
script: file < profile < environment < flag, every problem listed, secrets never printed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.e2e.test_cli_migrate import assert_one_error_line, cli, cli_env, ok_json

if TYPE_CHECKING:
    from pathlib import Path

PASSWORD = "pw-Zq81-never-shown"
TOKEN = "tok-Xv42-never-shown"


def test_validate_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    """A misspelt key and a bad duration in config.toml are both reported, each with its
    path and file; a valid configuration says so and exits 0."""
    config = tmp_path / "config.toml"
    config.write_text('[worker]\npol_interval = "1s"\nlease_duration = "soon"\n')
    result = cli("config", "validate", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "error: invalid settings:"
    assert len(lines) == 3
    assert any(
        line.startswith("  worker.pol_interval: unknown setting") and str(config) in line
        for line in lines
    )
    assert any(
        line.startswith("  worker.lease_duration:") and "invalid duration 'soon'" in line
        for line in lines
    )

    config.write_text('[worker]\npoll_interval = "1s"\n')
    valid = cli("config", "validate", cwd=tmp_path)
    assert (valid.returncode, valid.stdout, valid.stderr) == (0, "configuration is valid\n", "")


def test_show_masks_the_database_password_and_the_api_token(tmp_path: Path) -> None:
    """Neither secret appears in the table or the JSON; the rest of the URL does."""
    env = cli_env(
        DATABASE_URL=f"postgresql://app:{PASSWORD}@db.internal:5432/jobs",
        IRON_DEFER__SERVER__API_TOKEN=TOKEN,
    )
    human = cli("config", "show", cwd=tmp_path, env=env)
    as_json = cli("config", "show", "--json", cwd=tmp_path, env=env)
    for result in (human, as_json):
        assert result.returncode == 0, result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        assert TOKEN not in result.stdout + result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in human.stdout.splitlines()[1:]}
    assert rows["database.url"] == [
        "postgresql://app:***@db.internal:5432/jobs",
        "env",
        "DATABASE_URL",
    ]
    assert rows["server.api_token"] == ["***", "env", "IRON_DEFER__SERVER__API_TOKEN"]
    shown = ok_json(as_json)
    assert shown["settings"]["database"]["url"] == "postgresql://app:***@db.internal:5432/jobs"
    assert shown["settings"]["server"]["api_token"] == "***"
    assert shown["origins"]["server.api_token"] == "env IRON_DEFER__SERVER__API_TOKEN"


def test_each_layer_overrides_the_one_below(database_url: str, tmp_path: Path) -> None:
    """config.toml < config.{profile}.toml < environment < --database-url, both in what
    config show reports and in which database a command really uses."""
    unreachable = "postgresql://nobody@127.0.0.1:1/nowhere"
    (tmp_path / "config.toml").write_text(
        f'[database]\nurl = "{unreachable}"\n[worker]\npoll_interval = "3s"\n'
        'max_attempts = 4\nbase_delay = "1s"\n'
    )
    (tmp_path / "config.prod.toml").write_text('[worker]\nmax_attempts = 6\nbase_delay = "2s"\n')
    env = cli_env(DATABASE_URL=database_url, IRON_DEFER__WORKER__BASE_DELAY="500ms")

    shown = ok_json(cli("--profile", "prod", "config", "show", "--json", cwd=tmp_path, env=env))
    worker, origins = shown["settings"]["worker"], shown["origins"]
    assert (worker["poll_interval"], origins["worker.poll_interval"]) == (
        3.0,
        str(tmp_path / "config.toml"),
    )
    assert (worker["max_attempts"], origins["worker.max_attempts"]) == (
        6,
        str(tmp_path / "config.prod.toml"),
    )
    assert (worker["base_delay"], origins["worker.base_delay"]) == (
        0.5,
        "env IRON_DEFER__WORKER__BASE_DELAY",
    )
    assert origins["database.url"] == "env DATABASE_URL"

    # The environment's database beats the file's unreachable one ...
    assert cli("queues", cwd=tmp_path, env=env).returncode == 0
    # ... and the flag beats the environment.
    flagged = cli("--database-url", unreachable, "queues", cwd=tmp_path, env=env)
    assert_one_error_line(flagged, 1, "cannot reach the database")
    origin = ok_json(
        cli("--database-url", unreachable, "config", "show", "--json", cwd=tmp_path, env=env)
    )["origins"]["database.url"]
    assert origin == "--database-url"
