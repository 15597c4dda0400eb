"""Hostile command-line arguments and configuration values.

Rules of this file: every hostile argument or setting ends with the documented exit code (2
for bad input, or for invalid configuration met by a command; 1 when ``config validate`` finds
problems), nothing on stdout, an ``error:`` first line on stderr (a payload's field errors and a
configuration's problems add indented lines, as docs/reference/cli.md says) and never a
traceback; the database is left exactly as it was; and the database password is never echoed.
SQL metacharacters that are accepted are stored and matched verbatim. Commands run as the
installed console script against a fresh database whose URL carries a password (trust auth
ignores it). The operating system refuses NUL in arguments and environment variables, so NUL
arrives through JSON escapes, files, standard input and TOML escapes.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

from tests import pg
from tests.e2e.serving import write_tasks_module
from tests.e2e.test_cli_migrate import assert_one_error_line, cli, cli_env
from tests.hostile._support import task_count

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Mapping
    from pathlib import Path

PASSWORD = "pw-Hostile-7c2e91"
SQL_DROP = "'; DROP TABLE iron_defer.tasks; --"
SQL_META = [SQL_DROP, "%", "_", "\\", "$1", "' OR '1'='1", "a%", "_b"]


def with_password(database_url: str) -> str:
    """The test database's URL with a password in it (ignored by trust auth)."""
    scheme, _, rest = database_url.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{PASSWORD}@{host}"


def concurrently(*jobs: Callable[[], subprocess.CompletedProcess[str]]) -> list[Any]:
    """Run independent commands at the same time (each is a separate process)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda job: job(), jobs))


def failures(
    results: dict[str, subprocess.CompletedProcess[str]],
    check: Callable[[subprocess.CompletedProcess[str]], object],
) -> dict[str, str]:
    """Apply ``check`` to each named result; the names whose check failed, with why."""
    failed = {}
    for name, result in results.items():
        try:
            check(result)
        except AssertionError as exc:
            failed[name] = str(exc)[:500]
    return failed


def run_named(
    jobs: Mapping[str, Callable[[], subprocess.CompletedProcess[str]]],
) -> dict[str, subprocess.CompletedProcess[str]]:
    """:func:`concurrently`, keeping each job's name."""
    return dict(zip(jobs, concurrently(*jobs.values()), strict=True))


def refused(result: subprocess.CompletedProcess[str], code: int = 2) -> list[str]:
    """The command failed with ``code``: stdout empty, an ``error:`` line first and only
    indented lines after it, no traceback, no password. Returns the stderr lines."""
    output = result.stdout + result.stderr
    assert result.returncode == code, (result.returncode, output[-2000:])
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines, "no error message"
    assert lines[0].startswith("error: "), lines
    assert all(line.startswith("  ") for line in lines[1:]), lines
    assert "Traceback" not in output
    assert PASSWORD not in output
    return lines


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """The working directory: the e2e task module (kinds echo, fail_once, sleep) lives here."""
    return write_tasks_module(tmp_path)


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    """The command environment: this test's database, its URL carrying a password."""
    return cli_env(DATABASE_URL=with_password(database_url))


# --- submit ----------------------------------------------------------------------------------


#: name -> (submit arguments after the kind, files to create, standard input)
UNUSABLE_PAYLOADS: dict[str, tuple[list[str], dict[str, bytes], str | None]] = {
    "nul-value": (["--raw", "--payload", '{"text": "a\\u0000b"}'], {}, None),
    "nul-key": (["--raw", "--payload", '{"ke\\u0000y": 1}'], {}, None),
    "nul-nested": (["--raw", "--payload", '{"deep": [{"x": ["\\u0000"]}]}'], {}, None),
    "nul-validated": (
        ["--app", "e2e_tasks", "--payload", '{"message": "a\\u0000b"}'],
        {},
        None,
    ),
    "raw-nul-byte-in-file": (
        ["--raw", "--payload", "@nul.json"],
        {"nul.json": b'{"text": "a\x00b"}'},
        None,
    ),
    "nul-on-stdin": (["--raw", "--payload", "-"], {}, '{"text": "a\\u0000b"}'),
    "invalid-json": (["--raw", "--payload", "{bad"], {}, None),
    "empty": (["--raw", "--payload", ""], {}, None),
    "trailing-data": (["--raw", "--payload", "{} {}"], {}, None),
    "nan": (["--raw", "--payload", '{"x": NaN}'], {}, None),
    "minus-infinity": (["--raw", "--payload", '{"x": [-Infinity]}'], {}, None),
    "invalid-utf8-file": (
        ["--raw", "--payload", "@bad.json"],
        {"bad.json": b'{"text": "\xff\xfe"}'},
        None,
    ),
    "missing-file": (["--raw", "--payload", "@missing.json"], {}, None),
    "directory": (["--raw", "--payload", "@."], {}, None),
    "bom-on-stdin": (["--raw", "--payload", "-"], {}, "\ufeff{}"),
    "over-1-mib": (
        ["--raw", "--payload", "@big.json"],
        {"big.json": b'{"text": "' + b"x" * (1024 * 1024 + 1) + b'"}'},
        None,
    ),
    "field-errors": (
        ["--app", "e2e_tasks", "--payload", '{"message": 5, "x": "' + SQL_DROP + '"}'],
        {},
        None,
    ),
}


def test_submit_refuses_unusable_payloads_and_writes_nothing(
    database_url: str, env: dict[str, str], app_dir: Path
) -> None:
    """Payloads that are not JSON, hold NUL (escaped, raw, from a file or standard input), are
    too big or do not fit their class are each exit 2 with an error: line; nothing is
    written."""
    for _, files, _ in UNUSABLE_PAYLOADS.values():
        for name, content in files.items():
            (app_dir / name).write_bytes(content)
    results = run_named(
        {
            name: partial(cli, "submit", "echo", *args, cwd=app_dir, env=env, stdin=stdin)
            for name, (args, _, stdin) in UNUSABLE_PAYLOADS.items()
        }
    )
    assert failures(results, refused) == {}
    assert task_count(database_url) == 0


#: Options after ``submit echo --raw --payload {}`` (or a whole kind) that must be refused.
BAD_SUBMIT_OPTIONS: dict[str, list[str]] = {
    "priority-huge": ["--priority", str(10**30)],
    "priority-huge-negative": ["--priority", str(-(10**30))],
    "priority-just-over": ["--priority", "32768"],
    "priority-exponent": ["--priority", "1e3"],
    "priority-word": ["--priority", "abc"],
    "priority-empty": ["--priority", ""],
    "attempts-huge": ["--max-attempts", str(10**30)],
    "attempts-zero": ["--max-attempts", "0"],
    "attempts-negative": ["--max-attempts", "-5"],
    "attempts-fraction": ["--max-attempts", "1.5"],
    "attempts-just-over": ["--max-attempts", "1001"],
    "queue-sql": ["--queue", SQL_DROP],
    "queue-percent": ["--queue", "%"],
    "queue-space": ["--queue", "a b"],
    "queue-129-chars": ["--queue", "q" * 129],
    "time-sql": ["--scheduled-at", SQL_DROP],
    "time-naive": ["--scheduled-at", "2030-01-01T00:00:00"],
    "time-word": ["--scheduled-at", "yesterday"],
}
BAD_KINDS = {
    "empty": "",
    "leading-space": " echo",
    "trailing-space": "echo ",
    "256-bytes": "k" * 256,
}


def test_submit_refuses_bad_options_and_kinds_with_one_error_line(
    database_url: str, env: dict[str, str], app_dir: Path
) -> None:
    """Huge, negative, fractional and non-numeric numbers, SQL text as a queue name, garbage
    times and unusable kinds are each exit 2 with a single error: line; nothing is
    written."""
    jobs = {
        name: partial(
            cli, "submit", "echo", "--raw", "--payload", "{}", *args, cwd=app_dir, env=env
        )
        for name, args in BAD_SUBMIT_OPTIONS.items()
    }
    jobs |= {
        f"kind-{name}": partial(
            cli, "submit", kind, "--raw", "--payload", "{}", cwd=app_dir, env=env
        )
        for name, kind in BAD_KINDS.items()
    }
    results = run_named(jobs)

    def one_line(result: subprocess.CompletedProcess[str]) -> None:
        refused(result)
        assert_one_error_line(result, 2, "")

    assert failures(results, one_line) == {}
    assert task_count(database_url) == 0


def test_sql_metacharacters_are_stored_and_matched_verbatim(
    database_url: str, env: dict[str, str], app_dir: Path
) -> None:
    """SQL and LIKE metacharacters as a kind and in the payload are stored byte for byte;
    as filters they match exactly their own task, never act as wildcards, never run."""
    decoy = cli("submit", "abc", "--raw", "--queue", "q1", "--payload", "{}", cwd=app_dir, env=env)
    assert decoy.returncode == 0, decoy.stderr
    submitted = concurrently(
        *(
            partial(
                cli,
                "submit",
                meta,
                "--raw",
                "--json",
                "--payload",
                json.dumps({meta: meta, "list": [meta]}),
                cwd=app_dir,
                env=env,
            )
            for meta in SQL_META
        )
    )
    ids = {}
    for meta, result in zip(SQL_META, submitted, strict=True):
        assert result.returncode == 0, result.stderr
        task = json.loads(result.stdout)
        assert (task["kind"], task["payload"]) == (meta, {meta: meta, "list": [meta]})
        ids[meta] = task["id"]
    listed = concurrently(
        *(
            partial(cli, "tasks", "list", "--kind", meta, "--json", cwd=app_dir, env=env)
            for meta in SQL_META
        ),
        partial(cli, "tasks", "list", "--queue", "%", "--json", cwd=app_dir, env=env),
        partial(cli, "tasks", "list", "--queue", "q_", "--json", cwd=app_dir, env=env),
    )
    for meta, result in zip(SQL_META, listed[: len(SQL_META)], strict=True):
        assert result.returncode == 0, result.stderr
        assert [item["id"] for item in json.loads(result.stdout)["items"]] == [ids[meta]], meta
    for result in listed[len(SQL_META) :]:
        assert json.loads(result.stdout) == {"items": [], "nextCursor": None}
    rows = pg.fetch_sync(database_url, "SELECT id::text, kind, payload::text FROM iron_defer.tasks")
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == len(SQL_META) + 1
    for meta, task_id in ids.items():
        assert by_id[task_id]["kind"] == meta
        assert json.loads(by_id[task_id]["payload"]) == {meta: meta, "list": [meta]}


# --- tasks list / get / cancel ---------------------------------------------------------------


#: ``tasks list`` options that must be refused -> what the error line names.
BAD_LIST_OPTIONS: dict[str, tuple[list[str], str]] = {
    "limit-negative": (["--limit", "-5"], "--limit"),
    "limit-huge": (["--limit", str(10**30)], "--limit"),
    "limit-word": (["--limit", "abc"], "--limit"),
    "limit-zero": (["--limit", "0"], "--limit"),
    "limit-fraction": (["--limit", "1.5"], "--limit"),
    "limit-empty": (["--limit", ""], "--limit"),
    "status-garbage": (["--status", "garbage"], "--status"),
    "status-sql": (["--status", SQL_DROP], "--status"),
    "status-empty": (["--status", ""], "--status"),
    "cursor-garbage": (["--cursor", "garbage"], "not a task id"),
    "cursor-sql": (["--cursor", SQL_DROP], "not a task id"),
    "cursor-uuid-then-sql": (
        ["--cursor", "0190f3a2-5b7c-7d3e-8f10-2a3b4c5d6e7f' OR '1'='1"],
        "not a task id",
    ),
}


def test_tasks_list_refuses_bad_limits_statuses_and_cursors(
    env: dict[str, str], app_dir: Path
) -> None:
    """Each bad option is exit 2 with one error line naming the problem."""
    results = run_named(
        {
            name: partial(cli, "tasks", "list", *args, cwd=app_dir, env=env)
            for name, (args, _) in BAD_LIST_OPTIONS.items()
        }
    )
    failed = {}
    for name, result in results.items():
        try:
            refused(result)
            assert_one_error_line(result, 2, BAD_LIST_OPTIONS[name][1])
        except AssertionError as exc:
            failed[name] = str(exc)[:500]
    assert failed == {}


def test_tasks_get_and_cancel_refuse_sql_text_as_ids(
    database_url: str, env: dict[str, str], app_dir: Path
) -> None:
    """SQL text is not a task id: exit 2 for get and cancel alike, and the one pending task
    stays pending."""
    made = cli("submit", "abc", "--raw", "--payload", "{}", cwd=app_dir, env=env)
    assert made.returncode == 0, made.stderr
    ids = {"sql": SQL_DROP, "tautology": "1' OR '1'='1", "percent": "%", "5000-zeros": "0" * 5000}
    results = run_named(
        {
            f"{command}-{name}": partial(cli, "tasks", command, task_id, cwd=app_dir, env=env)
            for command in ("get", "cancel")
            for name, task_id in ids.items()
        }
    )

    def not_an_id(result: subprocess.CompletedProcess[str]) -> None:
        refused(result)
        assert_one_error_line(result, 2, "is not a task id")

    assert failures(results, not_an_id) == {}
    rows = pg.fetch_sync(database_url, "SELECT status FROM iron_defer.tasks")
    assert [row["status"] for row in rows] == ["pending"]


# --- pinned submit bugs ----------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--raw"], ["--app", "e2e_tasks"]], ids=["raw", "validated"])
def test_a_deeply_nested_payload_is_a_usage_error(
    database_url: str, env: dict[str, str], app_dir: Path, args: list[str]
) -> None:
    """10,000 nested arrays are bad input (exit 2), not an internal error."""
    (app_dir / "deep.json").write_text('{"message": ' + "[" * 10_000 + "]" * 10_000 + "}")
    result = cli("submit", "echo", *args, "--payload", "@deep.json", cwd=app_dir, env=env)
    refused(result)
    assert task_count(database_url) == 0


@pytest.mark.parametrize("literal", ["1e400", "-1e400"])
def test_a_payload_number_beyond_float_range_is_a_usage_error(
    database_url: str, env: dict[str, str], app_dir: Path, literal: str
) -> None:
    """A number JSON can spell but no float can hold is bad input: exit 2, nothing written."""
    payload = '{"x": ' + literal + "}"
    result = cli("submit", "echo", "--raw", "--payload", payload, cwd=app_dir, env=env)
    refused(result)
    assert task_count(database_url) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--raw", "--payload", '{"x": "\\ud800"}'],
        ["--raw", "--payload", '{"\\udfff": 1}'],
        ["--app", "e2e_tasks", "--payload", '{"message": "\\ud800"}'],
    ],
    ids=["raw-value", "raw-key", "validated"],
)
def test_a_lone_surrogate_in_a_payload_is_a_usage_error(
    database_url: str, env: dict[str, str], app_dir: Path, args: list[str]
) -> None:
    """Text that is not valid Unicode cannot be stored: exit 2, nothing written."""
    result = cli("submit", "echo", *args, cwd=app_dir, env=env)
    refused(result)
    assert task_count(database_url) == 0


@pytest.mark.parametrize("payload", ["[1, 2]", "null", '"text"', "5"])
def test_a_raw_payload_must_be_a_json_object(
    database_url: str, env: dict[str, str], app_dir: Path, payload: str
) -> None:
    """A payload that is not an object is refused (exit 2) and not stored."""
    result = cli("submit", "echo", "--raw", "--payload", payload, cwd=app_dir, env=env)
    refused(result)
    assert task_count(database_url) == 0


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z"])
def test_scheduled_at_beyond_the_calendar_is_a_usage_error(
    database_url: str, env: dict[str, str], app_dir: Path, when: str
) -> None:
    """A time the queue cannot hold exactly is bad input: exit 2, nothing written."""
    args = ("submit", "echo", "--raw", "--payload", "{}", "--scheduled-at", when)
    result = cli(*args, cwd=app_dir, env=env)
    refused(result)
    assert task_count(database_url) == 0


# --- configuration ---------------------------------------------------------------------------

#: (environment, config.toml bytes or None, the key path the error must name)
BAD_SETTINGS: list[tuple[dict[str, str], bytes | None, str]] = [
    ({"IRON_DEFER__SERVER__PORT": "abc"}, None, "server.port"),
    ({"PORT": str(10**30)}, None, "server.port"),
    ({"IRON_DEFER__DATABASE__MAX_CONNECTIONS": "-5"}, None, "database.max_connections"),
    ({"IRON_DEFER__WORKER__LEASE_DURATION": "soon"}, None, "worker.lease_duration"),
    ({"IRON_DEFER__WORKER__LEASE_DURATION": "1e400"}, None, "worker.lease_duration"),
    ({"IRON_DEFER__WORKER__POLL_INTERVAL": "nan"}, None, "worker.poll_interval"),
    ({"IRON_DEFER__WORKER__POLL_INTERVAL": "-1s"}, None, "worker.poll_interval"),
    ({"IRON_DEFER__WORKER__POL_INTERVAL": "1s"}, None, "worker.pol_interval"),
    ({"IRON_DEFER__NOSUCH__KEY": "1"}, None, "nosuch"),
    ({"IRON_DEFER__QUEUES": "a=abc,b=" + str(10**30)}, None, "queues.a"),
    ({"IRON_DEFER__OBSERVABILITY__LOG_LEVEL": "'; DROP"}, None, "observability.log_level"),
    ({"IRON_DEFER__SERVER__API_TOKEN": " \t "}, None, "server.api_token"),
    ({}, b'[server]\nport = "eighty"\n', "server.port"),
    ({}, b"[worker]\nmax_attempts = " + str(10**30).encode() + b"\n", "worker.max_attempts"),
    ({}, b"[worker]\nbogus = 1\n[nosuch]\nx = 1\n", "worker.bogus"),
    ({}, b"[worker\nfoo", "config.toml"),
    ({}, b'[server]\nhost = "\xff\xfe"\n', "config.toml"),
    ({}, b'[server]\nhost = "a\x00b"\n', "config.toml"),
    ({}, b'[tasks]\nmodules = ["e2e\\u0000tasks"]\n', "tasks.modules"),
    ({}, b'[queues]\n"a\\u0000b" = 2\n', "queues"),
    ({}, b"worker = 5\n", "worker"),
    ({}, b"[server]\napi_token = 12345\n", "server.api_token"),
    ({}, b"[worker]\nlease_duration = -1e400\n", "worker.lease_duration"),
]


def test_each_invalid_setting_stops_a_command_with_exit_2(
    database_url: str, tmp_path: Path
) -> None:
    """For each bad setting (environment or config.toml) a command refuses to run: exit 2,
    `error: invalid settings:` and a line naming the key; nothing is written; neither a
    traceback nor the password is printed."""
    jobs = {}
    for number, (extra_env, toml, _) in enumerate(BAD_SETTINGS):
        cwd = tmp_path / f"case{number}"
        cwd.mkdir()
        if toml is not None:
            (cwd / "config.toml").write_bytes(toml)
        env = cli_env(DATABASE_URL=with_password(database_url), **extra_env)
        jobs[str(number)] = partial(
            cli, "submit", "echo", "--raw", "--payload", "{}", cwd=cwd, env=env
        )
    results = run_named(jobs)
    failed = {}
    for index, result in results.items():
        case = BAD_SETTINGS[int(index)]
        try:
            lines = refused(result, 2)
            assert lines[0] == "error: invalid settings:", lines
            assert any(case[2] in line for line in lines[1:]), (case[2], lines)
        except AssertionError as exc:
            failed[str(case)] = str(exc)[:500]
    assert failed == {}
    assert task_count(database_url) == 0


def test_config_validate_lists_every_problem_with_where_it_came_from(
    database_url: str, tmp_path: Path
) -> None:
    """Many bad values at once, from the environment and config.toml: `config validate`
    exits 1 with one indented line per problem naming the key path and its origin; a file
    that cannot be parsed at all is named instead."""
    env_problems = {
        name: value
        for extra_env, toml, _ in BAD_SETTINGS[:12]
        for name, value in extra_env.items()
        if name != "PORT"  # the two port variables would hide one another
    }
    toml = (
        b'[server]\nport = "eighty"\napi_token = 12345\n'
        b"[worker]\nmax_attempts = " + str(10**30).encode() + b"\nbogus = 1\n"
        b'[tasks]\nmodules = ["e2e\\u0000tasks"]\n[nosuch]\nx = 1\n'
    )
    (tmp_path / "config.toml").write_bytes(toml)
    unparsable = {
        "syntax": b"[worker\nfoo",
        "invalid-utf8": b'[server]\nhost = "\xff\xfe"\n',
        "raw-nul": b'[server]\nhost = "a\x00b"\n',
    }
    for name, content in unparsable.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.toml").write_bytes(content)
    env = cli_env(DATABASE_URL=with_password(database_url), **env_problems)
    results = run_named(
        {
            "layers": partial(cli, "config", "validate", cwd=tmp_path, env=env),
            **{
                name: partial(cli, "config", "validate", cwd=tmp_path / name, env=cli_env())
                for name in unparsable
            },
        }
    )
    lines = refused(results["layers"], 1)
    assert lines[0] == "error: invalid settings:"
    config_path = str(tmp_path / "config.toml")
    expected = {
        "database.max_connections": "env IRON_DEFER__DATABASE__MAX_CONNECTIONS",
        "worker.lease_duration": "env IRON_DEFER__WORKER__LEASE_DURATION",
        "worker.poll_interval": "env IRON_DEFER__WORKER__POLL_INTERVAL",
        "worker.pol_interval": "env IRON_DEFER__WORKER__POL_INTERVAL",
        "nosuch": "env IRON_DEFER__NOSUCH__KEY",
        "queues.a": "env IRON_DEFER__QUEUES",
        "observability.log_level": "env IRON_DEFER__OBSERVABILITY__LOG_LEVEL",
        "server.port": "env IRON_DEFER__SERVER__PORT",
        "server.api_token": "env IRON_DEFER__SERVER__API_TOKEN",
        "worker.max_attempts": config_path,
        "worker.bogus": config_path,
        "tasks.modules": config_path,
    }
    missing = {
        key: origin
        for key, origin in expected.items()
        if not any(line.startswith(f"  {key}:") and origin in line for line in lines)
    }
    assert missing == {}, lines
    for name in unparsable:
        file_lines = refused(results[name], 1)
        assert any(str(tmp_path / name / "config.toml") in line for line in file_lines)


def test_a_dsn_with_a_foreign_scheme_is_refused_without_echoing_its_password(
    tmp_path: Path,
) -> None:
    """mysql://user:password@... is an invalid setting from the environment, the flag and
    config.toml alike; the password never shows, not even in `config show`."""
    dsn = f"mysql://app:{PASSWORD}@db.internal:3306/app"
    jobs = {}
    for where in ("env", "flag", "toml"):
        cwd = tmp_path / where
        cwd.mkdir()
        env = cli_env(DATABASE_URL=dsn) if where == "env" else cli_env()
        flag = ["--database-url", dsn] if where == "flag" else []
        if where == "toml":
            (cwd / "config.toml").write_text(f'[database]\nurl = "{dsn}"\n')
        for command in (["config", "validate"], ["queues"], ["config", "show"]):
            jobs[f"{where}: {' '.join(command)}"] = partial(cli, *flag, *command, cwd=cwd, env=env)
    results = run_named(jobs)

    def names_the_url(result: subprocess.CompletedProcess[str]) -> None:
        code = 1 if result.args[-1] == "validate" else 2
        lines = refused(result, code)
        assert any("database.url" in line and "postgresql://" in line for line in lines), lines

    assert failures(results, names_the_url) == {}


def test_an_unreachable_database_never_echoes_its_password(app_dir: Path) -> None:
    """Connection failures name the problem in one line, without the URL's password."""
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nowhere"
    result = cli("--database-url", dsn, "queues", cwd=app_dir, env=cli_env())
    assert_one_error_line(result, 1, "cannot reach the database")
    assert PASSWORD not in result.stderr


# --- pinned configuration bugs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra_env", "toml"),
    [
        ({"IRON_DEFER__WORKER__LEASE_DURATION": str(10**29) + "d"}, None),
        ({}, b"[worker]\nlease_duration = 1e300\n"),
        ({"IRON_DEFER__WORKER__MAX_DELAY": str(10**29) + "d"}, None),
    ],
    ids=["env-lease", "toml-lease", "env-max-delay"],
)
def test_durations_beyond_any_clock_are_refused(
    app_dir: Path, extra_env: dict[str, str], toml: bytes | None
) -> None:
    """A duration no timestamp can hold is an impossible value: `config validate` exit 1."""
    if toml is not None:
        (app_dir / "config.toml").write_bytes(toml)
    result = cli("config", "validate", cwd=app_dir, env=cli_env(**extra_env))
    refused(result, 1)


def test_a_dsn_with_a_non_numeric_port_is_an_invalid_setting(
    database_url: str, app_dir: Path
) -> None:
    """A URL that cannot be connected to as written is refused up front, without echoing the
    password: `config validate` exit 1, commands exit 2."""
    env = cli_env(DATABASE_URL=f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/x")
    validate, queues = concurrently(
        partial(cli, "config", "validate", cwd=app_dir, env=env),
        partial(cli, "queues", cwd=app_dir, env=env),
    )
    refused(validate, 1)
    refused(queues, 2)


def test_a_toml_boolean_is_not_an_integer_setting(app_dir: Path) -> None:
    """`max_attempts = true` is a wrong type: `config validate` exit 1 naming the key."""
    (app_dir / "config.toml").write_text("[worker]\nmax_attempts = true\n")
    result = cli("config", "validate", cwd=app_dir, env=cli_env())
    lines = refused(result, 1)
    assert any("worker.max_attempts" in line for line in lines)
