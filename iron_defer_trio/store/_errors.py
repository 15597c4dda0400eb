"""Translate driver and socket errors into the StoreError family, once, at the bridge."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg

from iron_defer_trio.errors import IdempotencyConflict, IronDeferError, StoreError, StoreUnavailable

if TYPE_CHECKING:
    from types import TracebackType

#: Raised by iron_defer.idempotency_conflict() (migration 0004), details as JSON.
IDEMPOTENCY_CONFLICT = "IDK09"
#: SQLSTATEs meaning "the server cannot serve you now", not "your statement is wrong":
#: connection exceptions (08), admin/crash shutdown and startup (57P0x), too many connections.
_UNAVAILABLE_PREFIXES = ("08", "57P", "53300")


def is_unavailable_sqlstate(sqlstate: str | None) -> bool:
    """True when PostgreSQL's error code says the database is unreachable or restarting."""
    return sqlstate is not None and sqlstate.startswith(_UNAVAILABLE_PREFIXES)


def translate(exc: BaseException) -> IronDeferError | None:
    """The StoreError for a driver/OS error, or None if ``exc`` is not one we translate
    (an idempotency key reused for other work is an :class:`IdempotencyConflict`).

    Messages keep PostgreSQL's primary text and code but drop DETAIL (it may quote row values,
    i.e. task payloads) and never include the DSN.
    """
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = exc.sqlstate
        if sqlstate == IDEMPOTENCY_CONFLICT:
            holder = json.loads(exc.detail or "{}")
            return IdempotencyConflict(holder["queue"], holder["key"], UUID(holder["task_id"]))
        message = f"database error {sqlstate}: {exc.args[0] if exc.args else type(exc).__name__}"
        if is_unavailable_sqlstate(sqlstate):
            return StoreUnavailable(f"database unavailable ({message})", sqlstate=sqlstate)
        return StoreError(message, sqlstate=sqlstate)
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return StoreError(f"invalid database configuration: {exc}")
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        # asyncpg raises these for a connection closed under it ("connection is closed",
        # "cannot perform operation: another operation is in progress" after a reset).
        return StoreUnavailable(f"database connection lost ({exc})")
    if isinstance(exc, TimeoutError):
        return StoreUnavailable("database did not answer in time (connect, pool or statement)")
    if isinstance(exc, OSError):
        return StoreUnavailable(f"cannot reach the database ({exc.strerror or exc})")
    return None


class _MapDbErrors:
    """The context manager of :func:`map_db_errors`: a plain class, since every store
    statement enters one and a generator-based one costs ~3 us more each time."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not isinstance(exc, Exception):
            return  # no error, or a BaseException (cancellation, exit) to pass through
        translated = translate(exc)
        if translated is None or translated is exc:
            return
        raise translated from exc


_MAP_DB_ERRORS = _MapDbErrors()


def map_db_errors() -> _MapDbErrors:
    """Re-raise driver and socket errors as StoreError subclasses (``from`` the original)."""
    return _MAP_DB_ERRORS
