"""``iron-defer-trio tasks list|get|cancel|signal|audit|retry``: read, cancel, resume and
retry tasks."""

import json
from enum import StrEnum
from typing import Annotated
from uuid import UUID

import typer
from pydantic import JsonValue

from iron_defer_trio import BulkRetry, TaskRecord, TaskStatus
from iron_defer_trio.cli._common import (
    CliError,
    ExitCode,
    database_settings,
    echo,
    open_producer,
    parse_task_id,
    print_json,
    read_json,
    run,
    table,
    task_detail,
    task_rows,
    timestamp,
)
from iron_defer_trio.config import Settings
from iron_defer_trio.domain import MAX_BULK_RETRY
from iron_defer_trio.http._schemas import (
    DEFAULT_PAGE,
    MAX_PAGE,
    AuditPage,
    BulkRetryOut,
    TaskOut,
    TaskPage,
)

tasks_app = typer.Typer(
    name="tasks",
    help="List, inspect, cancel, resume and retry tasks; show their audit trail.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

TaskId = Annotated[
    str, typer.Argument(metavar="ID", help="The task's id (a UUID).", show_default=False)
]
PageLimit = Annotated[
    int,
    typer.Option("--limit", metavar="N", min=1, max=MAX_PAGE, help=f"Page size, 1..{MAX_PAGE}."),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the task as a JSON object (the REST API's shape).")
]


@tasks_app.command("list")
def list_tasks(
    ctx: typer.Context,
    queue: Annotated[
        str | None,
        typer.Option("--queue", metavar="NAME", help="Only this queue.", show_default=False),
    ] = None,
    status: Annotated[
        TaskStatus | None,
        typer.Option(
            "--status", case_sensitive=False, help="Only this status.", show_default=False
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option("--kind", metavar="KIND", help="Only this kind.", show_default=False),
    ] = None,
    id_prefix: Annotated[
        str | None,
        typer.Option(
            "--id-prefix",
            metavar="HEX",
            help="Only tasks whose id starts with these hexadecimal digits (dashes allowed).",
            show_default=False,
        ),
    ] = None,
    limit: PageLimit = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        typer.Option(
            "--cursor",
            metavar="ID",
            help="Continue after a previous page: the 'next cursor' it printed.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the page as JSON (the REST API's GET /tasks shape)."),
    ] = False,
) -> None:
    """List tasks, newest first, one page at a time."""
    before = None if cursor is None else parse_task_id(cursor)
    settings = database_settings(ctx)
    page = run(_list, settings, queue, status, kind, limit, before, id_prefix)
    if as_json:
        print_json(page.to_json())
        return
    if not page.items:
        echo("no tasks" + (" after this cursor" if before is not None else ""))
    else:
        echo(task_rows(page.items))
    if page.next_cursor is not None:
        echo(f"next cursor: {page.next_cursor}")


async def _list(
    settings: Settings,
    queue: str | None,
    status: TaskStatus | None,
    kind: str | None,
    limit: int,
    before: UUID | None,
    id_prefix: str | None,
) -> TaskPage:
    async with open_producer(settings) as engine:
        # One more than the page tells whether another page follows, without a count(*).
        records = await engine.list(
            queue=queue,
            status=status,
            kind=kind,
            limit=limit + 1,
            before=before,
            id_prefix=id_prefix,
        )
    return TaskPage.from_records(records, limit)


@tasks_app.command("get")
def get_task(ctx: typer.Context, task_id: TaskId, as_json: AsJson = False) -> None:
    """Show one task."""
    the_id = parse_task_id(task_id)
    record = run(_get, database_settings(ctx), the_id)
    task = TaskOut.from_record(record)
    if as_json:
        print_json(task.to_json())
    else:
        echo(task_detail(task))


async def _get(settings: Settings, task_id: UUID) -> TaskRecord:
    async with open_producer(settings) as engine:
        return await engine.get(task_id)


@tasks_app.command("cancel")
def cancel_task(ctx: typer.Context, task_id: TaskId, as_json: AsJson = False) -> None:
    """Cancel a task. A running task is stopped on whichever engine runs it (a finished task
    is a conflict)."""
    the_id = parse_task_id(task_id)
    record = run(_cancel, database_settings(ctx), the_id)
    task = TaskOut.from_record(record)
    if as_json:
        print_json(task.to_json())
    elif task.status is TaskStatus.RUNNING:
        echo(
            f"cancellation requested for running task {task.id}: "
            "it ends cancelled once its handler stops"
        )
    else:
        echo(f"cancelled task {task.id}")


async def _cancel(settings: Settings, task_id: UUID) -> TaskRecord:
    async with open_producer(settings) as engine:
        return await engine.cancel(task_id)


@tasks_app.command("audit")
def task_audit(
    ctx: typer.Context,
    task_id: TaskId,
    limit: PageLimit = DEFAULT_PAGE,
    cursor: Annotated[
        int | None,
        typer.Option(
            "--cursor",
            metavar="N",
            min=0,
            max=2**63 - 1,
            help="Continue after a previous page: the 'next cursor' it printed.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the page as JSON (the REST API's GET /tasks/{id}/audit shape)."
        ),
    ] = False,
) -> None:
    """Show a task's audit trail, oldest first (recorded when database.audit_log is on)."""
    the_id = parse_task_id(task_id)
    page = run(_audit, database_settings(ctx), the_id, cursor, limit)
    if as_json:
        print_json(page.to_json())
        return
    if not page.items:
        echo("no audit entries (is database.audit_log on?)" if cursor is None else "no more")
    else:
        echo(
            table(
                ["ID", "AT", "EVENT", "FROM", "TO", "ATTEMPT", "WORKER", "DETAILS"],
                (
                    (
                        str(entry.id),
                        timestamp(entry.at, precise=True),
                        entry.event,
                        "-" if entry.from_status is None else entry.from_status.value,
                        entry.to_status.value,
                        str(entry.attempt),
                        "-" if entry.worker_id is None else str(entry.worker_id),
                        "-" if entry.metadata is None else json.dumps(entry.metadata),
                    )
                    for entry in page.items
                ),
            )
        )
    if page.next_cursor is not None:
        echo(f"next cursor: {page.next_cursor}")


async def _audit(settings: Settings, task_id: UUID, after: int | None, limit: int) -> AuditPage:
    async with open_producer(settings) as engine:
        entries = await engine.audit_log(task_id, after=after, limit=limit + 1)
    return AuditPage.from_entries(entries, limit)


@tasks_app.command("signal")
def signal_task(
    ctx: typer.Context,
    task_id: TaskId,
    payload: Annotated[
        str,
        typer.Option(
            "--payload",
            metavar="JSON|@FILE|-",
            help="What the task's next attempt reads as ctx.signal_payload: literal JSON, "
            "@path to read a file, or - to read standard input. Default: null.",
        ),
    ] = "null",
    as_json: AsJson = False,
) -> None:
    """Resume a suspended task with a payload (a task that is not suspended is a conflict)."""
    the_id = parse_task_id(task_id)
    data = read_json(payload, "--payload")
    record = run(_signal, database_settings(ctx), the_id, data)
    task = TaskOut.from_record(record)
    if as_json:
        print_json(task.to_json())
    else:
        echo(f"signalled task {task.id}: pending again")


async def _signal(settings: Settings, task_id: UUID, payload: JsonValue) -> TaskRecord:
    async with open_producer(settings) as engine:
        return await engine.signal(task_id, payload)


class RetryStatus(StrEnum):
    """The statuses a retry takes tasks from."""

    FAILED = "failed"
    CANCELLED = "cancelled"


@tasks_app.command("retry")
def retry_tasks(
    ctx: typer.Context,
    task_id: Annotated[
        str | None,
        typer.Argument(
            metavar="ID",
            help="The task to retry (a UUID). Omit it to retry by --queue/--status/--kind.",
            show_default=False,
        ),
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue", metavar="NAME", help="Retry the tasks of this queue.", show_default=False
        ),
    ] = None,
    status: Annotated[
        RetryStatus,
        typer.Option("--status", case_sensitive=False, help="Which finished tasks to retry."),
    ] = RetryStatus.FAILED,
    kind: Annotated[
        str | None,
        typer.Option("--kind", metavar="KIND", help="Only this kind.", show_default=False),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Retry the counted tasks without asking for confirmation."),
    ] = False,
    expect: Annotated[
        int | None,
        typer.Option(
            "--expect",
            metavar="N",
            min=0,
            max=MAX_BULK_RETRY,
            help="Retry only if exactly N tasks match (a count confirmed earlier); no prompt.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the result as JSON (the task, or the POST /tasks/retry answer).",
        ),
    ] = False,
) -> None:
    """Run a failed or cancelled task again (new attempt budget), or every failed (or
    cancelled) task of a queue: the matching tasks are counted and, once confirmed, retried
    only if that many still match."""
    if task_id is not None:
        if queue is not None or kind is not None or expect is not None:
            raise CliError("give either a task ID or --queue (with --status/--kind), not both")
        record = run(_retry, database_settings(ctx), parse_task_id(task_id))
        task = TaskOut.from_record(record)
        if as_json:
            print_json(task.to_json())
        else:
            echo(f"retried task {task.id}: pending again (attempt budget {task.max_attempts})")
        return
    if queue is None:
        raise CliError("give a task ID, or --queue to retry the tasks of a queue")
    settings = database_settings(ctx)
    the_status = TaskStatus(status.value)
    if expect is None:
        counted = run(_retry_many, settings, queue, the_status, kind, None)
        expect = counted.matched
        what = f"{status.value} task(s) of queue {queue!r}" + (
            f" of kind {kind!r}" if kind is not None else ""
        )
        if counted.more and not as_json:
            echo(
                f"more than {MAX_BULK_RETRY} {what} match: the {MAX_BULK_RETRY} that finished "
                "first are retried (run the command again for the next ones)"
            )
        elif not as_json:
            echo(f"{expect} {what} match")
        if expect == 0:
            if as_json:
                print_json(BulkRetryOut.from_result(counted).to_json())
            return
        if not yes and not typer.confirm(f"Retry {expect} task(s)?", err=True):
            raise CliError("not confirmed: nothing was retried", ExitCode.FAILURE)
    result = run(_retry_many, settings, queue, the_status, kind, expect)
    if as_json:
        print_json(BulkRetryOut.from_result(result).to_json())
    else:
        echo(f"retried {result.retried} task(s): pending again")


async def _retry(settings: Settings, task_id: UUID) -> TaskRecord:
    async with open_producer(settings) as engine:
        return await engine.retry(task_id)


async def _retry_many(
    settings: Settings, queue: str, status: TaskStatus, kind: str | None, expect: int | None
) -> BulkRetry:
    async with open_producer(settings) as engine:
        return await engine.retry_many(queue=queue, status=status, kind=kind, expect=expect)
