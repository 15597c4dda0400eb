"""One queue's claim loop and the nursery of its running tasks.

The loop claims as many due tasks as the queue has free slots, in one statement, and starts
each in its own trio task under a ``trio.CapacityLimiter``. A claim that comes back full is
followed by another at once (more work is probably waiting); otherwise the loop sleeps until a
notification, a freed slot after a full claim, or the poll interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from traceback import format_exception
from typing import TYPE_CHECKING

import trio
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from iron_defer_trio.domain import RetryPolicy, TaskContext, TaskRecord
from iron_defer_trio.domain.limits import truncate_error
from iron_defer_trio.engine._health import Backoff, DatabaseHealth
from iron_defer_trio.errors import RetryAfter, StoreError, TaskError
from iron_defer_trio.observability import tracing
from iron_defer_trio.store.protocol import Outcome, OutcomeKind, TaskStore

if TYPE_CHECKING:
    import random
    from uuid import UUID

    from opentelemetry.trace import Tracer

    from iron_defer_trio.config import WorkerSettings
    from iron_defer_trio.engine._completer import Completer
    from iron_defer_trio.engine._inflight import InFlight, Running
    from iron_defer_trio.engine._registry import TaskRegistry
    from iron_defer_trio.observability.logs import Logger
    from iron_defer_trio.observability.metrics import Metrics


@dataclass(frozen=True, slots=True)
class QueueWorkerStatistics:
    """A snapshot of one queue worker."""

    queue: str
    #: Most tasks run at once.
    concurrency: int
    #: Tasks running now.
    running: int
    #: Tasks claimed since the engine started.
    claimed: int
    #: Attempts that ended: completed, retried (failed with attempts left), failed for good,
    #: and handed back (shutdown or lost lease).
    completed: int
    retried: int
    failed: int
    released: int


class _Wakeup:
    """A level-triggered wake-up: a set() before wait() is not lost."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class QueueWorker:
    """Claims and runs the tasks of one queue."""

    def __init__(
        self,
        queue: str,
        concurrency: int,
        *,
        store: TaskStore,
        registry: TaskRegistry,
        worker_id: UUID,
        inflight: InFlight,
        completer: Completer,
        health: DatabaseHealth,
        settings: WorkerSettings,
        log: Logger,
        rng: random.Random,
        metrics: Metrics,
        tracer: Tracer,
        log_payload: bool = False,
    ) -> None:
        self.queue = queue
        self._metrics = metrics
        self._tracer = tracer
        self._log_payload = log_payload
        self._store = store
        self._registry = registry
        self._worker_id = worker_id
        self._inflight = inflight
        self._completer = completer
        self._health = health
        self._settings = settings
        self._log = log.bind(queue=queue)
        self._rng = rng
        self._backoff = Backoff(rng)
        self._default_retry = RetryPolicy(
            base_delay=settings.base_delay, max_delay=settings.max_delay
        )
        self._limiter = trio.CapacityLimiter(concurrency)
        self._wakeup = _Wakeup()
        self._slot_freed = _Wakeup()
        self._claim_scope = trio.CancelScope()
        self._tasks_scope: trio.CancelScope | None = None
        self._drain_deadline: float | None = None
        self._claimed = 0
        self._claiming = False
        self._counts = {kind: 0 for kind in OutcomeKind}

    # --- control -----------------------------------------------------------------------

    def wake(self) -> None:
        """New work may be due: claim now rather than at the next poll."""
        self._wakeup.set()

    def drain(self, deadline: float) -> None:
        """Stop claiming; running tasks may finish until ``deadline`` (trio time), after which
        they are cancelled and handed back."""
        self._claim_scope.cancel()
        self._drain_deadline = deadline
        if self._tasks_scope is not None:
            self._tasks_scope.deadline = deadline

    def statistics(self) -> QueueWorkerStatistics:
        """Counters since start and the current load."""
        return QueueWorkerStatistics(
            queue=self.queue,
            concurrency=int(self._limiter.total_tokens),
            running=self._limiter.borrowed_tokens,
            claimed=self._claimed,
            completed=self._counts[OutcomeKind.COMPLETED],
            retried=self._counts[OutcomeKind.RETRY],
            failed=self._counts[OutcomeKind.FAILED],
            released=self._counts[OutcomeKind.RELEASED],
        )

    @property
    def running(self) -> int:
        """Tasks of this queue executing now."""
        return self._limiter.borrowed_tokens

    @property
    def claiming(self) -> bool:
        """True while a claim statement is in flight."""
        return self._claiming

    @property
    def claimed(self) -> int:
        """Tasks claimed since start."""
        return self._claimed

    # --- the loop ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and run tasks until :meth:`drain`; return once every task has ended."""
        async with trio.open_nursery() as tasks:
            self._tasks_scope = tasks.cancel_scope
            if self._drain_deadline is not None:
                tasks.cancel_scope.deadline = self._drain_deadline
            with self._claim_scope:
                task_status.started()
                await self._claim_loop(tasks)

    async def _claim_loop(self, tasks: trio.Nursery) -> None:
        kinds = self._registry.kinds
        if not kinds:
            await trio.sleep_forever()  # nothing this engine could run
        while True:
            free = self._limiter.available_tokens
            if free < 1:
                await self._slot_freed.wait()
                continue
            self._wakeup.clear()
            limit = int(free)
            self._claiming = True
            try:
                records = await self._store.claim(
                    self.queue,
                    self._worker_id,
                    kinds=kinds,
                    limit=limit,
                    lease=self._settings.lease_duration,
                )
            except StoreError as exc:
                self._claiming = False
                self._health.failed(f"worker:{self.queue}", exc)
                await trio.sleep(self._backoff.next_delay())
                continue
            self._health.succeeded()
            self._backoff.reset()
            self._claiming = False
            for record in records:
                labels = {"queue": record.queue, "kind": record.kind}
                self._metrics.task_attempts.add(1, labels)
                waited = _seconds_between(record.scheduled_at, record.started_at)
                if waited is not None:
                    self._metrics.queue_wait.record(max(waited, 0.0), {"queue": record.queue})
                running = self._inflight.add(record)
                # One token per attempt: the same task can be re-claimed here while a stale
                # attempt of it is still being cancelled.
                self._limiter.acquire_on_behalf_of_nowait(running)
                self._claimed += 1
                tasks.start_soon(self._run_task, running, name=f"task {record.kind} {record.id}")
            if len(records) >= limit:
                continue  # a full claim: more is probably waiting
            with trio.move_on_after(self._settings.poll_interval):
                await self._wakeup.wait()

    # --- one task ------------------------------------------------------------------------

    async def _run_task(self, running: Running) -> None:
        record = running.record
        log = self._log.bind(
            task_id=str(record.id),
            kind=record.kind,
            attempt=record.attempts,
            worker_id=str(self._worker_id),
        )
        log.info(
            "task_claimed",
            max_attempts=record.max_attempts,
            **({"payload": record.payload} if self._log_payload else {}),
        )
        labels = {"queue": record.queue, "kind": record.kind}
        try:
            outcome = await self._traced_attempt(running, log)
        except trio.Cancelled:
            # Shutdown's deadline passed: give the task back. The interrupted attempt does not
            # count against the task, since the task did not fail.
            self._finish(running, Outcome(record.id, record.attempts, OutcomeKind.RELEASED))
            self._record_duration(running, labels, "released")
            log.warning("task_released", reason="shutdown")
            raise
        except Exception as exc:
            # Our own code failed around this task (the handler's errors are outcomes, not
            # exceptions). Fail the task rather than the engine: one bad row must never stop
            # every worker that claims it.
            log.error(
                "task_internal_error",
                error=f"{type(exc).__name__}: {exc}",
                traceback=_traceback(exc),
            )
            outcome = Outcome(
                record.id,
                record.attempts,
                OutcomeKind.FAILED,
                truncate_error(f"internal error while running the task: {type(exc).__name__}"),
            )
        finally:
            self._limiter.release_on_behalf_of(running)
            self._slot_freed.set()
        if outcome is None:
            self._inflight.remove(record.id, record.attempts)
            self._counts[OutcomeKind.RELEASED] += 1
            self._record_duration(running, labels, "lease_lost")
            return
        self._finish(running, outcome)
        duration_ms = self._record_duration(running, labels, outcome.kind.value)
        if outcome.kind is OutcomeKind.COMPLETED:
            self._metrics.tasks_completed.add(1, labels)
            log.info("task_completed", duration_ms=duration_ms)
            return
        self._metrics.task_failures.add(1, labels)
        failure = outcome if isinstance(outcome, _Failure) else None
        if outcome.kind is OutcomeKind.RETRY:
            self._metrics.task_retries.add(1, labels)
            next_run_at = datetime.now(UTC) + timedelta(seconds=outcome.delay)
            log.warning(
                "task_failed_retry",
                duration_ms=duration_ms,
                error=outcome.error,
                next_run_at=next_run_at.isoformat(),
                retry_in_seconds=round(outcome.delay, 3),
                traceback=failure.traceback if failure else None,
            )
        else:
            log.error(
                "task_failed_terminal",
                duration_ms=duration_ms,
                error=outcome.error,
                traceback=failure.traceback if failure else None,
            )

    def _record_duration(self, running: Running, labels: dict[str, str], outcome: str) -> float:
        seconds = trio.current_time() - running.started_at
        self._metrics.task_duration.record(seconds, {**labels, "outcome": outcome})
        return round(seconds * 1000, 3)

    def _finish(self, running: Running, outcome: Outcome) -> None:
        running.finished = True
        self._counts[outcome.kind] += 1
        self._completer.submit(outcome)

    async def _traced_attempt(self, running: Running, log: Logger) -> Outcome | None:
        """The attempt as a span of the trace the task was enqueued in."""
        record = running.record
        with self._tracer.start_as_current_span(
            tracing.EXECUTE_SPAN,
            context=tracing.context_from_traceparent(record.traceparent),
            kind=SpanKind.CONSUMER,
            attributes={
                tracing.ATTR_TASK_ID: str(record.id),
                tracing.ATTR_QUEUE: record.queue,
                tracing.ATTR_KIND: record.kind,
                tracing.ATTR_ATTEMPT: record.attempts,
                tracing.ATTR_MAX_ATTEMPTS: record.max_attempts,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcome = await self._attempt(running, log)
            span.set_attribute(
                tracing.ATTR_OUTCOME, "lease_lost" if outcome is None else outcome.kind.value
            )
            if outcome is not None and outcome.kind is not OutcomeKind.COMPLETED:
                if isinstance(outcome, _Failure) and outcome.exception is not None:
                    span.record_exception(outcome.exception)
                span.set_status(Status(StatusCode.ERROR, outcome.error))
            return outcome

    async def _attempt(self, running: Running, log: Logger) -> Outcome | None:
        """Run the handler; return the outcome to write, or None when the lease was lost."""
        record = running.record
        cls = self._registry.get(record.kind)
        try:
            task = cls.model_validate(record.payload)
        except ValidationError as exc:
            # A payload that does not fit its class will not fit on the next attempt either.
            error = f"payload does not match {cls.__qualname__}: {_validation_summary(exc)}"
            return Outcome(record.id, record.attempts, OutcomeKind.FAILED, truncate_error(error))
        ctx = TaskContext(
            task_id=record.id,
            queue=record.queue,
            kind=record.kind,
            attempt=record.attempts,
            max_attempts=record.max_attempts,
            worker_id=self._worker_id,
            scheduled_at=record.scheduled_at,
            log=log,
        )
        try:
            with running.scope:
                await task.execute(ctx)
        except TaskError as exc:
            return self._failure(record, str(exc), cls.RETRY, retry=exc.retry, exception=exc)
        except RetryAfter as exc:
            return self._failure(record, str(exc), cls.RETRY, delay=exc.seconds, exception=exc)
        except Exception as exc:
            return self._failure(record, f"{type(exc).__name__}: {exc}", cls.RETRY, exception=exc)
        if running.scope.cancelled_caught and running.lease_lost:
            return None  # another worker owns the task now; writing would be refused anyway
        return Outcome(record.id, record.attempts, OutcomeKind.COMPLETED)

    def _failure(
        self,
        record: TaskRecord,
        error: str,
        policy: RetryPolicy | None,
        *,
        retry: bool = True,
        delay: float | None = None,
        exception: BaseException,
    ) -> _Failure:
        error = truncate_error(error)
        # Our control-flow errors carry their meaning in the message; a traceback only helps
        # for unexpected exceptions.
        trace = None if isinstance(exception, TaskError | RetryAfter) else _traceback(exception)
        if not retry or record.attempts >= record.max_attempts:
            return _Failure(
                record.id, record.attempts, OutcomeKind.FAILED, error, 0.0, trace, exception
            )
        if delay is None:
            delay = (policy or self._default_retry).delay(record.attempts, self._rng.random())
        return _Failure(
            record.id, record.attempts, OutcomeKind.RETRY, error, delay, trace, exception
        )


@dataclass(frozen=True, slots=True)
class _Failure(Outcome):
    """A failed attempt's outcome, with what to log and trace (never stored)."""

    traceback: str | None = None
    exception: BaseException | None = None


def _seconds_between(earlier: datetime | None, later: datetime | None) -> float | None:
    # Rows written by other code may hold values this arithmetic cannot take (infinities come
    # back as naive sentinels); a metric must never be what stops a task.
    if earlier is None or later is None:
        return None
    try:
        return (later - earlier).total_seconds()
    except (TypeError, OverflowError):
        return None


def _traceback(exc: BaseException) -> str:
    # Formatted by us rather than passed as exc_info: renderers such as rich show local
    # variables, which would put task payloads into the logs.
    return "".join(format_exception(exc)).rstrip()


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"]) or "(payload)"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)
