"""``iron-defer-trio migrate``: apply pending schema migrations."""

from functools import partial
from typing import Annotated

import typer

from iron_defer_trio._api import migrate as run_migrations
from iron_defer_trio.cli._common import CliState, echo, require_database, run
from iron_defer_trio.config import mask_dsn


def migrate(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            metavar="URL",
            help="PostgreSQL URL; same as the global --database-url (kept here so "
            "`migrate --database-url URL` works too).",
            show_default=False,
        ),
    ] = None,
    logged: Annotated[
        bool | None,
        typer.Option(
            "--logged/--unlogged",
            help="Also make the tasks table logged (durable, the default state) or UNLOGGED "
            "(faster, emptied by crash recovery). A table rewrite under an exclusive lock: "
            "stop the engines first. Engines with database.unlogged_tables convert to "
            "UNLOGGED by themselves; going back is only done here.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Apply pending schema migrations (safe to run from many processes at once).

    Other commands never migrate: run this once per database, and after each upgrade.
    """
    settings = CliState.of(ctx).load(database_url=database_url).settings
    settings = require_database(settings)
    unlogged = None if logged is None else not logged
    report = run(partial(run_migrations, unlogged=unlogged), settings)
    target = mask_dsn(settings.dsn())
    if report.applied:
        echo(f"applied migrations {list(report.applied)} to {target}")
    else:
        echo(f"{target} is up to date")
    if logged is not None:
        echo(f"the tasks table is {'logged' if logged else 'UNLOGGED'}")
    if report.unknown:
        typer.echo(
            f"warning: {target} has migrations {list(report.unknown)} that this version does "
            "not know (a newer release migrated it)",
            err=True,
        )
