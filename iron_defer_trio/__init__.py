"""iron-defer-trio: a durable background task queue for trio, backed by PostgreSQL alone.

Define tasks as pydantic models, enqueue them, and have them executed at least once, even
across crashes::

    import iron_defer_trio as iron_defer

    class SendEmail(iron_defer.Task):
        KIND: ClassVar[str] = "send_email"
        to: str

        async def execute(self, ctx: iron_defer.TaskContext) -> None: ...

    async with iron_defer.open_engine(dsn, tasks=[SendEmail]) as engine:
        await engine.enqueue("default", SendEmail(to="a@b.c"))
"""

import contextlib

from iron_defer_trio._api import migrate as migrate
from iron_defer_trio._api import open_engine as open_engine
from iron_defer_trio._process import tune_garbage_collector as tune_garbage_collector
from iron_defer_trio._version import __version__ as __version__
from iron_defer_trio.config import DatabaseSettings as DatabaseSettings
from iron_defer_trio.config import Settings as Settings
from iron_defer_trio.config import WorkerSettings as WorkerSettings
from iron_defer_trio.domain import AuditEntry as AuditEntry
from iron_defer_trio.domain import BulkRetry as BulkRetry
from iron_defer_trio.domain import EnqueuedTask as EnqueuedTask
from iron_defer_trio.domain import QueueStatistics as QueueStatistics
from iron_defer_trio.domain import RetryPolicy as RetryPolicy
from iron_defer_trio.domain import Task as Task
from iron_defer_trio.domain import TaskContext as TaskContext
from iron_defer_trio.domain import TaskRecord as TaskRecord
from iron_defer_trio.domain import TaskStatus as TaskStatus
from iron_defer_trio.domain.periodic import Periodic as Periodic
from iron_defer_trio.domain.periodic import PeriodicSchedule as PeriodicSchedule
from iron_defer_trio.engine import Engine as Engine
from iron_defer_trio.engine import EngineState as EngineState
from iron_defer_trio.engine import EngineStatistics as EngineStatistics
from iron_defer_trio.engine import QueueWorkerStatistics as QueueWorkerStatistics
from iron_defer_trio.engine import Transaction as Transaction
from iron_defer_trio.errors import ConfigError as ConfigError
from iron_defer_trio.errors import CountChanged as CountChanged
from iron_defer_trio.errors import EngineClosed as EngineClosed
from iron_defer_trio.errors import EngineCrashed as EngineCrashed
from iron_defer_trio.errors import IdempotencyConflict as IdempotencyConflict
from iron_defer_trio.errors import InvalidTaskError as InvalidTaskError
from iron_defer_trio.errors import InvalidTransition as InvalidTransition
from iron_defer_trio.errors import IronDeferError as IronDeferError
from iron_defer_trio.errors import MigrationError as MigrationError
from iron_defer_trio.errors import RetryAfter as RetryAfter
from iron_defer_trio.errors import StoreError as StoreError
from iron_defer_trio.errors import StoreUnavailable as StoreUnavailable
from iron_defer_trio.errors import TaskError as TaskError
from iron_defer_trio.errors import TaskNotFound as TaskNotFound
from iron_defer_trio.errors import UnknownTaskKind as UnknownTaskKind

__all__ = [
    "AuditEntry",
    "BulkRetry",
    "ConfigError",
    "CountChanged",
    "DatabaseSettings",
    "Engine",
    "EngineClosed",
    "EngineCrashed",
    "EngineState",
    "EngineStatistics",
    "EnqueuedTask",
    "IdempotencyConflict",
    "InvalidTaskError",
    "InvalidTransition",
    "IronDeferError",
    "MigrationError",
    "Periodic",
    "PeriodicSchedule",
    "QueueStatistics",
    "QueueWorkerStatistics",
    "RetryAfter",
    "RetryPolicy",
    "Settings",
    "StoreError",
    "StoreUnavailable",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskNotFound",
    "TaskRecord",
    "TaskStatus",
    "Transaction",
    "UnknownTaskKind",
    "WorkerSettings",
    "__version__",
    "migrate",
    "open_engine",
    "tune_garbage_collector",
]

# Show the public path in reprs, tracebacks and docs (iron_defer_trio.Task, not
# iron_defer_trio.domain.task.Task).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("iron_defer_trio."):
        with contextlib.suppress(AttributeError, TypeError):  # some objects refuse
            _obj.__module__ = __name__
del _name, _obj
