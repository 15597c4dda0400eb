"""``iron-defer-trio serve``: run workers, the sweeper and the REST API until stopped."""

from __future__ import annotations

import sys
from functools import partial
from typing import Annotated, Any, NoReturn

import trio
import typer

from iron_defer_trio import server
from iron_defer_trio._modules import load_task_classes
from iron_defer_trio._process import tune_garbage_collector
from iron_defer_trio.cli._common import CliState
from iron_defer_trio.errors import ConfigError, IronDeferError
from iron_defer_trio.observability.logs import configure_json_logging

#: Exit status after a second signal cut the graceful shutdown short.
EXIT_FORCED = 1


def serve_command(
    ctx: typer.Context,
    app: Annotated[
        list[str] | None,
        typer.Option(
            "--app",
            help="Module whose Task classes to run (repeatable); default tasks.modules.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="TCP port of the REST API (default server.port, 8080).", show_default=False
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="Interface to bind (default server.host, 127.0.0.1).", show_default=False
        ),
    ] = None,
    queue: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            help="NAME=CONCURRENCY (repeatable); the complete list of queues to work on.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help="Base TOML config file.", show_default=False),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="debug, info, warning or error (default observability.log_level, info).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the engine, the sweeper and the REST API in one process until SIGTERM/SIGINT.

    Without a database URL (DATABASE_URL, database.url or --database-url), a private
    PostgreSQL cluster is started in the user's data directory and stopped on exit.
    """
    state = CliState.of(ctx)
    overrides: dict[tuple[str, ...], Any] = {}
    names: dict[tuple[str, ...], str] = {}
    if port is not None:
        overrides["server", "port"] = port
        names["server", "port"] = "--port"
    if host is not None:
        overrides["server", "host"] = host
        names["server", "host"] = "--host"
    if queue:
        overrides[("queues",)] = ",".join(queue)
        names[("queues",)] = "--queue"
    if app:
        overrides["tasks", "modules"] = list(app)
        names["tasks", "modules"] = "--app"
    if config is not None:
        state.config_file = config
    if log_level is not None:
        overrides["observability", "log_level"] = log_level
        names["observability", "log_level"] = "--log-level"
    try:
        settings = state.load(overrides, names).settings
        configure_json_logging(settings.observability.log_level)
        if not settings.tasks.modules:
            raise ConfigError(
                "serve needs the Task classes to run: pass --app MODULE or set tasks.modules"
            )
        tasks = load_task_classes(settings.tasks.modules)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc), code=2)
    try:
        with server.database_for(settings) as ready, server.open_telemetry(ready) as telemetry:
            tune_garbage_collector()
            trio.run(partial(server.serve, ready, tasks=tasks, telemetry=telemetry))
    except server.ForcedShutdown as exc:
        _fail(str(exc), code=EXIT_FORCED)
    except ConfigError as exc:
        _fail(str(exc), code=2)
    except IronDeferError as exc:
        _fail(str(exc), code=1)
    except OSError as exc:
        # Binding the port or resolving the host failed: say which, without a traceback.
        where = f"{settings.server.host}:{settings.server.port}"
        _fail(f"cannot listen on {where}: {exc.strerror or exc}", code=1)
    except KeyboardInterrupt:
        # Interrupted before the signal handlers were installed (during startup).
        _fail("interrupted during startup", code=130)


def _fail(message: str, *, code: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)
