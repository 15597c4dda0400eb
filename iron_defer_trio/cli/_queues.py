"""``iron-defer-trio queues``: per-queue counts."""

from typing import Annotated

import typer

from iron_defer_trio import QueueStatistics
from iron_defer_trio.cli._common import (
    database_settings,
    echo,
    open_producer,
    print_json,
    run,
    table,
)
from iron_defer_trio.config import Settings
from iron_defer_trio.http._schemas import QueueList, QueueOut


def queues(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the queues as JSON (the REST API's GET /queues shape)."),
    ] = False,
) -> None:
    """Show every queue that has tasks: counts by status, active workers, oldest wait."""
    stats = run(_queue_stats, database_settings(ctx))
    listing = QueueList(queues=[QueueOut.from_statistics(item) for item in stats])
    if as_json:
        print_json(listing.to_json())
        return
    if not listing.queues:
        echo("no queues yet (a queue appears once a task is submitted to it)")
        return
    echo(
        table(
            [
                "QUEUE",
                "PENDING",
                "SCHEDULED",
                "RUNNING",
                "SUSPENDED",
                "COMPLETED",
                "FAILED",
                "CANCELLED",
                "WORKERS",
                "OLDEST_PENDING",
            ],
            [
                [
                    item.queue,
                    str(item.pending),
                    str(item.scheduled),
                    str(item.running),
                    str(item.suspended),
                    str(item.completed),
                    str(item.failed),
                    str(item.cancelled),
                    str(item.active_workers),
                    _age(item.oldest_pending_age_seconds),
                ]
                for item in listing.queues
            ],
        )
    )


async def _queue_stats(settings: Settings) -> list[QueueStatistics]:
    async with open_producer(settings) as engine:
        return await engine.queue_stats()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
