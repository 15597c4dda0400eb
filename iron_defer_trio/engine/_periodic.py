"""Runs periodic (cron) schedules: enqueues one task per fire time, whatever the number of
engines running the same schedules.

No leader is elected. Each fire time is claimed by a fence in the database: the statement that
advances the schedule's ``last_fire_at`` to the fire time also inserts its task, and only one
engine can move the fence past a given fire time (the others, serialised on the row, find it
already there and insert nothing). See docs/guides/periodic-tasks.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import trio
from pydantic import ValidationError

from iron_defer_trio.domain.periodic import (
    Periodic,
    ScheduleDefinition,
    fires_between,
    next_fire,
    previous_fire,
)
from iron_defer_trio.errors import ConfigError, InvalidTaskError, StoreError, UnknownTaskKind

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from uuid import UUID

    from iron_defer_trio.config import PeriodicScheduleSettings
    from iron_defer_trio.domain import NewTask, Task
    from iron_defer_trio.domain.periodic import PeriodicSchedule
    from iron_defer_trio.engine._health import DatabaseHealth
    from iron_defer_trio.engine._registry import TaskRegistry
    from iron_defer_trio.observability.logs import Logger
    from iron_defer_trio.observability.metrics import Metrics
    from iron_defer_trio.store.protocol import TaskStore

#: Longest sleep between two passes, so a wall-clock jump (NTP step, suspended VM) is noticed
#: within a minute even when the next fire time is days away.
MAX_SLEEP = 60.0
#: Woken this much after the fire time: sleeping exactly to it may wake a hair early.
_WAKE_MARGIN = 0.001
#: Upper bound of the on-time fire times handled per schedule in one pass (a pass covers at
#: most ``misfire_grace`` seconds of them; this only guards a pathological setting).
_MAX_FIRES_PER_PASS = 1000


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class FiredTask:
    """A task a pass enqueued for a schedule's fire time."""

    schedule: str
    fire_at: datetime
    task_id: UUID
    #: True when the fire time had passed by more than the misfire grace (a catch-up run).
    missed: bool


@dataclass(frozen=True, slots=True)
class PeriodicResult:
    """What one pass of the scheduler did."""

    enqueued: tuple[FiredTask, ...]
    #: (schedule, fire time) of missed runs dropped by ``missed="skip"``.
    skipped: tuple[tuple[str, datetime], ...]
    #: The earliest next fire time of any schedule (None without schedules).
    next_fire_at: datetime | None


class PeriodicScheduler:
    """Fires the engine's schedules. :meth:`run` loops; :meth:`run_once` is one pass.

    A fire time counts as on time while it is at most ``misfire_grace`` seconds old: each one
    gets its own task. Older fire times were missed (no engine ran the schedule then); the
    schedule's ``missed`` policy decides between one catch-up task for the latest of them
    (``run_once``) and none (``skip``).
    """

    def __init__(
        self,
        store: TaskStore,
        schedules: Sequence[ScheduleDefinition],
        health: DatabaseHealth,
        log: Logger,
        *,
        metrics: Metrics,
        misfire_grace: float,
        retry_interval: float,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._schedules = {s.name: s for s in schedules}
        self._health = health
        self._log = log
        self._metrics = metrics
        self._grace = timedelta(seconds=misfire_grace)
        self._retry_interval = retry_interval
        self._clock = clock
        self._registered = False

    @property
    def schedules(self) -> tuple[ScheduleDefinition, ...]:
        """The schedules this scheduler runs."""
        return tuple(self._schedules.values())

    async def register(self, *, now: datetime | None = None) -> list[PeriodicSchedule]:
        """Insert or update this engine's schedules in the database (their fences kept)."""
        at = now or self._clock()
        rows = await self._store.register_periodic(
            [(s, next_fire(s.cron, s.timezone, at)) for s in self._schedules.values()]
        )
        self._registered = True
        return rows

    async def run_once(self, *, now: datetime | None = None) -> PeriodicResult:
        """Enqueue every fire time due at ``now`` (None: the clock) that no engine handled
        yet, registering the schedules first if that was not done."""
        now = now or self._clock()
        if not self._registered:
            await self.register(now=now)
        rows = await self._rows()
        if len(rows) < len(self._schedules):
            # Deleted by hand while we ran: register again (its history starts afresh).
            await self.register(now=now)
            rows = await self._rows()
        enqueued: list[FiredTask] = []
        skipped: list[tuple[str, datetime]] = []
        for name, schedule in self._schedules.items():
            row = rows[name]
            handled = row.last_fire_at or row.created_at
            horizon = now - self._grace
            if handled < horizon:
                latest_missed = previous_fire(schedule.cron, schedule.timezone, horizon)
                if latest_missed > handled:
                    await self._fire(schedule, latest_missed, enqueued, skipped, missed=True)
                handled = max(handled, horizon)
            for fire_at in fires_between(
                schedule.cron, schedule.timezone, handled, now, limit=_MAX_FIRES_PER_PASS
            ):
                await self._fire(schedule, fire_at, enqueued, skipped, missed=False)
        upcoming = [next_fire(s.cron, s.timezone, now) for s in self._schedules.values()]
        return PeriodicResult(
            enqueued=tuple(enqueued),
            skipped=tuple(skipped),
            next_fire_at=min(upcoming, default=None),
        )

    async def _rows(self) -> dict[str, PeriodicSchedule]:
        return {row.name: row for row in await self._store.periodic_schedules([*self._schedules])}

    async def _fire(
        self,
        schedule: ScheduleDefinition,
        fire_at: datetime,
        enqueued: list[FiredTask],
        skipped: list[tuple[str, datetime]],
        *,
        missed: bool,
    ) -> None:
        run = not missed or schedule.missed == "run_once"
        result = await self._store.fire_periodic(
            schedule, fire_at, next_fire(schedule.cron, schedule.timezone, fire_at), enqueue=run
        )
        if not result.fenced:
            return  # another engine handled this fire time (or a later one) first
        if result.task_id is None:
            skipped.append((schedule.name, fire_at))
            self._log.warning(
                "periodic_run_skipped",
                schedule=schedule.name,
                fire_at=fire_at.isoformat(),
                queue=schedule.queue,
                kind=schedule.kind,
                reason="missed",
            )
            return
        enqueued.append(FiredTask(schedule.name, fire_at, result.task_id, missed))
        self._metrics.tasks_enqueued.add(1, {"queue": schedule.queue, "kind": schedule.kind})
        self._log.info(
            "periodic_task_enqueued",
            schedule=schedule.name,
            fire_at=fire_at.isoformat(),
            task_id=str(result.task_id),
            queue=schedule.queue,
            kind=schedule.kind,
            missed=missed,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register the schedules and fire what is due, then report started (so an engine
        that started has its schedules listed); then sleep until the next fire time of any
        schedule and fire again, until cancelled. Database failures are reported to the
        health tracker and retried."""
        started = False
        while True:
            delay = self._retry_interval
            attempted_at = trio.current_time()
            try:
                result = await self.run_once()
            except StoreError as exc:
                self._health.failed("periodic", exc)
            else:
                self._health.succeeded(started=attempted_at)
                if result.next_fire_at is not None:
                    delay = (result.next_fire_at - self._clock()).total_seconds() + _WAKE_MARGIN
            if not started:
                task_status.started()
                started = True
            await trio.sleep(min(max(delay, 0.0), MAX_SLEEP))


def resolve_schedules(
    declared: Iterable[Periodic],
    configured: Sequence[PeriodicScheduleSettings],
    registry: TaskRegistry,
    prepare: Callable[[Periodic, Task], NewTask],
) -> list[ScheduleDefinition]:
    """Turn the schedules given in code, in the registered classes' ``PERIODIC`` and in the
    settings into definitions, checking each names a registered kind and a valid task.

    Raises:
        ConfigError: a schedule without a task, of an unregistered kind, with a payload its
            class refuses, or two schedules with one name.
    """
    pairs: list[tuple[Periodic, Task]] = []
    for periodic in declared:
        if not isinstance(periodic, Periodic):
            raise ConfigError(f"periodic= takes Periodic(...) values, got {periodic!r}")
        if periodic.task is None:
            raise ConfigError(
                f"Periodic({periodic.cron!r}) given to open_engine needs a task to enqueue"
            )
        pairs.append((periodic, periodic.task))
    for cls in registry:
        for periodic in cls.PERIODIC:
            pairs.append((periodic, periodic.task or _instantiate(cls)))
    pairs.extend(configured_tasks(configured, registry))
    definitions: dict[str, ScheduleDefinition] = {}
    for periodic, task in pairs:
        try:
            new = prepare(periodic, task)
        except UnknownTaskKind as exc:
            raise ConfigError(
                f"periodic schedule {periodic.name or periodic.cron!r}: {exc} (add its class "
                "to open_engine(..., tasks=[...]))"
            ) from None
        except InvalidTaskError as exc:
            raise ConfigError(
                f"periodic schedule {periodic.name or _kind_of(task)!r}: {exc}"
            ) from None
        name = periodic.name or new.kind
        if name in definitions:
            raise ConfigError(
                f"two periodic schedules are named {name!r}: give each a distinct name="
            )
        definitions[name] = ScheduleDefinition(
            name=name,
            cron=periodic.cron,
            timezone=periodic.timezone,
            queue=new.queue,
            kind=new.kind,
            missed=periodic.missed,
            payload_json=new.payload_json,
            priority=new.priority,
            max_attempts=new.max_attempts,
            attempt_timeout=new.attempt_timeout,
            region=new.region,
        )
    return list(definitions.values())


def configured_tasks(
    configured: Sequence[PeriodicScheduleSettings], registry: TaskRegistry
) -> list[tuple[Periodic, Task]]:
    """The schedules of the settings with their tasks, built by the registered classes
    (``config validate`` checks them this way too).

    Raises:
        ConfigError: a kind that is not registered, or a payload its class refuses.
    """
    pairs: list[tuple[Periodic, Task]] = []
    for index, item in enumerate(configured):
        where = f"periodic.schedules[{index}]"
        try:
            cls = registry.get(item.kind)
            task = cls.model_validate(item.payload)
        except UnknownTaskKind:
            raise ConfigError(
                f"{where}: no task class is registered for kind {item.kind!r} (registered: "
                f"{', '.join(registry.kinds) or 'none'})"
            ) from None
        except ValidationError as exc:
            raise ConfigError(f"{where}: the payload does not fit {item.kind!r}: {exc}") from None
        periodic = Periodic(
            item.cron,
            task,
            queue=item.queue,
            name=item.name,
            timezone=item.timezone,
            missed=item.missed,
            priority=item.priority,
        )
        pairs.append((periodic, task))
    return pairs


def _kind_of(task: Task) -> str:
    # For messages only: the kind the task's class declares.
    return str(getattr(type(task), "KIND", type(task).__qualname__))


def _instantiate(cls: type[Task]) -> Task:
    try:
        return cls()
    except ValidationError as exc:
        raise ConfigError(
            f"{cls.__qualname__}.PERIODIC needs {cls.__qualname__}() to work without "
            f"arguments (give every field a default, or pass task= to Periodic): {exc}"
        ) from None
