"""The ``iron-defer-trio`` command line (typer). Each command parses its arguments, builds
settings, and runs one small coroutine with ``trio.run``; no business logic lives here.

Errors are translated once, in :func:`run_cli`: one ``error: ...`` line on stderr (field and
configuration problems add one indented line each) and a documented exit code, never a
traceback.
"""

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from iron_defer_trio import __version__
from iron_defer_trio.cli._common import CliState, ExitCode, describe, echo, echo_error
from iron_defer_trio.cli._config import config_app
from iron_defer_trio.cli._migrate import migrate
from iron_defer_trio.cli._periodic import periodic_app
from iron_defer_trio.cli._queues import queues_app
from iron_defer_trio.cli._serve import serve_command
from iron_defer_trio.cli._submit import submit
from iron_defer_trio.cli._tasks import tasks_app

__all__ = ["app", "main", "run_cli"]

PROG = "iron-defer-trio"

app = typer.Typer(
    name=PROG,
    help="A durable background task queue for trio, backed by PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help text: docstrings mention options in [brackets], which rich would eat.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="Base config file (default: $IRON_DEFER_CONFIG, else ./config.toml if present).",
            show_default=False,
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            metavar="NAME",
            help="Also read config.NAME.toml beside the base file (default: $IRON_DEFER_PROFILE).",
            show_default=False,
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            metavar="URL",
            help="PostgreSQL URL; overrides database.url and $DATABASE_URL.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """A durable background task queue for trio, backed by PostgreSQL."""
    state = CliState.of(ctx)
    state.config_file = config
    state.profile = profile
    state.database_url = database_url


@app.command()
def version() -> None:
    """Print the installed version."""
    echo(__version__)


app.command("submit")(submit)
app.add_typer(tasks_app)
app.add_typer(queues_app)
app.command("migrate")(migrate)
app.add_typer(config_app)
app.command("serve")(serve_command)
app.add_typer(periodic_app)


def run_cli(args: Sequence[str] | None = None) -> int:
    """Run the command line on ``args`` (default ``sys.argv[1:]``); return the exit code."""
    state = CliState()
    command = typer.main.get_command(app)
    try:
        # Not standalone: click would print usage errors in its multi-line format and let
        # our exceptions through as tracebacks; both are translated below instead.
        result = command.main(
            args=list(sys.argv[1:] if args is None else args),
            prog_name=PROG,
            standalone_mode=False,
            obj=state,
        )
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        echo_error("aborted")
        return ExitCode.FAILURE
    except typer.TyperException as exc:  # click's UsageError and friends
        if type(exc).__name__ == "NoArgsIsHelpError":
            # A bare group (`iron-defer-trio tasks`): its help is the useful answer. Typer
            # itself detects this class by name, it is not exported.
            typer.echo(exc.format_message(), err=True)
        else:
            echo_error(state.redact(_usage_message(exc)))
        return exc.exit_code
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # every other failure: one line, never a traceback
        code, message = describe(exc)
        echo_error(state.redact(message))
        return code
    # In non-standalone mode click returns the exit code of an Exit raised inside a command.
    return result if isinstance(result, int) else ExitCode.OK


def _usage_message(exc: typer.TyperException) -> str:
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_cli())
