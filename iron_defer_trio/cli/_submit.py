"""``iron-defer-trio submit``: enqueue one task by kind and JSON payload."""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import typer
from pydantic import JsonValue, ValidationError

from iron_defer_trio import EnqueuedTask, Task
from iron_defer_trio._modules import load_task_classes
from iron_defer_trio.cli._common import (
    CliError,
    CliState,
    echo,
    format_field_errors,
    open_producer,
    parse_timestamp,
    print_json,
    read_json,
    require_database,
    run,
)
from iron_defer_trio.config import Settings
from iron_defer_trio.engine import TaskRegistry
from iron_defer_trio.http._schemas import TaskOut

_MODULES_KEY = ("tasks", "modules")


def submit(
    ctx: typer.Context,
    kind: Annotated[
        str,
        typer.Argument(
            metavar="KIND", help="The task kind: the KIND of a Task class.", show_default=False
        ),
    ],
    payload: Annotated[
        str,
        typer.Option(
            "--payload",
            metavar="JSON|@FILE|-",
            help="The task's fields as a JSON object: literal JSON, @path to read a file, "
            "or - to read standard input.",
            show_default=False,
        ),
    ],
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue",
            metavar="NAME",
            help="Queue to put the task on (default: the class's QUEUE, else 'default').",
            show_default=False,
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority",
            metavar="N",
            help="Higher runs first, -32768..32767 (default: the class's PRIORITY, else 0).",
            show_default=False,
        ),
    ] = None,
    scheduled_at: Annotated[
        str | None,
        typer.Option(
            "--scheduled-at",
            metavar="RFC3339",
            help="Earliest start, with a timezone, e.g. 2030-01-31T09:00:00Z (default: now).",
            show_default=False,
        ),
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            metavar="N",
            help="Attempts before the task fails for good, 1..1000 (default: the class's "
            "MAX_ATTEMPTS, else worker.max_attempts).",
            show_default=False,
        ),
    ] = None,
    attempt_timeout: Annotated[
        float | None,
        typer.Option(
            "--attempt-timeout",
            metavar="SECONDS",
            help="Seconds an attempt may run before it fails as timed out (default: the "
            "class's ATTEMPT_TIMEOUT, else no limit).",
            show_default=False,
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            help="Name this submission (1-255 characters) so that running the command again "
            "returns the same task instead of a new one (per queue; kept for "
            "worker.idempotency_retention after the task finished).",
            show_default=False,
        ),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            "--region",
            metavar="REGION",
            help="Pin the task to a region: only engines with that worker.region run it "
            "(default: the class's REGION, else any engine).",
            show_default=False,
        ),
    ] = None,
    app_modules: Annotated[
        list[str] | None,
        typer.Option(
            "--app",
            metavar="MODULE",
            help="Module defining the Task classes (repeatable; default: tasks.modules).",
            show_default=False,
        ),
    ] = None,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="Store the payload as given, without validating it against a Task class "
            "(task modules are not imported).",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the stored task as JSON instead of its id.")
    ] = False,
) -> None:
    """Submit a task; prints its id.

    The payload is validated against the Task class registered for KIND, found in the
    modules named by --app or tasks.modules. With --raw it is stored unvalidated: only
    engines that register KIND will run it.
    """
    state = CliState.of(ctx)
    data = read_json(payload, "--payload")
    when = None if scheduled_at is None else parse_timestamp(scheduled_at, "--scheduled-at")
    overrides: dict[tuple[str, ...], Any] = {_MODULES_KEY: app_modules} if app_modules else {}
    settings = state.load(overrides, {_MODULES_KEY: "--app"}).settings
    settings = require_database(settings)
    tasks = [] if raw else _task_classes(kind, settings)
    try:
        record = run(
            _submit,
            settings,
            tasks,
            _Request(
                kind,
                data,
                queue,
                priority,
                when,
                max_attempts,
                idempotency_key,
                attempt_timeout,
                region,
                not raw,
            ),
        )
    except ValidationError as exc:
        raise CliError(
            format_field_errors(
                exc, f"the payload does not fit task kind {kind!r}", prefix="payload"
            )
        ) from None
    task = TaskOut.from_record(record)
    if not record.created:
        # stderr: stdout stays the id (or the JSON) a script reads, whichever call made it.
        typer.echo(
            f"already submitted: idempotency key {idempotency_key!r} names task {task.id} "
            f"({task.status.value}); nothing new was stored",
            err=True,
        )
    if as_json:
        print_json(task.to_json())
    else:
        echo(str(task.id))


@dataclass(frozen=True, slots=True)
class _Request:
    """The arguments of one enqueue, carried into the coroutine in one piece."""

    kind: str
    payload: JsonValue
    queue: str | None
    priority: int | None
    scheduled_at: datetime | None
    max_attempts: int | None
    idempotency_key: str | None
    attempt_timeout: float | None
    region: str | None
    validate: bool


async def _submit(settings: Settings, tasks: list[type[Task]], request: _Request) -> EnqueuedTask:
    async with open_producer(settings, tasks) as engine:
        return await engine.enqueue_payload(
            request.queue,
            request.kind,
            request.payload,
            priority=request.priority,
            scheduled_at=request.scheduled_at,
            max_attempts=request.max_attempts,
            idempotency_key=request.idempotency_key,
            attempt_timeout=request.attempt_timeout,
            region=request.region,
            validate=request.validate,
        )


def _task_classes(kind: str, settings: Settings) -> list[type[Task]]:
    """The classes to validate with, or a usage error that says how to get them."""
    modules = settings.tasks.modules
    if not modules:
        raise CliError(
            f"cannot validate the payload of {kind!r}: no task modules are configured. Name "
            "the module that defines it with --app MODULE (or tasks.modules in config.toml), "
            f"or pass --raw to submit it unvalidated (stored as given; only engines that "
            f"register {kind!r} will run it)"
        )
    classes = load_task_classes(modules)
    registry = TaskRegistry(classes)
    if kind not in registry.kinds:
        known = ", ".join(repr(k) for k in registry.kinds)
        raise CliError(
            f"unknown task kind {kind!r}: no Task class in {', '.join(modules)} has "
            f"KIND = {kind!r} (known: {known}). Define it there, name its module with --app, "
            "or pass --raw to submit it unvalidated"
        )
    return classes
