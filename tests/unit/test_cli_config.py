"""Pins `config validate` and `config show` in-process: task modules are part of validation,
every setting is shown exactly once, durations read back in the syntax settings accept, and an
invalid configuration is a usage error for `show` but the answer (exit 1) for `validate`."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

import pytest

from iron_defer_trio import cli
from iron_defer_trio.cli._config import _duration
from iron_defer_trio.config import Settings

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory and an environment without settings."""
    for name in list(os.environ):
        if name in {"DATABASE_URL", "PORT"} or name.startswith("IRON_DEFER"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_task_classes adds the cwd
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.run_cli(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_imports_the_task_modules(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module that does not import makes the configuration invalid (serve would fail)."""
    (workdir / "config.toml").write_text('[tasks]\nmodules = ["cli_cfg_missing_module"]\n')
    code, out, err = _run(capsys, "config", "validate")
    assert (code, out) == (1, "")
    assert "cannot import 'cli_cfg_missing_module'" in err


def test_validate_takes_the_global_options(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config names the file; a named file that does not exist is a problem, exit 1."""
    (workdir / "elsewhere.toml").write_text("[server]\nport = 70000\n")
    code, _, err = _run(capsys, "--config", "elsewhere.toml", "config", "validate")
    assert code == 1
    assert "server.port: Input should be less than or equal to 65535" in err
    code, _, err = _run(capsys, "--config", "absent.toml", "config", "validate")
    assert code == 1
    assert "absent.toml does not exist" in err


def test_show_lists_every_setting_once(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The table's keys are exactly the settings model's leaves, defaults marked as such."""
    code, out, _ = _run(capsys, "config", "show")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    expected: list[str] = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            expected.extend(f"{name}.{key}" for key in annotation.model_fields)
        else:
            expected.append(name)
    assert [row[0] for row in rows] == expected
    assert {row[-1] for row in rows} == {"default"}


def test_show_of_an_invalid_configuration_is_a_usage_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only `validate` answers 1 for a bad configuration; other commands refuse with 2."""
    (workdir / "config.toml").write_text("[wroker]\n")
    code, out, err = _run(capsys, "config", "show")
    assert (code, out) == (2, "")
    assert err.splitlines()[1].startswith("  wroker: unknown setting")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (5.0, "5s"), (90.0, "90s"), (1800.0, "30m"), (7200.0, "2h"), (0.0, "0s")],
)
def test_durations_read_back_in_settings_syntax(seconds: float, text: str) -> None:
    """What config show prints can be pasted back into config.toml."""
    assert _duration(seconds) == text


_SCHEDULES = """
[tasks]
modules = ["cli_cfg_periodic_tasks"]

[[periodic.schedules]]
cron = "30 6 * * *"
kind = "digest"
payload = {audience = "ops"}
timezone = "Europe/Berlin"
"""

_TASKS = """
from typing import ClassVar

import iron_defer_trio as iron_defer


class Digest(iron_defer.Task):
    KIND: ClassVar[str] = "digest"
    audience: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None
"""


def test_show_prints_periodic_schedules_as_json_objects(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Schedule tables come out as the JSON objects IRON_DEFER__PERIODIC__SCHEDULES takes."""
    (workdir / "config.toml").write_text(_SCHEDULES)
    code, out, _ = _run(capsys, "config", "show", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["settings"]["periodic"]["schedules"] == [
        {
            "cron": "30 6 * * *",
            "kind": "digest",
            "payload": {"audience": "ops"},
            "timezone": "Europe/Berlin",
            "missed": "run_once",
        }
    ]
    assert shown["origins"]["periodic.schedules"].endswith("config.toml")


def test_validate_checks_the_kinds_and_payloads_of_schedules(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A schedule whose kind no task module registers, or whose payload its class refuses,
    makes the configuration invalid; a fitting one is valid."""
    (workdir / "cli_cfg_periodic_tasks.py").write_text(_TASKS)
    (workdir / "config.toml").write_text(_SCHEDULES)
    assert _run(capsys, "config", "validate")[:2] == (0, "configuration is valid\n")
    (workdir / "config.toml").write_text(_SCHEDULES.replace('kind = "digest"', 'kind = "dijest"'))
    code, _, err = _run(capsys, "config", "validate")
    assert code == 1
    assert "periodic.schedules[0]: no task class is registered for kind 'dijest'" in err
    (workdir / "config.toml").write_text(_SCHEDULES.replace("audience", "audiense"))
    code, _, err = _run(capsys, "config", "validate")
    assert code == 1
    assert "periodic.schedules[0]: the payload does not fit 'digest'" in err
