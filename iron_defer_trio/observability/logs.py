"""The logger type the engine uses (structlog's bound logger), injected, never global."""

from __future__ import annotations

from typing import TypeAlias

import structlog

Logger: TypeAlias = structlog.typing.FilteringBoundLogger


def default_logger() -> Logger:
    """The package logger; applications configure structlog as they like."""
    logger: Logger = structlog.get_logger("iron_defer_trio")
    return logger
