"""Logging: the logger type the engine uses, and the JSON set-up of ``serve``.

The library never configures logging by itself (an embedding application owns that; without
any configuration it logs at info and above); the server does, with
:func:`configure_json_logging`.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias

import structlog

if TYPE_CHECKING:
    from collections.abc import MutableMapping

Logger: TypeAlias = structlog.typing.FilteringBoundLogger


def default_logger() -> Logger:
    """The package logger; applications configure structlog as they like.

    When structlog is not configured at all, its defaults print every level: an application
    that never set logging up would get a debug line per task enqueued, claimed and
    completed. Such an application gets info and above instead (with structlog's default
    output); any ``structlog.configure`` call, before the engine starts, takes over fully.
    """
    if structlog.is_configured():
        logger: Logger = structlog.get_logger("iron_defer_trio")
        return logger
    unconfigured: Logger = structlog.wrap_logger(
        None,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory_args=("iron_defer_trio",),
    )
    return unconfigured


def debug_enabled(log: Logger) -> bool:
    """Whether ``log`` emits debug events (True when it cannot tell). Lets hot paths skip
    building the fields of per-task debug events nobody will see."""
    check = getattr(log, "is_enabled_for", None)
    return True if check is None else bool(check(logging.DEBUG))


#: A password in a URL's user info (``scheme://user:password@host``).
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):[^@\s/]*@")
#: ``password=...`` in a DSN query or a libpq key=value string.
_PARAM_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('[^']*'|[^&\s]*)")


def mask_secrets(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask database passwords in every string value of an event
    (error messages from drivers may quote a connection string)."""
    for key, value in event.items():
        if isinstance(value, str) and ("@" in value or "assword" in value):
            masked = _URL_PASSWORD.sub(r"\1:***@", value)
            event[key] = _PARAM_PASSWORD.sub(r"\1***", masked)
    return event


def configure_json_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """One JSON object per line on ``stream`` (stdout), for structlog and stdlib loggers
    (hypercorn, asyncpg) alike. Tracebacks are rendered as structured data without local
    variables, so payloads and secrets in locals never reach the log."""
    out = stream or sys.stdout
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_secrets,
    ]
    renderer = structlog.processors.JSONRenderer()
    exceptions = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), exceptions, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exceptions,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Third-party debug output (asyncpg, hypercorn) stays at INFO even when ours is DEBUG.
    root.setLevel(max(numeric, logging.INFO))
