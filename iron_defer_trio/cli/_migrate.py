"""``iron-defer-trio migrate``: apply pending schema migrations."""

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
) -> None:
    """Apply pending schema migrations (safe to run from many processes at once).

    Other commands never migrate: run this once per database, and after each upgrade.
    """
    settings = CliState.of(ctx).load(database_url=database_url).settings
    settings = require_database(settings)
    report = run(run_migrations, settings)
    target = mask_dsn(settings.dsn())
    if report.applied:
        echo(f"applied migrations {list(report.applied)} to {target}")
    else:
        echo(f"{target} is up to date")
    if report.unknown:
        typer.echo(
            f"warning: {target} has migrations {list(report.unknown)} that this version does "
            "not know (a newer release migrated it)",
            err=True,
        )
