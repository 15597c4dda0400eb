"""One queue's claim loop and the nursery of its running tasks.

Slots: a ``trio.CapacityLimiter`` of the queue's concurrency bounds the tasks executing at
once. The loop claims due tasks in one statement per batch and starts each in a free slot;
when tasks are short it also fetches ahead (``worker.prefetch``): tasks claimed while every
slot is busy wait in a small local buffer, and a slot that frees takes the next one without a
new claim. The buffer is sized to what the slots will start within ``FETCH_AHEAD_HORIZON`` at
the pace tasks finish, so slow tasks are never hoarded. Buffered tasks are leased (their
leases are renewed like running ones) and handed back at once when the engine drains.

A claim that comes back full is followed by another as soon as there is room; otherwise the
loop sleeps until a notification, room after a full claim, or the poll interval. While more
than ``MAX_OUTCOME_BACKLOG`` outcomes wait to be written, the loop does not claim at all.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from traceback import format_exception
from typing import TYPE_CHECKING

import trio
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from iron_defer_trio.domain import RetryPolicy, TaskContext, TaskRecord
from iron_defer_trio.domain.limits import truncate_error
from iron_defer_trio.domain.task import SuspendRequested
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

#: Fetch ahead what the slots will start within this many seconds at the pace tasks finish.
FETCH_AHEAD_HORIZON = 0.05
#: Largest claim statement.
MAX_CLAIM = 500
#: Outcomes waiting to be written (engine-wide) above which claim loops pause: memory and
#: lease renewals stay bounded when the database writes slower than tasks finish.
MAX_OUTCOME_BACKLOG = 1000
#: Weight of the newest duration in the running average that sizes the fetch-ahead.
_DURATION_WEIGHT = 0.1


@dataclass(frozen=True, slots=True)
class QueueWorkerStatistics:
    """A snapshot of one queue worker."""

    queue: str
    #: Most tasks run at once.
    concurrency: int
    #: Tasks running now.
    running: int
    #: Tasks claimed and waiting for a free slot (fetch-ahead).
    buffered: int
    #: Tasks claimed since the engine started.
    claimed: int
    #: Attempts that ended: completed, retried (failed with attempts left), failed for good,
    #: handed back (shutdown or lost lease), and stopped by a cancel request.
    completed: int
    retried: int
    failed: int
    released: int
    cancelled: int = 0


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
        self._concurrency = concurrency
        self._limiter = trio.CapacityLimiter(concurrency)
        self._buffer: deque[Running] = deque()
        #: Running average of handler durations (seconds); None until a task has run.
        self._mean_duration: float | None = None
        self._draining = False
        self._wakeup = _Wakeup()
        self._room_freed = _Wakeup()
        self._claim_scope = trio.CancelScope()
        self._tasks_scope: trio.CancelScope | None = None
        self._drain_deadline: float | None = None
        self._claimed = 0
        self._claiming = False
        self._unflushed_completions: Counter[tuple[str, str]] = Counter()
        self._counts = {kind: 0 for kind in OutcomeKind}

    # --- control -----------------------------------------------------------------------

    def wake(self) -> None:
        """New work may be due: claim now rather than at the next poll."""
        self._wakeup.set()

    def drain(self, deadline: float) -> None:
        """Stop claiming; running tasks may finish until ``deadline`` (trio time), after which
        they are cancelled and handed back."""
        self._claim_scope.cancel()
        self._draining = True
        self._drain_deadline = deadline
        if self._tasks_scope is not None:
            self._tasks_scope.deadline = deadline
        # Tasks fetched ahead have not started: hand them back now, for other engines.
        released = len(self._buffer)
        while self._buffer:
            running = self._buffer.popleft()
            record = running.record
            self._finish(running, Outcome(record.id, record.attempts, OutcomeKind.RELEASED))
        if released:
            self._log.info("fetched_ahead_released", count=released)

    def statistics(self) -> QueueWorkerStatistics:
        """Counters since start and the current load."""
        return QueueWorkerStatistics(
            queue=self.queue,
            concurrency=int(self._limiter.total_tokens),
            running=self._limiter.borrowed_tokens,
            buffered=len(self._buffer),
            claimed=self._claimed,
            completed=self._counts[OutcomeKind.COMPLETED],
            retried=self._counts[OutcomeKind.RETRY],
            failed=self._counts[OutcomeKind.FAILED],
            released=self._counts[OutcomeKind.RELEASED],
            cancelled=self._counts[OutcomeKind.CANCELLED],
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

    def fetch_ahead(self) -> int:
        """How many claimed tasks may wait for a slot now: what the slots start within
        FETCH_AHEAD_HORIZON at the current pace, at most ``worker.prefetch``."""
        mean = self._mean_duration
        if mean is None or self._settings.prefetch == 0:
            return 0
        pace = self._concurrency * FETCH_AHEAD_HORIZON / max(mean, 1e-6)
        return min(self._settings.prefetch, int(pace))

    async def _claim_loop(self, tasks: trio.Nursery) -> None:
        kinds = self._registry.kinds
        if not kinds:
            await trio.sleep_forever()  # nothing this engine could run
        while True:
            if self._completer.backlog >= MAX_OUTCOME_BACKLOG:
                await self._completer.wait_for_room(MAX_OUTCOME_BACKLOG)
                continue
            ahead = self.fetch_ahead()
            room = self._concurrency + ahead - self._limiter.borrowed_tokens - len(self._buffer)
            # Claim in batches of at least half the fetch-ahead: the buffer still feeds the
            # slots meanwhile. Without fetch-ahead, claim as soon as a slot is free.
            if room < max(1, (ahead + 1) // 2):
                await self._room_freed.wait()
                continue
            self._wakeup.clear()
            limit = min(room, MAX_CLAIM)
            self._claiming = True
            started = trio.current_time()
            try:
                records = await self._store.claim(
                    self.queue,
                    self._worker_id,
                    kinds=kinds,
                    limit=limit,
                    lease=self._settings.lease_duration,
                    region=self._settings.region,
                )
            except StoreError as exc:
                self._claiming = False
                self._health.failed(f"worker:{self.queue}", exc)
                await trio.sleep(self._backoff.next_delay())
                continue
            self._health.succeeded(started=started)
            self._backoff.reset()
            self._claiming = False
            self._dispatch(records, tasks)
            if len(records) >= limit:
                continue  # a full claim: more is probably waiting
            with trio.move_on_after(self._settings.poll_interval):
                await self._wakeup.wait()

    def _dispatch(self, records: list[TaskRecord], tasks: trio.Nursery) -> None:
        """Start claimed tasks in free slots; buffer the rest."""
        if not records:
            return
        for (queue, kind), count in Counter((r.queue, r.kind) for r in records).items():
            self._metrics.task_attempts.add(count, {"queue": queue, "kind": kind})
        for record in records:
            waited = _seconds_between(record.scheduled_at, record.started_at)
            if waited is not None:
                self._metrics.queue_wait.record(max(waited, 0.0), {"queue": record.queue})
            running = self._inflight.add(record)
            self._claimed += 1
            if self._limiter.available_tokens >= 1:
                # One token per attempt: the same task can be re-claimed here while a stale
                # attempt of it is still being cancelled.
                self._limiter.acquire_on_behalf_of_nowait(running)
                tasks.start_soon(self._run_slot, running, name=f"task {record.kind} {record.id}")
            else:
                self._buffer.append(running)

    async def _run_slot(self, running: Running) -> None:
        """Run a task in a slot, then the buffered ones, until the buffer is empty."""
        try:
            await self._run_slot_until_idle(running)
        finally:
            self._flush_completions()

    async def _run_slot_until_idle(self, running: Running) -> None:
        while True:
            await self._run_task(running)
            # A handler that never awaits would let this slot run the whole buffer without
            # a checkpoint, starving the completer, heartbeat and claim loop. Yielding after
            # every task also keeps scheduler passes short: trio looks for I/O (the claims'
            # and outcome writes' replies) only between passes. Yielding every millisecond
            # instead saved CPU but let 50 slots make a pass of up to 50 ms, and drained
            # 10-20% fewer tasks per second.
            await trio.lowlevel.checkpoint()
            if self._draining or self._limiter.available_tokens < 1:
                # Draining, or a new claim took the slot this one freed meanwhile: the slot
                # that frees next takes the buffer over.
                return
            while self._buffer:
                running = self._buffer.popleft()
                if not running.lease_lost:
                    break
                # Its lease expired while it waited (the database was away for longer than
                # the lease); another engine may own it now, so it must not start here.
                self._inflight.remove(running.record.id, running.record.attempts)
                self._counts[OutcomeKind.RELEASED] += 1
            else:
                return
            self._limiter.acquire_on_behalf_of_nowait(running)

    # --- one task ------------------------------------------------------------------------

    async def _run_task(self, running: Running) -> None:
        # The attempt's duration counts from here, not from the claim: a task started from a
        # claim waits up to one scheduler pass for its slot to run.
        running.started_at = trio.current_time()
        record = running.record
        log = self._log.bind(task_id=str(record.id), kind=record.kind, attempt=record.attempts)
        log.debug(
            "task_claimed",
            max_attempts=record.max_attempts,
            **({"payload": record.payload} if self._log_payload else {}),
        )
        labels = {"queue": record.queue, "kind": record.kind}
        try:
            outcome = await self._traced_attempt(running, log)
        except trio.Cancelled:
            if running.cancel_requested:
                # Asked to stop anyway: cancelled, not handed back for another attempt.
                self._finish(running, Outcome(record.id, record.attempts, OutcomeKind.CANCELLED))
                self._record_duration(running, labels, "cancelled")
                log.info("task_cancelled", reason="requested")
                raise
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
            self._room_freed.set()
        if outcome is None:
            self._inflight.remove(record.id, record.attempts)
            self._counts[OutcomeKind.RELEASED] += 1
            self._record_duration(running, labels, "lease_lost")
            return
        self._finish(running, outcome)
        duration_ms = self._record_duration(running, labels, outcome.kind.value)
        if outcome.kind is OutcomeKind.COMPLETED:
            self._unflushed_completions[record.queue, record.kind] += 1
            if (
                len(self._unflushed_completions) > 1
                or self._counts[OutcomeKind.COMPLETED] % 64 == 0
            ):
                self._flush_completions()
            log.debug("task_completed", duration_ms=duration_ms)
            return
        if outcome.kind is OutcomeKind.SUSPENDED:
            log.info("task_suspended", duration_ms=duration_ms)
            return
        if outcome.kind is OutcomeKind.CANCELLED:
            log.info(
                "task_cancelled", reason="requested", duration_ms=duration_ms, error=outcome.error
            )
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

    def _flush_completions(self) -> None:
        # One counter add per batch of completions rather than per task: on the hot path an
        # add with attributes costs ~5 us, a tenth of a no-op task's whole overhead. Flushed
        # every 64 completions, when the label set changes and whenever a slot goes idle, so
        # the counter is exact whenever the queue is idle.
        for (queue, kind), count in self._unflushed_completions.items():
            self._metrics.tasks_completed.add(count, {"queue": queue, "kind": kind})
        self._unflushed_completions.clear()

    def _record_duration(self, running: Running, labels: dict[str, str], outcome: str) -> float:
        seconds = trio.current_time() - running.started_at
        mean = self._mean_duration
        self._mean_duration = (
            seconds if mean is None else mean + (seconds - mean) * _DURATION_WEIGHT
        )
        self._metrics.task_duration.record(seconds, {**labels, "outcome": outcome})
        return round(seconds * 1000, 3)

    def _finish(self, running: Running, outcome: Outcome) -> None:
        running.finished = True
        self._counts[outcome.kind] += 1
        self._completer.submit(outcome)

    async def _traced_attempt(self, running: Running, log: Logger) -> Outcome | None:
        """The attempt as a span of the trace the task was enqueued in."""
        record = running.record
        if not tracing.is_recording(self._tracer):
            # Without a tracing SDK every span is a no-op: skip building one per attempt.
            return await self._attempt(running, log)
        span = self._tracer.start_span(
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
        )
        if not span.get_span_context().is_valid:
            # No tracing SDK: making the invalid span current changes nothing for the
            # handler, and skipping it saves a context switch per task.
            return await self._attempt(running, log)
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            outcome = await self._attempt(running, log)
            span.set_attribute(
                tracing.ATTR_OUTCOME, "lease_lost" if outcome is None else outcome.kind.value
            )
            if outcome is not None and outcome.kind in (OutcomeKind.RETRY, OutcomeKind.FAILED):
                if isinstance(outcome, _Failure) and outcome.exception is not None:
                    span.record_exception(outcome.exception)
                span.set_status(Status(StatusCode.ERROR, outcome.error))
            return outcome

    async def _attempt(self, running: Running, log: Logger) -> Outcome | None:
        """Run the handler; return the outcome to write, or None when the lease was lost."""
        record = running.record
        if running.cancel_requested:
            # Cancelled while it waited for a slot (fetched ahead): never start it.
            return Outcome(record.id, record.attempts, OutcomeKind.CANCELLED)
        return _unless_cancelled(running, await self._run_handler(running, log))

    async def _run_handler(self, running: Running, log: Logger) -> Outcome | None:
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
            last_checkpoint=record.checkpoint,
            signal_payload=record.signal_payload,
            attempt_timeout=record.attempt_timeout,
            save_checkpoint=partial(self._save_checkpoint, running),
        )
        # The attempt's timeout counts from when the handler starts (the scope's entry). One
        # scope serves the timeout, a lost lease and a cancel request (entering a trio cancel
        # scope costs a few microseconds per attempt); the flags tell them apart below.
        scope = running.scope
        if record.attempt_timeout is not None:
            scope.relative_deadline = record.attempt_timeout
        try:
            with scope:
                await task.execute(ctx)
        except SuspendRequested:
            # Parked until a signal; the attempt is handed back, not failed.
            return Outcome(record.id, record.attempts, OutcomeKind.SUSPENDED)
        except TaskError as exc:
            return self._failure(record, str(exc), cls.RETRY, retry=exc.retry, exception=exc)
        except RetryAfter as exc:
            return self._failure(record, str(exc), cls.RETRY, delay=exc.seconds, exception=exc)
        except Exception as exc:
            return self._failure(record, f"{type(exc).__name__}: {exc}", cls.RETRY, exception=exc)
        if not scope.cancelled_caught:
            return Outcome(record.id, record.attempts, OutcomeKind.COMPLETED)
        if running.lease_lost:
            return None  # another worker owns the task now; writing would be refused anyway
        if running.cancel_requested:
            return Outcome(record.id, record.attempts, OutcomeKind.CANCELLED)
        if record.attempt_timeout is not None:
            return self._failure(
                record,
                f"timed out: the attempt ran longer than {record.attempt_timeout:g} s",
                cls.RETRY,
                exception=None,
            )
        return Outcome(record.id, record.attempts, OutcomeKind.COMPLETED)

    async def _save_checkpoint(self, running: Running, encoded: str) -> None:
        """``ctx.checkpoint``'s writer: fenced on this attempt; a refused write means the
        lease is lost, so the attempt is cancelled like on a lost heartbeat."""
        record = running.record
        if await self._store.save_checkpoint(self._worker_id, record.id, record.attempts, encoded):
            return
        running.lease_lost = True
        running.scope.cancel()
        await trio.lowlevel.checkpoint()  # raises Cancelled here, inside the handler

    def _failure(
        self,
        record: TaskRecord,
        error: str,
        policy: RetryPolicy | None,
        *,
        retry: bool = True,
        delay: float | None = None,
        exception: BaseException | None,
    ) -> _Failure:
        error = truncate_error(error)
        # Our control-flow errors carry their meaning in the message; a traceback only helps
        # for unexpected exceptions.
        trace = (
            None
            if exception is None or isinstance(exception, TaskError | RetryAfter)
            else _traceback(exception)
        )
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


def _unless_cancelled(running: Running, outcome: Outcome | None) -> Outcome | None:
    """Whatever a handler did once its task's cancellation was requested (raised from its
    cleanup, suspended, timed out), the task was asked to stop: it ends cancelled, never
    retried. A handler that completed first completed."""
    if outcome is None or not running.cancel_requested or outcome.kind is OutcomeKind.COMPLETED:
        return outcome
    return Outcome(outcome.task_id, outcome.attempt, OutcomeKind.CANCELLED, outcome.error)


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
