"""The engine: producer API, and the nursery tree of workers and services.

::

    run_engine(...)                     async context manager, owns everything below
      services nursery
        completer    writes attempt outcomes in batches
        heartbeat    renews the leases of tasks this engine runs
        listener     LISTEN/NOTIFY -> wakes queue workers
        sweeper      recovers expired leases (any engine's)
        periodic     enqueues the cron schedules' tasks, one per fire time across engines
        workers nursery
          queue "default": claim loop + nursery of running tasks (CapacityLimiter)
          queue "emails":  ...

Shutdown (block exit or :meth:`Engine.stop`): stop claiming; running tasks may finish until
``shutdown_timeout``; the rest are cancelled through their cancel scopes and handed back as
pending; outcomes are written; every row still running under this engine's id is released;
then the services stop. If the surrounding scope is cancelled instead, the same release runs
shielded, so nothing stays ``running`` under a dead engine id after a clean exit either way.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, overload
from uuid import UUID

import trio
from opentelemetry.trace import SpanKind

from iron_defer_trio.domain import (
    MAX_BULK_RETRY,
    AuditEntry,
    BulkRetry,
    EnqueuedTask,
    NewTask,
    QueueStatistics,
    QueueThroughput,
    Task,
    TaskRecord,
    TaskStatus,
)
from iron_defer_trio.domain.limits import (
    id_prefix_range,
    validate_idempotency_key,
    validate_kind,
    validate_max_attempts,
    validate_payload_json,
    validate_priority,
    validate_queue_name,
    validate_region,
    validate_scheduled_at,
    validate_timeout,
)
from iron_defer_trio.engine._arguments import dedupe_keys, split_queue_and_task
from iron_defer_trio.engine._completer import Completer
from iron_defer_trio.engine._health import DatabaseHealth
from iron_defer_trio.engine._heartbeat import Heartbeat
from iron_defer_trio.engine._inflight import InFlight
from iron_defer_trio.engine._listener import NotificationListener
from iron_defer_trio.engine._periodic import PeriodicScheduler, resolve_schedules
from iron_defer_trio.engine._sweeper import Sweeper
from iron_defer_trio.engine._transaction import Transaction
from iron_defer_trio.engine._worker import QueueWorker, QueueWorkerStatistics
from iron_defer_trio.errors import (
    ConfigError,
    CountChanged,
    EngineClosed,
    InvalidTaskError,
    InvalidTransition,
    StoreError,
    TaskNotFound,
)
from iron_defer_trio.observability import tracing
from iron_defer_trio.observability.logs import Logger, debug_enabled, default_logger
from iron_defer_trio.observability.metrics import Metrics, metrics_for

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
    from datetime import datetime

    from opentelemetry.trace import Tracer
    from pydantic import JsonValue

    from iron_defer_trio.config import Settings
    from iron_defer_trio.domain.periodic import Periodic, PeriodicSchedule
    from iron_defer_trio.engine._registry import TaskRegistry
    from iron_defer_trio.store.protocol import (
        FinishResult,
        Outcome,
        StoreTransaction,
        TaskStore,
    )

#: Shielded time allowed at the very end of a shutdown to hand back leftover leases.
RELEASE_TIMEOUT = 5.0
#: Largest page ``Engine.list`` and ``Engine.audit_log`` return.
MAX_LIST_LIMIT = 1000
#: How often wait_until_idle re-checks; short, since it only runs in tests and scripts.
_IDLE_POLL = 0.01


class EngineState(StrEnum):
    """Lifecycle of an engine."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """A snapshot of an engine, from memory (no database query)."""

    worker_id: UUID
    state: EngineState
    #: One entry per queue this engine works on (empty for a producer-only engine).
    queues: tuple[QueueWorkerStatistics, ...]
    #: Tasks leased by this engine: running, or finished with the outcome not yet written.
    in_flight: int
    #: Outcomes waiting to be written.
    outcome_backlog: int
    #: False between a failed database call and the next successful one.
    database_available: bool
    #: True while the LISTEN session is connected.
    listening: bool


class Engine:
    """A running iron-defer-trio engine. Get one from :func:`iron_defer_trio.open_engine`.

    Producer methods (enqueue, get, list, cancel, queue_stats) work whether or not this engine
    runs workers. Every method that talks to the database is a checkpoint and raises
    :class:`~iron_defer_trio.StoreUnavailable` when it cannot be reached (nothing is written).
    """

    def __init__(
        self,
        store: TaskStore,
        *,
        registry: TaskRegistry,
        settings: Settings,
        queues: Mapping[str, int],
        log: Logger | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.worker_id: UUID = uuid.uuid4()
        self.settings = settings
        self.registry = registry
        self._store = store
        self._rng = rng or random.Random()
        self._log = (log or default_logger()).bind(worker_id=str(self.worker_id))
        self._metrics = metrics or metrics_for()
        self._tracer = tracer or tracing.get_tracer()
        self._log_payload = settings.observability.log_payload
        self._task_counts: dict[str, dict[str, int]] | None = None
        self._state = EngineState.STARTING
        self._stop_requested = trio.Event()
        self._stopped = trio.Event()
        self._run_workers = False
        self._written = 0
        self._inflight = InFlight()
        self._health = DatabaseHealth(self._log)
        self._completer = Completer(
            store,
            self.worker_id,
            self._inflight,
            self._health,
            self._log,
            self._rng,
            self._outcome_written,
        )
        self._heartbeat = Heartbeat(
            store,
            self.worker_id,
            self._inflight,
            self._health,
            self._log,
            self._rng,
            interval=settings.worker.heartbeat_interval,
            lease=settings.worker.lease_duration,
        )
        self._sweeper = Sweeper(
            store,
            self._health,
            self._log,
            self._rng,
            interval=settings.worker.sweeper_interval,
            metrics=self._metrics,
            worker_id=self.worker_id,
            idempotency_retention=settings.worker.idempotency_retention,
            suspend_timeout=settings.worker.suspend_timeout,
            retention={
                TaskStatus.COMPLETED: settings.retention.completed,
                TaskStatus.FAILED: settings.retention.failed,
                TaskStatus.CANCELLED: settings.retention.cancelled,
            },
            retention_batch=settings.retention.batch_size,
        )
        self._listener = NotificationListener(
            store,
            self._health,
            self._log,
            self._rng,
            wake=self._wake,
            wake_all=self._wake_all,
            cancel=self._cancel_announced,
        )
        self._workers = {
            name: QueueWorker(
                validate_queue_name(name),
                concurrency,
                store=store,
                registry=registry,
                worker_id=self.worker_id,
                inflight=self._inflight,
                completer=self._completer,
                health=self._health,
                settings=settings.worker,
                log=self._log,
                rng=self._rng,
                metrics=self._metrics,
                tracer=self._tracer,
                log_payload=self._log_payload,
            )
            for name, concurrency in queues.items()
        }
        self._periodic: PeriodicScheduler | None = None

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        """Where the engine is in its life."""
        return self._state

    @property
    def queues(self) -> tuple[str, ...]:
        """Queues this engine's workers claim from (empty for a producer-only engine)."""
        return tuple(self._workers) if self._run_workers else ()

    def stop(self) -> None:
        """Begin a graceful shutdown (idempotent, returns at once).

        Claiming stops; running tasks get ``worker.shutdown_timeout`` seconds to finish. The
        ``open_engine`` block's exit waits for the shutdown to complete.
        """
        if self._state is EngineState.RUNNING:
            self._state = EngineState.DRAINING
        self._stop_requested.set()

    async def wait_stopped(self) -> None:
        """Wait until the shutdown has completed."""
        await self._stopped.wait()

    def statistics(self) -> EngineStatistics:
        """A snapshot of this engine's state and counters (no I/O)."""
        return EngineStatistics(
            worker_id=self.worker_id,
            state=self._state,
            queues=tuple(w.statistics() for w in self._workers.values())
            if self._run_workers
            else (),
            in_flight=len(self._inflight),
            outcome_backlog=self._completer.backlog,
            database_available=self._health.available,
            listening=self._listener.connected,
        )

    async def wait_until_idle(self, *, include_scheduled: bool = False) -> None:
        """Wait until none of this engine's queues has a due task it could run, and nothing
        runs here (or waits to have its outcome written). Tasks of paused queues and tasks
        pinned to another region are not work this engine could run.

        Meant for tests and scripts ("enqueue, then wait for the work to be done"); put it
        under a ``trio.fail_after``. With ``include_scheduled=True``, future-scheduled tasks
        (including retries waiting for their backoff) are made due at once, repeatedly, so
        every task runs to a final status.

        Raises:
            ConfigError: this engine runs no workers (``run_workers=False``).
        """
        if not self._run_workers:
            raise ConfigError("wait_until_idle needs an engine that runs workers")
        queues = list(self._workers)
        kinds = list(self.registry.kinds)
        while True:
            self._check_open()
            # Read the activity before making tasks due: an outcome written after make_due
            # (a retry scheduled in the future) must show as activity, not pass as idle.
            before = self._activity()
            if include_scheduled:
                await self._store.make_due(queues)
            if before is not None:
                due = await self._store.count_due(queues, kinds, region=self.settings.worker.region)
                # Idle only if nothing was claimed or written while we counted: a task that
                # ran meanwhile may have enqueued more work after the count's snapshot.
                if due == 0 and self._activity() == before:
                    return
            self._wake_all()
            await trio.sleep(_IDLE_POLL)

    def _activity(self) -> int | None:
        """A counter of claims and written outcomes, or None while anything is in flight."""
        busy = (
            len(self._inflight) > 0
            or self._completer.backlog > 0
            or any(worker.claiming for worker in self._workers.values())
        )
        if busy:
            return None
        return self._written + sum(worker.claimed for worker in self._workers.values())

    def _check_open(self) -> None:
        if self._state is EngineState.STOPPED:
            raise EngineClosed("the engine is stopped; open a new one with open_engine()")

    def _wake(self, queue: str) -> None:
        worker = self._workers.get(queue)
        if worker is not None and self._run_workers:
            worker.wake()

    def _wake_all(self) -> None:
        if self._run_workers:
            for worker in self._workers.values():
                worker.wake()

    def _cancel_announced(self, task_id: str) -> None:
        """A cancel request for a running task was announced: stop its handler if it runs
        here (most announcements are for tasks other engines run)."""
        try:
            the_id = UUID(task_id)
        except ValueError:
            return  # not ours: someone else's NOTIFY on the channel
        self._inflight.request_cancel(the_id, self._log, via="notification")

    def _outcome_written(self, outcome: Outcome, result: FinishResult | None) -> None:
        self._written += 1
        if result is None:
            # Fenced: the lease had been taken over (expired and recovered) before the write.
            self._log.warning(
                "outcome_refused",
                task_id=str(outcome.task_id),
                attempt=outcome.attempt,
                outcome=outcome.kind.value,
            )

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run workers and services until :meth:`stop`, then shut down gracefully."""
        self._run_workers = True
        gauges = _GaugeSource(self)
        self._metrics.add_source(gauges)
        try:
            async with trio.open_nursery() as services:
                services.start_soon(self._refresh_task_counts)
                await services.start(self._completer.run)
                await services.start(self._heartbeat.run)
                await services.start(self._listener.run)
                await services.start(self._sweeper.run)
                if self._periodic is not None:
                    await services.start(self._periodic.run)
                async with trio.open_nursery() as workers:
                    for worker in self._workers.values():
                        await workers.start(worker.run)
                    self._state = EngineState.RUNNING
                    self._log.info(
                        "engine_started",
                        queues={
                            name: w.statistics().concurrency for name, w in self._workers.items()
                        },
                        kinds=list(self.registry.kinds),
                    )
                    task_status.started()
                    await self._stop_requested.wait()
                    self._begin_drain()
                    for worker in self._workers.values():
                        worker.drain(trio.current_time() + self.settings.worker.shutdown_timeout)
                # Every task ended; write their outcomes (the completer retries while the
                # database is unavailable, within the same grace period).
                with trio.move_on_after(max(self.settings.worker.shutdown_timeout, 1.0)):
                    await self._completer.wait_idle()
                services.cancel_scope.cancel()
        finally:
            self._metrics.remove_source(gauges)
            await self._release_leftovers()

    async def _refresh_task_counts(self) -> None:
        # The pending/running gauges read this cache: a scrape never queries the database.
        while True:
            try:
                fresh = await self._store.active_counts()
            except StoreError as exc:
                self._health.failed("gauges", exc)
            else:
                # A queue that emptied reports 0 rather than vanishing from the gauges (a
                # missing series reads as "no data", not as "idle").
                known = set(self._workers) | set(self._task_counts or {}) | set(fresh)
                self._task_counts = {
                    queue: {
                        "pending": fresh.get(queue, {}).get("pending", 0),
                        "running": fresh.get(queue, {}).get("running", 0),
                    }
                    for queue in known
                }
            await trio.sleep(self.settings.observability.gauge_interval)

    def _begin_drain(self) -> None:
        self._state = EngineState.DRAINING
        self._log.info(
            "engine_draining",
            running=len(self._inflight),
            shutdown_timeout=self.settings.worker.shutdown_timeout,
        )

    async def _release_leftovers(self) -> None:
        # Shielded: this also runs when the surrounding scope was cancelled, and it is what
        # guarantees no row stays running under this engine's id after it exits.
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT) as scope:
            try:
                released = await self._store.release_worker(self.worker_id)
            except StoreError as exc:
                self._log.error(
                    "release_failed",
                    error=str(exc),
                    consequence="the sweeper will recover these tasks once their lease expires",
                )
            else:
                for task_id, status in released.items():
                    if status is TaskStatus.CANCELLED:
                        self._log.info("task_cancelled", task_id=str(task_id), reason="requested")
                    else:
                        self._log.warning("task_released", task_id=str(task_id), reason="shutdown")
        if scope.cancelled_caught:
            self._log.error("release_failed", error="timed out")

    # --- producer API --------------------------------------------------------------------

    def _prepare(
        self,
        queue: str | None,
        task: Task,
        *,
        priority: int | None,
        scheduled_at: datetime | None,
        max_attempts: int | None,
        idempotency_key: str | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
        options_by_class: dict[type[Task], _TaskOptions] | None = None,
    ) -> NewTask:
        """A task ready to store. ``options_by_class`` (one call's cache) lets the tasks of a
        bulk enqueue share the validation of their class's options."""
        options = None if options_by_class is None else options_by_class.get(type(task))
        if options is None:
            options = self._task_options(
                task,
                queue,
                priority=priority,
                scheduled_at=scheduled_at,
                max_attempts=max_attempts,
                attempt_timeout=attempt_timeout,
                region=region,
            )
            if options_by_class is not None:
                options_by_class[type(task)] = options
        return self._new_task(task, options, idempotency_key)

    def _task_options(
        self,
        task: Task,
        queue: str | None,
        *,
        priority: int | None,
        scheduled_at: datetime | None,
        max_attempts: int | None,
        attempt_timeout: float | None,
        region: str | None,
    ) -> _TaskOptions:
        """What a task's class and the call's options make of every task of that class,
        validated (the same for each task of a class within one call)."""
        if not isinstance(task, Task):
            raise InvalidTaskError(f"expected a Task instance, got {type(task).__name__}")
        kind = self.registry.kind_of(task)
        cls = type(task)
        return _TaskOptions(
            queue=validate_queue_name(queue or cls.QUEUE or "default"),
            kind=kind,
            priority=validate_priority(cls.PRIORITY if priority is None else priority),
            max_attempts=validate_max_attempts(
                max_attempts
                if max_attempts is not None
                else cls.MAX_ATTEMPTS or self.settings.worker.max_attempts
            ),
            scheduled_at=validate_scheduled_at(scheduled_at),
            attempt_timeout=validate_timeout(
                cls.ATTEMPT_TIMEOUT if attempt_timeout is None else attempt_timeout
            ),
            region=self._allowed_region(cls.REGION if region is None else region),
        )

    @staticmethod
    def _new_task(task: Task, options: _TaskOptions, idempotency_key: str | None) -> NewTask:
        try:
            payload_json = task.model_dump_json()
        except ValueError as exc:  # pydantic's serialisation errors are ValueErrors
            raise InvalidTaskError(f"the payload cannot be encoded as JSON: {exc}") from None
        validate_payload_json(payload_json)
        return NewTask(
            queue=options.queue,
            kind=options.kind,
            payload_json=payload_json,
            priority=options.priority,
            max_attempts=options.max_attempts,
            scheduled_at=options.scheduled_at,
            idempotency_key=validate_idempotency_key(idempotency_key),
            attempt_timeout=options.attempt_timeout,
            region=options.region,
        )

    def _allowed_region(self, region: str | None) -> str | None:
        """``region`` if it is a valid label the producer may pin tasks to."""
        validate_region(region)
        allowed = self.settings.producer.allowed_regions
        if region is not None and allowed and region not in allowed:
            raise InvalidTaskError(
                f"region {region!r} is not allowed (producer.allowed_regions: {', '.join(allowed)})"
            )
        return region

    @overload
    async def enqueue(
        self,
        queue: str,
        task: Task,
        /,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> EnqueuedTask: ...

    @overload
    async def enqueue(
        self,
        task: Task,
        /,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> EnqueuedTask: ...

    async def enqueue(
        self,
        queue_or_task: str | Task,
        task: Task | None = None,
        /,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> EnqueuedTask:
        """Store a task for execution and wake a worker of its queue.

        Call as ``enqueue("emails", SendEmail(...))`` or ``enqueue(SendEmail(...))`` (the
        class's ``QUEUE``, else ``"default"``).

        Args:
            priority: higher runs first (-32768..32767); default the class's ``PRIORITY``.
            scheduled_at: timezone-aware earliest start; default now (database clock).
            max_attempts: attempts before failing for good; default the class's
                ``MAX_ATTEMPTS``, else ``worker.max_attempts``.
            idempotency_key: 1-255 characters naming this piece of work (an order id, a
                request id). While a task of the queue holds the key, and for
                ``worker.idempotency_retention`` after it finished, enqueuing the same work
                with the key returns that task (``created`` False) instead of a new one.
            attempt_timeout: seconds an attempt may run before it fails as timed out (and
                is retried like any failure); default the class's ``ATTEMPT_TIMEOUT``, else
                no limit.
            region: pin the task to a region: only engines whose ``worker.region`` is this
                label run it; default the class's ``REGION``, else unpinned (any engine).

        Returns:
            The stored task; ``created`` is False when the key returned an existing task.

        Raises:
            UnknownTaskKind: the task's class is not registered with this engine.
            InvalidTaskError: a bad queue name, priority, max_attempts, scheduled_at,
                idempotency key, region (or one outside ``producer.allowed_regions``) or an
                oversized payload. Nothing was written.
            IdempotencyConflict: the key belongs to a task with another kind or payload.
                Nothing was written.
            StoreUnavailable: the database cannot be reached. Nothing was written.
        """
        queue, the_task = split_queue_and_task(queue_or_task, task)
        new = self._prepare(
            queue,
            the_task,
            priority=priority,
            scheduled_at=scheduled_at,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            attempt_timeout=attempt_timeout,
            region=region,
        )
        (record,) = await self._store_new([new])
        self._enqueued(record)
        return record

    @overload
    async def enqueue_many(
        self,
        queue: str,
        tasks: Sequence[Task],
        /,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> builtins.list[EnqueuedTask]: ...

    @overload
    async def enqueue_many(
        self,
        tasks: Sequence[Task],
        /,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> builtins.list[EnqueuedTask]: ...

    async def enqueue_many(
        self,
        queue_or_tasks: str | Sequence[Task],
        tasks: Sequence[Task] | None = None,
        /,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> builtins.list[EnqueuedTask]:
        """Store many tasks in one statement (one round trip, one transaction: all or none).

        Options apply to every task; tasks may be of different kinds. ``idempotency_keys``,
        when given, has one key (or None) per task, as for :meth:`enqueue`. Returns the
        records in the order given. Raises like :meth:`enqueue`; nothing is written on any
        error (an :class:`IdempotencyConflict` undoes the whole batch).
        """
        prepared = self._prepare_many(
            queue_or_tasks,
            tasks,
            priority=priority,
            scheduled_at=scheduled_at,
            max_attempts=max_attempts,
            idempotency_keys=idempotency_keys,
            attempt_timeout=attempt_timeout,
            region=region,
        )
        records = await self._store_new(prepared)
        self._enqueued(*records)
        return records

    def _prepare_many(
        self,
        queue_or_tasks: str | Sequence[Task],
        tasks: Sequence[Task] | None,
        *,
        priority: int | None,
        scheduled_at: datetime | None,
        max_attempts: int | None,
        idempotency_keys: Sequence[str | None] | None,
        attempt_timeout: float | None = None,
        region: str | None = None,
    ) -> builtins.list[NewTask]:
        if isinstance(queue_or_tasks, str):
            queue: str | None = queue_or_tasks
            batch = tasks
        else:
            queue, batch = None, queue_or_tasks
        given: object = batch
        if given is None or isinstance(given, Task | str):
            raise InvalidTaskError("enqueue_many takes a sequence of tasks")
        assert batch is not None
        keys: Sequence[str | None] = (
            [None] * len(batch) if idempotency_keys is None else idempotency_keys
        )
        if isinstance(keys, str) or len(keys) != len(batch):
            raise InvalidTaskError("idempotency_keys needs one key (or None) per task")
        # Options are validated once per task class, not once per task: in a bulk enqueue
        # that was a third of the engine's time.
        by_class: dict[type[Task], _TaskOptions] = {}
        return [
            self._prepare(
                queue,
                item,
                priority=priority,
                scheduled_at=scheduled_at,
                max_attempts=max_attempts,
                idempotency_key=key,
                attempt_timeout=attempt_timeout,
                region=region,
                options_by_class=by_class,
            )
            for item, key in zip(batch, keys, strict=True)
        ]

    async def enqueue_payload(
        self,
        queue: str | None,
        kind: str,
        payload: JsonValue,
        *,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        attempt_timeout: float | None = None,
        region: str | None = None,
        validate: bool = True,
    ) -> EnqueuedTask:
        """Enqueue by kind and JSON payload, for callers without the Task class at hand (the
        REST API, the CLI).

        With ``validate`` (the default) the payload must fit the registered class of ``kind``
        and is stored as that class serialises it, exactly as :meth:`enqueue` would. With
        ``validate=False`` it is stored as given, for kinds registered only with other
        engines; engines that do not know the kind never claim it.

        Raises:
            UnknownTaskKind: ``validate`` and no class is registered for ``kind``.
            pydantic.ValidationError: the payload does not fit the class (field errors).
            InvalidTaskError, StoreUnavailable: as for :meth:`enqueue`.
        """
        if validate:
            cls = self.registry.get(kind)
            task = cls.model_validate(payload)
            return await self.enqueue(
                queue or cls.QUEUE or "default",
                task,
                priority=priority,
                scheduled_at=scheduled_at,
                max_attempts=max_attempts,
                idempotency_key=idempotency_key,
                attempt_timeout=attempt_timeout,
                region=region,
            )
        if not isinstance(payload, dict):
            raise InvalidTaskError(
                f"the payload must be a JSON object (a task's fields), got {type(payload).__name__}"
            )
        try:
            payload_json = json.dumps(payload, ensure_ascii=False, allow_nan=False)
        except (ValueError, RecursionError) as exc:
            raise InvalidTaskError(f"the payload cannot be encoded as JSON: {exc}") from None
        validate_payload_json(payload_json)
        new = NewTask(
            queue=validate_queue_name(queue or "default"),
            kind=validate_kind(kind),
            payload_json=payload_json,
            priority=validate_priority(0 if priority is None else priority),
            max_attempts=validate_max_attempts(
                self.settings.worker.max_attempts if max_attempts is None else max_attempts
            ),
            scheduled_at=validate_scheduled_at(scheduled_at),
            idempotency_key=validate_idempotency_key(idempotency_key),
            attempt_timeout=validate_timeout(attempt_timeout),
            region=self._allowed_region(region),
        )
        (record,) = await self._store_new([new])
        self._enqueued(record)
        return record

    async def _store_new(
        self, tasks: builtins.list[NewTask], transaction: StoreTransaction | None = None
    ) -> builtins.list[EnqueuedTask]:
        """Insert prepared tasks under one producer span whose trace context they carry, so
        every attempt of every task continues the enqueuing trace. The caller reports them
        (:meth:`_enqueued`) once they are committed."""
        self._check_open()
        if not tasks:
            return []
        unique, positions = dedupe_keys(tasks)
        target = self._store if transaction is None else transaction
        if tracing.is_recording(self._tracer):
            attributes: dict[str, str | int] = {tracing.ATTR_COUNT: len(tasks)}
            if len({t.queue for t in tasks}) == 1:
                attributes[tracing.ATTR_QUEUE] = tasks[0].queue
            if len({t.kind for t in tasks}) == 1:
                attributes[tracing.ATTR_KIND] = tasks[0].kind
            with self._tracer.start_as_current_span(
                tracing.ENQUEUE_SPAN, kind=SpanKind.PRODUCER, attributes=attributes
            ):
                stored = await target.enqueue(_in_trace(unique))
        else:
            # No span to record (~15 us per call saved); the tasks still join whatever trace
            # is current, as they would under the no-op span.
            stored = await target.enqueue(_in_trace(unique))
        if len(stored) == len(tasks):
            return stored
        # A key repeated within the batch: the later tasks are the first one's duplicates.
        results: builtins.list[EnqueuedTask] = []
        returned: set[int] = set()
        for n in positions:
            record = stored[n]
            results.append(
                record.model_copy(update={"created": False}) if n in returned else record
            )
            returned.add(n)
        return results

    def _enqueued(self, *records: EnqueuedTask) -> None:
        """Count and log committed enqueues (duplicates returned by a key are not new)."""
        created = [r for r in records if r.created]
        for (queue, kind), count in Counter((r.queue, r.kind) for r in created).items():
            self._metrics.tasks_enqueued.add(count, {"queue": queue, "kind": kind})
        if not debug_enabled(self._log):
            return
        for record in records:
            fields = {
                "task_id": str(record.id),
                "queue": record.queue,
                "kind": record.kind,
                "priority": record.priority,
                "scheduled_at": record.scheduled_at.isoformat(),
                **({"payload": record.payload} if self._log_payload else {}),
            }
            if record.created:
                self._log.debug("task_enqueued", **fields)
            else:
                self._log.debug("task_enqueue_deduplicated", **fields)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A database transaction for the block, shared by your own SQL and enqueues::

            async with engine.transaction() as tx:
                await tx.execute(SAVE_ORDER, order_id, total)  # your statement, $1 style
                await tx.enqueue(SendReceipt(order_id=order_id))

        It commits when the block ends normally; an exception or a cancellation rolls it
        back. Workers see the tasks (and are woken) only at commit; after a rollback they
        never existed. The transaction holds one pooled connection for the whole block, so
        keep it short.

        Raises:
            StoreUnavailable: no connection, or the database went away (rolled back).
            StoreError: a statement or the commit failed (rolled back).
        """
        self._check_open()
        async with self._store.transaction() as store_transaction:
            handle = Transaction(self, store_transaction)
            try:
                yield handle
            finally:
                handle._close()
        self._enqueued(*handle._records)

    async def audit_log(
        self, task_id: UUID | str, *, after: int | None = None, limit: int = 100
    ) -> builtins.list[AuditEntry]:
        """A task's audit trail in order (``database.audit_log``): one entry per state change.

        Args:
            after: keyset cursor: only entries after this audit id (pass the last ``id`` of
                the previous page).
            limit: page size, 1..1000.

        Raises:
            TaskNotFound: the task has no audit entry and does not exist.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidTaskError(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
        if after is not None and not 0 <= after < 2**63:
            raise InvalidTaskError(f"after must be an audit entry id (0..2**63-1), got {after}")
        the_id = _as_uuid(task_id)
        self._check_open()
        entries = await self._store.audit_log(the_id, after=after, limit=limit)
        if not entries and after is None and await self._store.get(the_id) is None:
            raise TaskNotFound(the_id)
        return entries

    async def ping(self) -> None:
        """One round trip to the database (for readiness probes).

        Raises:
            StoreUnavailable: the database did not answer.
        """
        self._check_open()
        await self._store.ping()

    async def get(self, task_id: UUID | str) -> TaskRecord:
        """Read one task.

        Raises:
            TaskNotFound: no task has this id.
        """
        the_id = _as_uuid(task_id)
        self._check_open()
        record = await self._store.get(the_id)
        if record is None:
            raise TaskNotFound(the_id)
        return record

    async def signal(self, task_id: UUID | str, payload: JsonValue = None) -> TaskRecord:
        """Resume a suspended task: it is pending again at once (its queue's workers are
        woken), and its next attempt reads ``payload`` as ``ctx.signal_payload``.

        Args:
            payload: any JSON value, up to 1 MiB encoded.

        Returns:
            The task, now ``pending``.

        Raises:
            TaskNotFound: no task has this id.
            InvalidTransition: the task is not suspended (``exc.status`` says what it is).
            InvalidTaskError: the payload is not JSON or is over 1 MiB.
        """
        the_id = _as_uuid(task_id)
        try:
            payload_json = json.dumps(payload, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidTaskError(f"the signal payload cannot be encoded as JSON: {exc}") from None
        validate_payload_json(payload_json)
        self._check_open()
        result = await self._store.signal(the_id, payload_json)
        record = self._changed_or_raise(the_id, result.resumed, result.current, "signal")
        self._log.info(
            "task_signalled", task_id=str(record.id), queue=record.queue, kind=record.kind
        )
        return record

    async def cancel(self, task_id: UUID | str) -> TaskRecord:
        """Cancel a task.

        A pending or suspended task is ``cancelled`` at once. For a running task the request
        is recorded and announced: the engine running it, in any process, cancels the
        handler's cancel scope (the handler sees ``trio.Cancelled`` at its next checkpoint, and
        may shield its cleanup) and the task ends ``cancelled``, never retried. If the handler
        returns before the request reaches it, the task is ``completed`` instead. Repeating the
        request is harmless.

        Returns:
            The task: ``cancelled``, or ``running`` with ``cancel_requested_at`` set.

        Raises:
            TaskNotFound: no task has this id.
            InvalidTransition: the task had already finished (``exc.status``).
        """
        the_id = _as_uuid(task_id)
        self._check_open()
        result = await self._store.cancel(the_id)
        if result.requested is not None:
            record = result.requested
            self._log.info(
                "task_cancel_requested",
                task_id=str(record.id),
                queue=record.queue,
                kind=record.kind,
            )
            # The task may run on this very engine: stop it without waiting for the NOTIFY.
            self._inflight.request_cancel(record.id, self._log, via="notification")
            return record
        record = self._changed_or_raise(the_id, result.cancelled, result.current, "cancel")
        self._log.info(
            "task_cancelled", task_id=str(record.id), queue=record.queue, kind=record.kind
        )
        return record

    @staticmethod
    def _changed_or_raise(
        task_id: UUID, changed: TaskRecord | None, current: TaskRecord | None, action: str
    ) -> TaskRecord:
        """The task a guarded change applied to, or why it did not apply: no such task, or a
        status that does not allow ``action``."""
        if changed is not None:
            return changed
        if current is None:
            raise TaskNotFound(task_id)
        raise InvalidTransition(task_id, current.status.value, action)

    async def queue_stats(self, *, by_region: bool = False) -> builtins.list[QueueStatistics]:
        """Counts by status, active workers, the oldest due pending age and the paused state,
        per queue; with ``by_region``, per queue and region (``region`` None: unpinned
        tasks). A paused queue is listed even when it holds no task."""
        self._check_open()
        return await self._store.queue_statistics(by_region=by_region)

    async def queue_throughput(
        self, *, window: float = 300.0, bucket: float = 10.0
    ) -> builtins.list[QueueThroughput]:
        """Tasks completed per queue in ``bucket``-second buckets over the last ``window``
        seconds (oldest first, the last bucket ending now), computed from the tasks' finish
        times; no history is kept beyond the rows retention leaves. Queues that completed
        nothing in the window are absent.

        Raises:
            InvalidTaskError: ``bucket`` is not positive, or ``window`` is not between one
                bucket and 1000 buckets.
        """
        if not bucket > 0 or not bucket <= window <= bucket * 1000:
            raise InvalidTaskError(
                f"need 0 < bucket <= window <= 1000 buckets, got window={window} bucket={bucket}"
            )
        self._check_open()
        return await self._store.queue_throughput(window=window, bucket=bucket)

    async def pause_queue(self, queue: str) -> QueueStatistics:
        """Pause ``queue`` on every engine: none claims from it until :meth:`resume_queue`
        (the state is in the database, so it holds across nodes and restarts). It still
        accepts tasks; tasks already running finish. Pausing a paused queue changes nothing.

        Returns:
            The queue's statistics, ``paused_at`` set.

        Raises:
            InvalidTaskError: not a valid queue name.
        """
        validate_queue_name(queue)
        self._check_open()
        paused_at = await self._store.pause_queue(queue)
        self._log.info("queue_paused", queue=queue, paused_at=paused_at.isoformat())
        return await self._queue_state(queue)

    async def resume_queue(self, queue: str) -> QueueStatistics:
        """Let engines claim from ``queue`` again; its workers are woken at once. Resuming a
        queue that is not paused changes nothing.

        Returns:
            The queue's statistics, ``paused_at`` None.

        Raises:
            InvalidTaskError: not a valid queue name.
        """
        validate_queue_name(queue)
        self._check_open()
        if await self._store.resume_queue(queue):
            self._log.info("queue_resumed", queue=queue)
        return await self._queue_state(queue)

    async def _queue_state(self, queue: str) -> QueueStatistics:
        found = await self._store.queue_statistics(queue=queue)
        if found:
            return found[0]
        # Not paused and no task yet: all zero.
        return QueueStatistics(
            queue=queue,
            pending=0,
            scheduled=0,
            running=0,
            suspended=0,
            completed=0,
            failed=0,
            cancelled=0,
            active_workers=0,
            oldest_pending_age=None,
        )

    async def list(
        self,
        *,
        queue: str | None = None,
        status: TaskStatus | str | None = None,
        kind: str | None = None,
        limit: int = 100,
        before: UUID | str | None = None,
        id_prefix: str | None = None,
    ) -> builtins.list[TaskRecord]:
        """Tasks newest first, optionally filtered.

        Args:
            limit: page size, 1..1000.
            before: keyset cursor: only tasks older than this id (pass the last id of the
                previous page). Pages stay stable while new tasks arrive.
            id_prefix: only tasks whose id starts with these hexadecimal digits (dashes as
                printed are allowed), e.g. the first characters of an id from a log line.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidTaskError(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
        try:
            the_status = None if status is None else TaskStatus(status)
        except ValueError:
            raise InvalidTaskError(
                f"unknown status {status!r}; one of {', '.join(s.value for s in TaskStatus)}"
            ) from None
        for name, value in (("queue", queue), ("kind", kind)):
            _check_filter(name, value)
        id_range = None if id_prefix is None else id_prefix_range(id_prefix)
        self._check_open()
        return await self._store.list_tasks(
            queue=queue,
            status=the_status,
            kind=kind,
            before=None if before is None else _as_uuid(before),
            limit=limit,
            id_range=id_range,
        )

    # --- periodic schedules ----------------------------------------------------------------

    @property
    def periodic(self) -> PeriodicScheduler | None:
        """The scheduler of this engine's periodic schedules (None when it runs none, or runs
        no workers). Tests call its ``run_once(now=...)`` to fire without waiting."""
        return self._periodic

    async def periodic_schedules(self) -> builtins.list[PeriodicSchedule]:
        """Every schedule registered in the database (by any engine), sorted by name, with
        its last and next fire times."""
        self._check_open()
        return await self._store.periodic_schedules()

    def _enable_periodic(self, declared: Iterable[Periodic]) -> None:
        """Resolve the schedules to run (code, Task classes' ``PERIODIC``, settings); raises
        ConfigError before anything starts."""
        schedules = resolve_schedules(
            declared, self.settings.periodic.schedules, self.registry, self._prepare_periodic
        )
        if not schedules:
            return
        self._periodic = PeriodicScheduler(
            self._store,
            schedules,
            self._health,
            self._log,
            metrics=self._metrics,
            misfire_grace=self.settings.periodic.misfire_grace,
            retry_interval=self.settings.worker.poll_interval,
        )

    def _prepare_periodic(self, periodic: Periodic, task: Task) -> NewTask:
        return self._prepare(
            periodic.queue, task, priority=periodic.priority, scheduled_at=None, max_attempts=None
        )

    # --- retrying (operators) ------------------------------------------------------------

    async def retry(self, task_id: UUID | str) -> TaskRecord:
        """Run a failed or cancelled task again.

        The task is ``pending`` and due now, with a new attempt budget (``attempts`` back to
        0, ``max_attempts`` unchanged). Its history stays: ``last_error`` until the next
        attempt overwrites it, and its checkpoint, so the next attempt resumes from it. Its
        queue's workers are woken, in every process.

        Raises:
            TaskNotFound: no task has this id (it never existed, or retention deleted it).
            InvalidTransition: the task is not failed or cancelled (``exc.status``).
        """
        the_id = _as_uuid(task_id)
        self._check_open()
        result = await self._store.retry(the_id)
        record = self._changed_or_raise(the_id, result.retried, result.current, "retry")
        self._log.info(
            "task_retried_manually", task_id=str(record.id), queue=record.queue, kind=record.kind
        )
        self._wake(record.queue)
        return record

    async def retry_many(
        self,
        *,
        queue: str,
        status: TaskStatus | str = TaskStatus.FAILED,
        kind: str | None = None,
        expect: int | None = None,
    ) -> BulkRetry:
        """Retry every failed (or every cancelled) task of a queue, optionally of one kind,
        as :meth:`retry` does, in two steps that make the number changed the number seen.

        Without ``expect`` nothing changes: the result's ``matched`` is how many tasks a retry
        would take (at most :data:`~iron_defer_trio.domain.MAX_BULK_RETRY`, the oldest
        finished first; ``more`` tells that others match beyond it). Call again with
        ``expect=matched`` to retry them: the matching tasks are locked, counted and
        retried in one statement, and when their number is not ``expect`` (tasks were
        retried, cancelled or deleted meanwhile) nothing changes and CountChanged is raised.

        Raises:
            InvalidTaskError: ``status`` is not failed or cancelled, a filter is malformed,
                or ``expect`` is outside 0..MAX_BULK_RETRY.
            CountChanged: ``expect`` was given and another number of tasks matches now.
        """
        the_status = _retryable_status(status)
        validate_queue_name(queue)
        _check_filter("kind", kind)
        if expect is not None and not 0 <= expect <= MAX_BULK_RETRY:
            raise InvalidTaskError(
                f"expect must be between 0 and {MAX_BULK_RETRY} (one bulk retry takes at most "
                f"{MAX_BULK_RETRY} tasks), got {expect}"
            )
        self._check_open()
        if expect is None:
            counted = await self._store.count_retryable(
                queue=queue, status=the_status, kind=kind, most=MAX_BULK_RETRY + 1
            )
            return BulkRetry(
                matched=min(counted, MAX_BULK_RETRY), more=counted > MAX_BULK_RETRY, retried=0
            )
        matched, retried = await self._store.retry_many(
            queue=queue, status=the_status, kind=kind, expect=expect, cap=MAX_BULK_RETRY
        )
        if matched != expect:
            raise CountChanged(expect, matched)
        self._log.info(
            "tasks_retried_manually",
            queue=queue,
            status=the_status.value,
            kind=kind,
            count=retried,
        )
        if retried:
            self._wake(queue)
        return BulkRetry(matched=matched, more=False, retried=retried)


@dataclass(frozen=True, slots=True)
class _TaskOptions:
    """The validated options every task of one class gets in one enqueue call."""

    queue: str
    kind: str
    priority: int
    max_attempts: int
    scheduled_at: datetime | None
    attempt_timeout: float | None
    region: str | None


class _GaugeSource:
    """The engine, as the gauges read it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.worker_id = str(engine.worker_id)

    def utilization(self) -> list[tuple[dict[str, str], float]]:
        return [
            ({"queue": stats.queue, "worker_id": self.worker_id}, stats.running / stats.concurrency)
            for stats in self._engine.statistics().queues
        ]

    def task_counts(self) -> dict[str, dict[str, int]] | None:
        return self._engine._task_counts

    def pool(self) -> dict[str, float]:
        stats = self._engine._store.pool_statistics()
        return {
            "size": stats.size,
            "idle": stats.idle,
            "in_use": stats.in_use,
            "waiting": stats.waiting,
        }


def _in_trace(tasks: list[NewTask]) -> list[NewTask]:
    """The tasks, carrying the current trace context if there is one."""
    traceparent = tracing.current_traceparent()
    if traceparent is None:
        return tasks
    return [replace(t, traceparent=traceparent) for t in tasks]


def _check_filter(name: str, value: str | None) -> None:
    """A list or bulk filter value: text the columns can hold."""
    if value is not None and ("\x00" in value or len(value) > 255):
        raise InvalidTaskError(f"{name} filter must be at most 255 characters, no NUL")


def _retryable_status(status: TaskStatus | str) -> TaskStatus:
    """The status filter of a bulk retry: failed or cancelled, nothing else."""
    try:
        the_status = TaskStatus(status)
    except ValueError:
        the_status = None
    if the_status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        raise InvalidTaskError(f"status must be failed or cancelled to retry, got {status!r}")
    return the_status


def _as_uuid(value: UUID | str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise TaskNotFound(value) from None


@asynccontextmanager
async def run_engine(
    store: TaskStore,
    *,
    registry: TaskRegistry,
    settings: Settings,
    queues: Mapping[str, int] | None = None,
    run_workers: bool = True,
    log: Logger | None = None,
    rng: random.Random | None = None,
    metrics: Metrics | None = None,
    tracer: Tracer | None = None,
    periodic: Iterable[Periodic] = (),
) -> AsyncIterator[Engine]:
    """Run an engine on ``store`` for the lifetime of the block; shut down gracefully at exit.

    Exceptions from the block propagate; see :func:`iron_defer_trio.open_engine` for the
    user-facing wrapper that also owns the store and unwraps exception groups.
    """
    engine = Engine(
        store,
        registry=registry,
        settings=settings,
        queues=settings.queues if queues is None else queues,
        log=log,
        rng=rng,
        metrics=metrics,
        tracer=tracer,
    )
    if run_workers:
        # Only engines that run workers fire schedules; producers (the CLI) never do.
        engine._enable_periodic(periodic)
    try:
        async with trio.open_nursery() as nursery:
            if run_workers:
                await nursery.start(engine._serve)
            else:
                engine._state = EngineState.RUNNING
            try:
                yield engine
            finally:
                engine.stop()
    finally:
        engine._state = EngineState.STOPPED
        engine._stopped.set()
        engine._log.info("engine_stopped")
