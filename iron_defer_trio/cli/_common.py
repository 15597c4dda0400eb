"""What every command shares: the global options, loading settings, running one coroutine,
printing records, and the single translation of errors into exit codes and one-line messages.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple
from urllib.parse import unquote, urlsplit
from uuid import UUID

import structlog
import trio
import typer
from pydantic import ValidationError

from iron_defer_trio._api import open_engine, with_running_embedded_database
from iron_defer_trio.config import load_settings
from iron_defer_trio.errors import (
    ConfigError,
    CountChanged,
    IdempotencyConflict,
    InvalidTaskError,
    InvalidTransition,
    IronDeferError,
    StoreError,
    TaskNotFound,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    from iron_defer_trio import Engine, Task
    from iron_defer_trio.config import LoadedSettings, Settings
    from iron_defer_trio.http._schemas import TaskOut

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class ExitCode(IntEnum):
    """The process exit codes of every command (documented in docs/reference/cli.md)."""

    OK = 0
    #: The database is unavailable or has no schema, or something unexpected failed.
    FAILURE = 1
    #: Bad usage, invalid input (payload, ids, dates) or invalid configuration.
    USAGE = 2
    #: The task does not exist.
    NOT_FOUND = 3
    #: The task exists but is not in a status that allows the change (e.g. it is running), or
    #: a bulk retry's confirmed count no longer matches.
    CONFLICT = 4
    #: Interrupted with Ctrl-C (the shell's convention, 128 + SIGINT).
    INTERRUPTED = 130


class CliError(Exception):
    """A problem the command already phrased for the user, with its exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


NO_DATABASE = (
    "no database: pass --database-url or set DATABASE_URL (or database.url in config.toml), "
    "or start `iron-defer-trio serve`, whose private database commands then use"
)
NO_SCHEMA = "the database has no iron-defer schema; run `iron-defer-trio migrate`"
#: PostgreSQL's undefined_table and invalid_schema_name: the schema was never migrated.
_MISSING_SCHEMA_SQLSTATES = frozenset({"42P01", "3F000"})
#: The database URL's key; its password is never printed (config show masks it with mask_dsn).
DSN_KEY = ("database", "url")
#: Where secrets may come from before settings validate (an invalid configuration still
#: must not leak them through an error message).
_DSN_ENV = ("DATABASE_URL", "IRON_DEFER__DATABASE__URL")
_TOKEN_ENV = "IRON_DEFER__SERVER__API_TOKEN"
#: ``password=...`` in a URL query or a libpq key=value DSN.
_PASSWORD_PARAM = re.compile(r"(?i)\bpassword\s*=\s*('[^']*'|[^&\s]*)")


@dataclass
class CliState:
    """The global options, shared with every command through ``ctx.obj``.

    It also remembers every secret it has seen, so the error handler can scrub them from
    messages it did not write itself (driver errors, unexpected exceptions).
    """

    config_file: str | None = None
    profile: str | None = None
    database_url: str | None = None
    secrets: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, ctx: typer.Context) -> CliState:
        """The state of this invocation (a fresh one when a command runs without ``main``)."""
        root = ctx.find_root()
        if not isinstance(root.obj, CliState):
            root.obj = cls()
        state: CliState = root.obj
        return state

    def load(
        self,
        overrides: Mapping[tuple[str, ...], Any] | None = None,
        names: Mapping[tuple[str, ...], str] | None = None,
        *,
        database_url: str | None = None,
    ) -> LoadedSettings:
        """Settings from every layer, with the command line on top.

        ``database_url`` is a command's own ``--database-url``; it beats the global one.
        """
        every: dict[tuple[str, ...], Any] = {}
        every_name: dict[tuple[str, ...], str] = {}
        url = database_url or self.database_url
        if url:
            self.remember_dsn(url)
            every[DSN_KEY] = url
            every_name[DSN_KEY] = "--database-url"
        every.update(overrides or {})
        every_name.update(names or {})
        for name in _DSN_ENV:
            self.remember_dsn(os.environ.get(name, ""))
        if token := os.environ.get(_TOKEN_ENV, "").strip():
            self.secrets.add(token)
        loaded = load_settings(
            config_file=self.config_file,
            profile=self.profile,
            overrides=every,
            override_names=every_name,
        )
        self.remember(loaded.settings)
        return loaded

    def remember(self, settings: Settings) -> None:
        """Note the secrets of ``settings`` for :meth:`redact`."""
        if settings.database.url is not None:
            self.remember_dsn(settings.database.url.get_secret_value())
        if settings.server.api_token is not None:
            self.secrets.add(settings.server.api_token.get_secret_value())

    def remember_dsn(self, dsn: str) -> None:
        """Note the password of ``dsn``: a URL's user info or any ``password=`` parameter."""
        try:
            candidates = [urlsplit(dsn).password or ""]
        except ValueError:  # not a URL (a libpq key=value DSN, or garbage)
            candidates = []
        candidates.extend(match.strip("'") for match in _PASSWORD_PARAM.findall(dsn))
        for candidate in candidates:
            if candidate:
                self.secrets.update({candidate, unquote(candidate)})

    def redact(self, text: str) -> str:
        """``text`` with every remembered secret replaced by ``***``."""
        # Longest first, so a secret containing another is replaced whole.
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def require_database(settings: Settings) -> Settings:
    """Commands that talk to the database need one: the configured URL, else the private
    database of a running ``serve`` (only ``serve`` starts one)."""
    settings = with_running_embedded_database(settings)
    if settings.database.url is None:
        raise CliError(NO_DATABASE, ExitCode.USAGE)
    return settings


def database_settings(ctx: typer.Context) -> Settings:
    """The settings of a command that only needs the database."""
    return require_database(CliState.of(ctx).load().settings)


def open_producer(
    settings: Settings, tasks: Iterable[type[Task]] = ()
) -> AbstractAsyncContextManager[Engine]:
    """An engine that enqueues and reads but runs nothing; commands never migrate."""
    return open_engine(settings, tasks=tasks, run_workers=False, migrate=False)


def run(fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """Run one coroutine function under trio, with the engine's logs kept off stdout."""
    previous = structlog.get_config()
    _quiet_logs()
    try:
        return trio.run(fn, *args)
    finally:
        # Leave the process as found: run() is also called in-process by tests and tools.
        structlog.configure(**previous)


def _quiet_logs() -> None:
    # Unconfigured structlog prints every event to stdout, which would corrupt the output a
    # script reads (a task id, JSON). Commands report outcomes themselves; only warnings and
    # errors from the engine are worth a line, and they belong on stderr.
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.KeyValueRenderer(key_order=["level", "event"]),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


# --- errors -------------------------------------------------------------------------------


def describe(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and message (without the ``error:`` prefix) for an exception."""
    exc = _unwrap(exc)
    if isinstance(exc, CliError):
        return exc.code, exc.message
    if isinstance(exc, TaskNotFound):
        return ExitCode.NOT_FOUND, str(exc)
    if isinstance(exc, InvalidTransition | IdempotencyConflict | CountChanged):
        return ExitCode.CONFLICT, str(exc)
    if isinstance(exc, ConfigError | InvalidTaskError):
        return ExitCode.USAGE, str(exc)
    if isinstance(exc, ValidationError):
        return ExitCode.USAGE, format_field_errors(exc, f"invalid {exc.title}")
    if isinstance(exc, StoreError) and exc.sqlstate in _MISSING_SCHEMA_SQLSTATES:
        return ExitCode.FAILURE, NO_SCHEMA
    if isinstance(exc, IronDeferError):
        return ExitCode.FAILURE, str(exc)
    detail = str(exc).strip().splitlines()
    return ExitCode.FAILURE, (
        f"internal error ({type(exc).__name__}"
        + (f": {detail[0]}" if detail else "")
        + "); please report it"
    )


def _unwrap(exc: BaseException) -> BaseException:
    # trio nurseries group exceptions; one real failure inside a group is that failure.
    while isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        if len(leaves) != 1:
            return exc
        exc = leaves[0]
    return exc


def format_field_errors(exc: ValidationError, headline: str, *, prefix: str = "") -> str:
    """``headline:`` then one ``path: message`` line per problem (input values left out)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        parts = [prefix] if prefix else []
        path = ".".join([*parts, *(str(part) for part in error["loc"])])
        lines.append(f"{path or '(value)'}: {error['msg']}")
    return f"{headline}:\n  " + "\n  ".join(lines)


# --- input --------------------------------------------------------------------------------


def parse_task_id(value: str) -> UUID:
    """A task id, or a usage error that says so."""
    try:
        return UUID(value.strip())
    except ValueError:
        raise CliError(
            f"{value!r} is not a task id (expected a UUID such as "
            "0190f3a2-5b7c-7d3e-8f10-2a3b4c5d6e7f)"
        ) from None


def parse_timestamp(value: str, option: str) -> datetime:
    """An RFC 3339 timestamp with its timezone; naive times are refused (ambiguous)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(
            f"{option} {value!r} is not an RFC 3339 timestamp (e.g. 2030-01-31T09:00:00Z)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise CliError(
            f"{option} {value!r} has no timezone; add one, e.g. {value.strip()}Z or "
            f"{value.strip()}+02:00"
        )
    return parsed


def read_json(source: str, option: str) -> Any:
    """JSON from a literal, ``@path`` (a file) or ``-`` (standard input)."""
    if source == "-":
        text, where = sys.stdin.read(), f"{option}: standard input"
    elif source.startswith("@"):
        path = Path(source[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise CliError(f"{option}: cannot read {path}: {reason}") from None
        where = f"{option}: {path}"
    else:
        text, where = source, option
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise CliError(f"{where} is nested too deeply") from None
    except ValueError as exc:
        raise CliError(f"{where} is not valid JSON ({exc})") from None


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and PostgreSQL's jsonb refuses them.
    raise ValueError(f"{name} is not allowed in JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to infinity, which JSON cannot carry: it would be stored as null.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# --- output -------------------------------------------------------------------------------


def echo(text: str = "") -> None:
    """One line (or block) on stdout."""
    typer.echo(text)


def echo_error(message: str) -> None:
    """``error: message`` on stderr."""
    typer.echo(f"error: {message}", err=True)


def print_json(value: Any) -> None:
    """A JSON document on stdout (indented: readable, and still one ``jq`` away)."""
    echo(json.dumps(value, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Plain-text columns separated by two spaces, headers first."""
    cells = [list(headers), *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _cell(value: str) -> str:
    # One row per record: a newline inside a value (an error message) would break columns.
    return value.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")


def timestamp(value: datetime | None, *, precise: bool = False) -> str:
    """UTC, RFC 3339 with ``Z``; whole seconds in tables, full precision in detail views."""
    if value is None:
        return "-"
    utc = value.astimezone(UTC)
    text = utc.isoformat(timespec="auto" if precise else "seconds")
    return text.replace("+00:00", "Z")


def task_rows(tasks: Iterable[TaskOut]) -> str:
    """The task table of ``tasks list``."""
    return table(
        ["ID", "QUEUE", "KIND", "STATUS", "ATTEMPTS", "PRIORITY", "SCHEDULED_AT", "CREATED_AT"],
        [
            [
                str(task.id),
                task.queue,
                task.kind,
                task.status.value,
                f"{task.attempts}/{task.max_attempts}",
                str(task.priority),
                timestamp(task.scheduled_at),
                timestamp(task.created_at),
            ]
            for task in tasks
        ],
    )


def task_detail(task: TaskOut) -> str:
    """One task as a two-column table of fields (``tasks get``)."""
    rows = [
        ("id", str(task.id)),
        ("queue", task.queue),
        ("kind", task.kind),
        ("status", task.status.value),
        ("priority", str(task.priority)),
        ("attempts", f"{task.attempts}/{task.max_attempts}"),
        ("payload", json.dumps(task.payload, ensure_ascii=False)),
        ("last_error", "-" if task.last_error is None else task.last_error),
        ("scheduled_at", timestamp(task.scheduled_at, precise=True)),
        ("created_at", timestamp(task.created_at, precise=True)),
        ("updated_at", timestamp(task.updated_at, precise=True)),
        ("started_at", timestamp(task.started_at, precise=True)),
        ("finished_at", timestamp(task.finished_at, precise=True)),
        ("claimed_by", "-" if task.claimed_by is None else str(task.claimed_by)),
        ("claimed_until", timestamp(task.claimed_until, precise=True)),
        ("idempotency_key", "-" if task.idempotency_key is None else task.idempotency_key),
        ("attempt_timeout", "-" if task.attempt_timeout is None else f"{task.attempt_timeout:g}s"),
        (
            "checkpoint",
            "-" if task.checkpoint is None else json.dumps(task.checkpoint, ensure_ascii=False),
        ),
        ("suspended_at", timestamp(task.suspended_at, precise=True)),
        (
            "signal_payload",
            "-"
            if task.signal_payload is None
            else json.dumps(task.signal_payload, ensure_ascii=False),
        ),
        ("cancel_requested_at", timestamp(task.cancel_requested_at, precise=True)),
    ]
    return table(["FIELD", "VALUE"], rows)
