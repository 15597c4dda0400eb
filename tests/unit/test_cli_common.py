"""Pins the CLI's input parsing, its one translation of errors into exit codes and one-line
messages, secret scrubbing, and the behaviour of commands that fail before any database is
involved (run in-process through ``run_cli``: the console script's exact code path)."""

from __future__ import annotations

import io
import json
import os
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING
from uuid import UUID

import pytest
import structlog
import trio
from pydantic import BaseModel, ValidationError

from iron_defer_trio import __version__, cli
from iron_defer_trio.cli import _common, _tasks
from iron_defer_trio.cli._common import (
    NO_SCHEMA,
    CliError,
    CliState,
    ExitCode,
    describe,
    parse_task_id,
    parse_timestamp,
    read_json,
    table,
    timestamp,
)
from iron_defer_trio.errors import (
    ConfigError,
    EngineCrashed,
    InvalidTaskError,
    InvalidTransition,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
    UnknownTaskKind,
)
from iron_defer_trio.observability import default_logger

if TYPE_CHECKING:
    from pathlib import Path

TASK_ID = "0190f3a2-5b7c-7d3e-8f10-2a3b4c5d6e7f"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No settings from the developer's environment or working directory leak in."""
    for name in list(os.environ):
        if name == "DATABASE_URL" or name == "PORT" or name.startswith("IRON_DEFER"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_task_classes adds the cwd
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.run_cli(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --- parsing ------------------------------------------------------------------------------


def test_task_ids_are_uuids() -> None:
    """Any UUID spelling is accepted; anything else is a usage error naming the value."""
    assert parse_task_id(f" {TASK_ID.upper()} ") == UUID(TASK_ID)
    with pytest.raises(CliError) as info:
        parse_task_id("42")
    assert info.value.code == ExitCode.USAGE
    assert "'42' is not a task id" in info.value.message


def test_timestamps_need_a_timezone() -> None:
    """RFC 3339 with Z or an offset parses; a naive or unparsable time is a usage error."""
    assert parse_timestamp("2030-01-31T09:00:00Z", "--at") == datetime(2030, 1, 31, 9, tzinfo=UTC)
    plus_two = parse_timestamp("2030-01-31T09:00:00+02:00", "--at")
    assert plus_two.utcoffset() == timedelta(hours=2)
    with pytest.raises(CliError, match="has no timezone"):
        parse_timestamp("2030-01-31T09:00:00", "--at")
    with pytest.raises(CliError, match="not an RFC 3339 timestamp"):
        parse_timestamp("next tuesday", "--at")


def test_json_comes_from_a_literal_a_file_or_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``@path`` reads a file and ``-`` reads standard input; anything else is JSON text."""
    (tmp_path / "p.json").write_text('{"to": "file"}', encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"to": "stdin"}'))
    assert read_json('{"to": "literal"}', "--payload") == {"to": "literal"}
    assert read_json(f"@{tmp_path / 'p.json'}", "--payload") == {"to": "file"}
    assert read_json("-", "--payload") == {"to": "stdin"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{oops", "--payload is not valid JSON"),
        ('{"x": NaN}', "NaN is not allowed"),
        ("@/nonexistent/p.json", "cannot read /nonexistent/p.json"),
    ],
)
def test_bad_json_is_a_usage_error(source: str, expected: str) -> None:
    """Bad JSON, NaN (jsonb refuses it) and unreadable files are exit 2 with the reason."""
    with pytest.raises(CliError) as info:
        read_json(source, "--payload")
    assert info.value.code == ExitCode.USAGE
    assert expected in info.value.message


# --- error translation --------------------------------------------------------------------


class _Model(BaseModel):
    to: str


def _validation_error() -> ValidationError:
    try:
        _Model.model_validate({"to": 1})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (CliError("x", ExitCode.USAGE), ExitCode.USAGE),
        (ConfigError("bad"), ExitCode.USAGE),
        (InvalidTaskError("bad"), ExitCode.USAGE),
        (UnknownTaskKind("k"), ExitCode.USAGE),
        (_validation_error(), ExitCode.USAGE),
        (TaskNotFound(TASK_ID), ExitCode.NOT_FOUND),
        (InvalidTransition(TASK_ID, "running", "cancel"), ExitCode.CONFLICT),
        (StoreUnavailable("cannot reach the database"), ExitCode.FAILURE),
        (StoreError("boom", sqlstate="23505"), ExitCode.FAILURE),
        (EngineCrashed("bug"), ExitCode.FAILURE),
        (RuntimeError("surprise"), ExitCode.FAILURE),
    ],
)
def test_every_error_has_its_exit_code(error: BaseException, code: ExitCode) -> None:
    """The documented table: 2 usage/input/config, 3 not found, 4 conflict, 1 the rest."""
    assert describe(error)[0] == code


@pytest.mark.parametrize("sqlstate", ["42P01", "3F000"])
def test_a_missing_schema_says_to_migrate(sqlstate: str) -> None:
    """Undefined table or schema means the database was never migrated: say what to run."""
    assert describe(StoreError("relation does not exist", sqlstate=sqlstate)) == (
        ExitCode.FAILURE,
        NO_SCHEMA,
    )


def test_a_single_failure_inside_exception_groups_is_that_failure() -> None:
    """Nursery groups are unwrapped when they hold one real error (cancellations ignored)."""
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [TaskNotFound(TASK_ID)])])
    assert describe(group)[0] == ExitCode.NOT_FOUND


def test_unexpected_errors_are_one_line_naming_the_type() -> None:
    """No traceback and no multi-line dump, even when the message has several lines."""
    code, message = describe(ValueError("first line\nsecond line"))
    assert code == ExitCode.FAILURE
    assert message == "internal error (ValueError: first line); please report it"


def test_field_errors_are_listed_one_per_line() -> None:
    """Validation problems are one ``path: message`` line each, without the input values."""
    message = _common.format_field_errors(_validation_error(), "bad payload", prefix="payload")
    assert message.splitlines() == ["bad payload:", "  payload.to: Input should be a valid string"]


def test_secrets_are_scrubbed_from_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passwords (URL user info, encoded or not; password= parameters of URLs and libpq
    strings) and the API token from the environment, even before settings validate."""
    monkeypatch.setenv("IRON_DEFER__SERVER__API_TOKEN", "tok:1234")
    monkeypatch.setenv("DATABASE_URL", "host=db password='lib pq'")
    state = CliState()
    state.remember_dsn("postgresql://app:p%40ss@db/x?password=other")
    with pytest.raises(ConfigError):
        state.load()  # the libpq form is not accepted, but its password is remembered
    text = "p@ss p%40ss other tok:1234 lib pq app db"
    assert state.redact(text) == "*** *** *** *** *** app db"


# --- output helpers -----------------------------------------------------------------------


def test_tables_align_columns_and_keep_one_line_per_row() -> None:
    """Columns are padded to the widest cell; newlines inside a cell are escaped."""
    rendered = table(["A", "LONGER"], [["xyz", "1"], ["q", "two\nlines"]])
    assert rendered.splitlines() == ["A    LONGER", "xyz  1", "q    two\\nlines"]


def test_timestamps_print_in_utc_with_z() -> None:
    """Whatever the input zone, output is UTC; tables drop sub-seconds, details keep them."""
    value = datetime(2030, 1, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert timestamp(value) == "2030-01-01T09:00:00Z"
    assert timestamp(value, precise=True) == "2030-01-01T09:00:00.123456Z"
    assert timestamp(None) == "-"


# --- commands that fail before the database -----------------------------------------------


def test_usage_errors_are_one_line_with_exit_2(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Click's usage errors are reformatted to one ``error:`` line pointing at --help."""
    code, out, err = _run(capsys, "submit", "send_email")
    assert code == ExitCode.USAGE
    assert out == ""
    assert err == ("error: Missing option '--payload'. (see 'iron-defer-trio submit --help')\n")


def test_a_bad_task_id_is_exit_2(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before settings or the database are touched."""
    for command in ("get", "cancel"):
        code, _, err = _run(capsys, "tasks", command, "not-a-uuid")
        assert code == ExitCode.USAGE
        assert err.startswith("error: 'not-a-uuid' is not a task id")
    code, _, err = _run(capsys, "tasks", "list", "--cursor", "zzz")
    assert (code, err.count("\n")) == (ExitCode.USAGE, 1)


def test_the_list_limit_is_bounded(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--limit accepts 1..500, like the REST API's page size."""
    for limit in ("0", "501"):
        code, _, err = _run(capsys, "tasks", "list", "--limit", limit)
        assert code == ExitCode.USAGE
        assert "--limit" in err


def test_no_database_is_a_usage_error(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every database command says how to name a database."""
    for args in (["tasks", "list"], ["queues"], ["submit", "k", "--raw", "--payload", "{}"]):
        code, _, err = _run(capsys, *args)
        assert code == ExitCode.USAGE
        assert err.startswith("error: no database: pass --database-url or set DATABASE_URL")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--payload", "{nope"], "--payload is not valid JSON"),
        (["--payload", "{}", "--scheduled-at", "2030-01-01T09:00:00"], "has no timezone"),
        (["--payload", "{}", "--scheduled-at", "soon"], "not an RFC 3339 timestamp"),
    ],
)
def test_bad_submit_input_is_exit_2(
    clean_env: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    """Bad JSON and bad or naive datetimes are one clear line, before any connection."""
    code, out, err = _run(capsys, "submit", "k", "--raw", *args)
    assert code == ExitCode.USAGE
    assert out == ""
    assert expected in err
    assert err.count("\n") == 1


def test_submit_without_task_modules_explains_raw(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to validate against: the error says so and points at --app and --raw."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    code, _, err = _run(capsys, "submit", "send_email", "--payload", "{}")
    assert code == ExitCode.USAGE
    assert "cannot validate the payload of 'send_email'" in err
    assert "--app MODULE" in err
    assert "--raw" in err
    assert "unvalidated" in err


def test_submit_of_an_unknown_kind_names_it_and_the_known_ones(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kind is checked against the imported modules before connecting."""
    (clean_env / "cli_unit_tasks_a.py").write_text(_TASK_MODULE, encoding="utf-8")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    code, _, err = _run(
        capsys, "submit", "send_emial", "--app", "cli_unit_tasks_a", "--payload", "{}"
    )
    assert code == ExitCode.USAGE
    assert "unknown task kind 'send_emial'" in err
    assert "cli_unit_tasks_a" in err
    assert "'send_email'" in err


def test_a_broken_task_module_is_exit_2(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import error in --app is reported in one line, not as the module's traceback."""
    (clean_env / "cli_unit_tasks_broken.py").write_text("import nope_nope\n", encoding="utf-8")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    code, _, err = _run(capsys, "submit", "k", "--app", "cli_unit_tasks_broken", "--payload", "{}")
    assert code == ExitCode.USAGE
    assert "cannot import 'cli_unit_tasks_broken'" in err
    assert err.count("\n") == 1


def test_an_unexpected_exception_is_one_line_and_exit_1(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug still ends in one line on stderr, with any secret scrubbed."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter22@127.0.0.1:1/none")

    def explode(*_: object) -> None:
        raise RuntimeError("kaboom with hunter22 inside")

    monkeypatch.setattr(_tasks, "run", explode)
    code, out, err = _run(capsys, "tasks", "list")
    assert code == ExitCode.FAILURE
    assert out == ""
    assert err == "error: internal error (RuntimeError: kaboom with *** inside); please report it\n"


def test_keyboard_interrupt_is_exit_130(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during a command ends it with the shell's convention, no traceback."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_tasks, "run", interrupt)
    code, _, err = _run(capsys, "tasks", "list")
    assert code == ExitCode.INTERRUPTED
    assert "Traceback" not in err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """The one command that needs no settings at all."""
    assert _run(capsys, "version") == (0, f"{__version__}\n", "")


def test_run_keeps_engine_logs_off_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """Info events (task_enqueued ...) would corrupt a script's output; warnings go to
    stderr; the process's logging configuration is restored afterwards."""
    before = structlog.get_config()

    async def log_some() -> None:
        await trio.lowlevel.checkpoint()
        default_logger().info("task_enqueued", task_id=TASK_ID)
        default_logger().warning("something_odd")

    _common.run(log_some)
    out, err = capsys.readouterr()
    assert out == ""
    assert "task_enqueued" not in err
    assert "something_odd" in err
    assert structlog.get_config() == before


_TASK_MODULE = """
from typing import ClassVar
import iron_defer_trio as iron_defer

class SendEmail(iron_defer.Task):
    KIND: ClassVar[str] = "send_email"
    to: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        pass
"""


def test_json_output_is_parseable(capsys: pytest.CaptureFixture[str]) -> None:
    """print_json writes one JSON document (non-ASCII kept readable)."""
    _common.print_json({"kind": "émail"})
    assert json.loads(capsys.readouterr().out) == {"kind": "émail"}
