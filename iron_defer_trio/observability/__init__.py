"""Logging, metrics and tracing: stable names, defined once, used by the engine and server."""

from iron_defer_trio.observability.logs import Logger as Logger
from iron_defer_trio.observability.logs import default_logger as default_logger
from iron_defer_trio.observability.metrics import Metrics as Metrics
from iron_defer_trio.observability.metrics import metrics_for as metrics_for

__all__ = ["Logger", "Metrics", "default_logger", "metrics_for"]
