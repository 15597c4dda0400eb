"""The engine: trio nursery tree of queue workers, heartbeat, completer, listener, sweeper.

Talks to persistence only through :class:`~iron_defer_trio.store.protocol.TaskStore`.
"""

from iron_defer_trio.engine._engine import Engine as Engine
from iron_defer_trio.engine._engine import EngineState as EngineState
from iron_defer_trio.engine._engine import EngineStatistics as EngineStatistics
from iron_defer_trio.engine._engine import run_engine as run_engine
from iron_defer_trio.engine._periodic import PeriodicResult as PeriodicResult
from iron_defer_trio.engine._periodic import PeriodicScheduler as PeriodicScheduler
from iron_defer_trio.engine._periodic import configured_tasks as configured_tasks
from iron_defer_trio.engine._registry import TaskRegistry as TaskRegistry
from iron_defer_trio.engine._sweeper import Sweeper as Sweeper
from iron_defer_trio.engine._sweeper import SweepResult as SweepResult
from iron_defer_trio.engine._transaction import Transaction as Transaction
from iron_defer_trio.engine._worker import QueueWorkerStatistics as QueueWorkerStatistics

__all__ = [
    "Engine",
    "EngineState",
    "EngineStatistics",
    "PeriodicResult",
    "PeriodicScheduler",
    "QueueWorkerStatistics",
    "SweepResult",
    "Sweeper",
    "TaskRegistry",
    "Transaction",
    "configured_tasks",
    "run_engine",
]
