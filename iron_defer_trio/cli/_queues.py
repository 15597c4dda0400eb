"""``iron-defer-trio queues [pause|resume NAME]``: per-queue counts; pausing and resuming."""

from typing import Annotated

import typer

from iron_defer_trio import QueueStatistics
from iron_defer_trio.cli._common import (
    CliError,
    ExitCode,
    database_settings,
    echo,
    open_producer,
    print_json,
    run,
    table,
    timestamp,
)
from iron_defer_trio.config import Settings
from iron_defer_trio.domain.limits import QUEUE_NAME_PATTERN
from iron_defer_trio.http._schemas import QueueList, QueueOut

queues_app = typer.Typer(
    name="queues",
    help="Show per-queue counts; pause and resume queues.",
    invoke_without_command=True,
    rich_markup_mode=None,
)

QueueName = Annotated[
    str, typer.Argument(metavar="NAME", help="The queue's name.", show_default=False)
]
AsJson = Annotated[
    bool,
    typer.Option("--json", help="Print the queue as JSON (the REST API's queue shape)."),
]


@queues_app.callback()
def queues(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the queues as JSON (the REST API's GET /queues shape)."),
    ] = False,
    by_region: Annotated[
        bool,
        typer.Option(
            "--by-region",
            help="One row per queue and region (region '-': unpinned tasks).",
        ),
    ] = False,
) -> None:
    """Show every queue that has tasks or is paused: counts by status, active workers,
    oldest wait, paused state. Subcommands pause and resume queues."""
    if ctx.invoked_subcommand is not None:
        return
    stats = run(_queue_stats, database_settings(ctx), by_region)
    listing = QueueList(queues=[QueueOut.from_statistics(item) for item in stats])
    if as_json:
        print_json(listing.to_json())
        return
    if not listing.queues:
        echo("no queues yet (a queue appears once a task is submitted to it)")
        return
    region = ["REGION"] if by_region else []
    echo(
        table(
            [
                "QUEUE",
                *region,
                "PENDING",
                "SCHEDULED",
                "RUNNING",
                "SUSPENDED",
                "COMPLETED",
                "FAILED",
                "CANCELLED",
                "WORKERS",
                "OLDEST_PENDING",
                "PAUSED",
            ],
            [
                [
                    item.queue,
                    *([item.region or "-"] if by_region else []),
                    str(item.pending),
                    str(item.scheduled),
                    str(item.running),
                    str(item.suspended),
                    str(item.completed),
                    str(item.failed),
                    str(item.cancelled),
                    str(item.active_workers),
                    _age(item.oldest_pending_age_seconds),
                    "yes" if item.paused else "-",
                ]
                for item in listing.queues
            ],
        )
    )


@queues_app.command("pause")
def pause(ctx: typer.Context, name: QueueName, as_json: AsJson = False) -> None:
    """Pause a queue on every engine: none claims from it until it is resumed. It still
    accepts tasks; running tasks finish."""
    stats = run(_pause, database_settings(ctx), _queue_name(name), True)
    _print_queue(stats, as_json, f"paused queue {name} (since {timestamp(stats.paused_at)})")


@queues_app.command("resume")
def resume(ctx: typer.Context, name: QueueName, as_json: AsJson = False) -> None:
    """Resume a paused queue: engines claim from it again at once."""
    stats = run(_pause, database_settings(ctx), _queue_name(name), False)
    _print_queue(stats, as_json, f"resumed queue {name}")


def _queue_name(name: str) -> str:
    if not QUEUE_NAME_PATTERN.fullmatch(name):
        raise CliError(
            f"invalid queue name {name!r}: use 1-128 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit",
            ExitCode.USAGE,
        )
    return name


def _print_queue(stats: QueueStatistics, as_json: bool, message: str) -> None:
    if as_json:
        print_json(QueueOut.from_statistics(stats).to_json())
    else:
        echo(message)


async def _pause(settings: Settings, name: str, paused: bool) -> QueueStatistics:
    async with open_producer(settings) as engine:
        if paused:
            return await engine.pause_queue(name)
        return await engine.resume_queue(name)


async def _queue_stats(settings: Settings, by_region: bool) -> list[QueueStatistics]:
    async with open_producer(settings) as engine:
        return await engine.queue_stats(by_region=by_region)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
