"""``iron-defer-trio periodic list``: the registered periodic schedules."""

from typing import Annotated

import typer

from iron_defer_trio import PeriodicSchedule
from iron_defer_trio.cli._common import (
    database_settings,
    echo,
    open_producer,
    print_json,
    run,
    table,
    timestamp,
)
from iron_defer_trio.config import Settings
from iron_defer_trio.http._schemas import PeriodicList, PeriodicOut

periodic_app = typer.Typer(
    name="periodic",
    help="Show periodic (cron) schedules.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@periodic_app.command("list")
def list_periodic(
    ctx: typer.Context,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the schedules as JSON (the REST API's GET /periodic shape)."
        ),
    ] = False,
) -> None:
    """Show every registered schedule with its last and next fire time."""
    schedules = run(_schedules, database_settings(ctx))
    listing = PeriodicList(schedules=[PeriodicOut.from_schedule(item) for item in schedules])
    if as_json:
        print_json(listing.to_json())
        return
    if not listing.schedules:
        echo("no periodic schedules yet (an engine registers its schedules when it starts)")
        return
    echo(
        table(
            ["NAME", "CRON", "TIMEZONE", "QUEUE", "KIND", "MISSED", "LAST_FIRE", "NEXT_FIRE"],
            [
                [
                    item.name,
                    item.cron,
                    item.timezone,
                    item.queue,
                    item.kind,
                    item.missed,
                    timestamp(item.last_fire_at),
                    timestamp(item.next_fire_at),
                ]
                for item in listing.schedules
            ],
        )
    )


async def _schedules(settings: Settings) -> list[PeriodicSchedule]:
    async with open_producer(settings) as engine:
        return await engine.periodic_schedules()
