"""The ``iron-defer-trio`` command line (typer). Parses, builds settings, runs one small
coroutine with ``trio.run``; no business logic lives here."""

from __future__ import annotations

import os
from typing import Annotated, NoReturn

import trio
import typer

from iron_defer_trio import __version__
from iron_defer_trio._api import migrate as run_migrations
from iron_defer_trio.config import Settings, mask_dsn
from iron_defer_trio.errors import IronDeferError

app = typer.Typer(
    name="iron-defer-trio",
    help="A durable background task queue for trio, backed by PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="DATABASE_URL",
        help="PostgreSQL URL (default: $DATABASE_URL).",
        show_default=False,
    ),
]


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


@app.command()
def migrate(database_url: DatabaseUrl = None) -> None:
    """Apply pending schema migrations (safe to run from many processes at once)."""
    url = database_url or os.environ.get("DATABASE_URL")
    if not url:
        _fail("no database: pass --database-url or set DATABASE_URL", code=2)
    try:
        settings = Settings.build(database={"url": url})
        report = trio.run(run_migrations, settings)
    except IronDeferError as exc:
        _fail(str(exc))
    target = mask_dsn(url)
    if report.applied:
        typer.echo(f"applied migrations {list(report.applied)} to {target}")
    else:
        typer.echo(f"{target} is up to date")


def _fail(message: str, *, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    app()
