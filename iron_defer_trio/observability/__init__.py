"""Logging, metrics and tracing helpers shared by the engine and the server."""

from iron_defer_trio.observability.logs import Logger as Logger
from iron_defer_trio.observability.logs import default_logger as default_logger

__all__ = ["Logger", "default_logger"]
