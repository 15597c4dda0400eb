"""The pure core: task types, statuses, retry arithmetic and validation rules.

No I/O, no trio, no clock reads; everything here is a plain value or a pure function.
"""

from iron_defer_trio.domain.limits import (
    MAX_ERROR_BYTES as MAX_ERROR_BYTES,
)
from iron_defer_trio.domain.limits import (
    MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES,
)
from iron_defer_trio.domain.operations import MAX_BULK_RETRY as MAX_BULK_RETRY
from iron_defer_trio.domain.operations import BulkRetry as BulkRetry
from iron_defer_trio.domain.retry import RetryPolicy as RetryPolicy
from iron_defer_trio.domain.retry import backoff as backoff
from iron_defer_trio.domain.status import TRANSITIONS as TRANSITIONS
from iron_defer_trio.domain.status import TaskStatus as TaskStatus
from iron_defer_trio.domain.status import can_transition as can_transition
from iron_defer_trio.domain.task import AuditEntry as AuditEntry
from iron_defer_trio.domain.task import EnqueuedTask as EnqueuedTask
from iron_defer_trio.domain.task import NewTask as NewTask
from iron_defer_trio.domain.task import PoolStatistics as PoolStatistics
from iron_defer_trio.domain.task import QueueStatistics as QueueStatistics
from iron_defer_trio.domain.task import QueueThroughput as QueueThroughput
from iron_defer_trio.domain.task import Task as Task
from iron_defer_trio.domain.task import TaskContext as TaskContext
from iron_defer_trio.domain.task import TaskLogger as TaskLogger
from iron_defer_trio.domain.task import TaskRecord as TaskRecord

__all__ = [
    "MAX_BULK_RETRY",
    "MAX_ERROR_BYTES",
    "MAX_PAYLOAD_BYTES",
    "TRANSITIONS",
    "AuditEntry",
    "BulkRetry",
    "EnqueuedTask",
    "NewTask",
    "PoolStatistics",
    "QueueStatistics",
    "QueueThroughput",
    "RetryPolicy",
    "Task",
    "TaskContext",
    "TaskLogger",
    "TaskRecord",
    "TaskStatus",
    "backoff",
    "can_transition",
]
