"""Periodic (cron) schedules: their declaration and the fire-time arithmetic.

Pure: every function takes the time it reasons about as an argument. Cron expressions are
evaluated by ``cronsim`` in the schedule's IANA time zone (``zoneinfo``), so "0 9 * * *" in
``Europe/Paris`` fires at 09:00 Paris time on both sides of a daylight-saving change.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict

from iron_defer_trio.errors import ConfigError

if TYPE_CHECKING:
    from iron_defer_trio.domain.task import Task

#: What a schedule does with fire times that passed while no engine ran it: ``run_once`` enqueues
#: one task for the latest of them, ``skip`` drops them all.
MissedPolicy = Literal["run_once", "skip"]
MISSED_POLICIES: tuple[str, ...] = ("run_once", "skip")
#: Schedule names are primary keys and log fields: short, printable.
MAX_NAME_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Periodic:
    """A recurring task: enqueue ``task`` at every fire time of the cron expression ``cron``.

    ``cron`` has the 5 standard fields (minute hour day-of-month month day-of-week), or 6 with a
    leading seconds field (``"*/10 * * * * *"``: every ten seconds). Give it to
    ``open_engine(..., periodic=[...])``, or list it in a Task class's ``PERIODIC`` attribute
    with ``task`` left out (the class is then instantiated with no arguments).

    Exactly one task is enqueued per fire time, however many engines run the schedule; see
    docs/guides/periodic-tasks.md.

    Args:
        cron: the cron expression.
        task: what to enqueue (None only inside a Task class's ``PERIODIC``).
        queue: where to enqueue it (default: the class's ``QUEUE``, else ``"default"``).
        name: the schedule's identity in the database (default: the task's kind). Two
            schedules of one engine need distinct names.
        timezone: IANA time zone the expression is read in (default UTC).
        missed: fire times that passed while no engine ran (downtime) are enqueued once, as
            one task for the latest of them (``"run_once"``), or dropped (``"skip"``).
        priority: the task's priority (default: the class's ``PRIORITY``).

    Raises:
        ConfigError: invalid cron expression, unknown time zone, unknown ``missed`` value or
            invalid name.
    """

    cron: str
    task: Task | None = None
    _: KW_ONLY
    queue: str | None = None
    name: str | None = None
    timezone: str = "UTC"
    missed: MissedPolicy = "run_once"
    priority: int | None = None

    def __post_init__(self) -> None:
        validate_cron(self.cron)
        zone(self.timezone)
        if self.missed not in MISSED_POLICIES:
            raise ConfigError(
                f"periodic missed={self.missed!r}: use one of {', '.join(MISSED_POLICIES)}"
            )
        if self.name is not None:
            validate_schedule_name(self.name)


class _ScheduleFields(BaseModel):
    """What defines a schedule, in the definition and in the stored row alike."""

    model_config = ConfigDict(frozen=True)

    name: str
    cron: str
    timezone: str
    queue: str
    kind: str
    missed: MissedPolicy


class ScheduleDefinition(_ScheduleFields):
    """A resolved schedule, as an engine registers it in the database."""

    #: The task's fields as JSON text (encoded once, size-checked).
    payload_json: str
    priority: int
    max_attempts: int
    attempt_timeout: float | None = None
    #: The task class's REGION (None: unpinned).
    region: str | None = None


class PeriodicSchedule(_ScheduleFields):
    """A schedule as stored in the database, at the moment it was read."""

    #: The latest fire time handled (a task enqueued, or a missed run skipped); None before.
    last_fire_at: datetime | None
    #: The next fire time, as computed by the engine that last registered or fired it.
    next_fire_at: datetime | None
    created_at: datetime
    updated_at: datetime


def validate_schedule_name(name: str) -> str:
    """Return ``name`` if it can name a schedule, else raise :class:`ConfigError`."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"invalid periodic schedule name {name!r}: use 1-255 characters")
    return name


def validate_cron(cron: str) -> str:
    """Return ``cron`` if cronsim accepts it (5 fields, or 6 with seconds first)."""
    if not isinstance(cron, str):
        raise ConfigError(f"invalid cron expression {cron!r}: expected a string")
    try:
        CronSim(cron, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ConfigError(
            f"invalid cron expression {cron!r}: {exc} (use 5 fields 'minute hour "
            "day-of-month month day-of-week', or 6 with a leading seconds field)"
        ) from None
    return cron


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; raises :class:`ConfigError` for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def next_fire(cron: str, timezone: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (an aware datetime), in UTC."""
    local = after.astimezone(zone(timezone))
    return next(CronSim(cron, local)).astimezone(UTC)


def previous_fire(cron: str, timezone: str, at_or_before: datetime) -> datetime:
    """The latest fire time at or before ``at_or_before`` (an aware datetime), in UTC."""
    # cronsim works in whole seconds and iterates strictly before its start when reversed.
    start = at_or_before.replace(microsecond=0) + timedelta(seconds=1)
    return next(CronSim(cron, start.astimezone(zone(timezone)), reverse=True)).astimezone(UTC)


def fires_between(
    cron: str, timezone: str, after: datetime, until: datetime, *, limit: int
) -> list[datetime]:
    """Fire times in ``(after, until]``, oldest first; at most the first ``limit`` of them
    (callers keep the window short, so the bound only guards against a pathological one)."""
    fires: list[datetime] = []
    current = after
    while len(fires) < limit:
        current = next_fire(cron, timezone, current)
        if current > until:
            break
        fires.append(current)
    return fires
