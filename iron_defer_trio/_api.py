"""``open_engine``: composes settings, the PostgreSQL store and the engine.

It also decides the exception shape once: an exception raised in the block comes out as
itself (after a graceful shutdown), not wrapped in the exception groups of the nurseries
underneath; a deliberate error of ours (``StoreUnavailable`` at startup, ``MigrationError``)
comes out as itself too; anything else that escapes an internal service becomes
:class:`~iron_defer_trio.EngineCrashed` chained to its cause. Cancellation passes untouched.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio
from pydantic import SecretStr

from iron_defer_trio.config import Settings
from iron_defer_trio.engine import Engine, TaskRegistry, run_engine
from iron_defer_trio.errors import ConfigError, EngineCrashed, IronDeferError
from iron_defer_trio.observability.logs import Logger, default_logger
from iron_defer_trio.observability.metrics import metrics_for
from iron_defer_trio.observability.tracing import get_tracer
from iron_defer_trio.store import MigrationReport, open_postgres_store, running_embedded_dsn
from iron_defer_trio.store import migrate as migrate_store

if TYPE_CHECKING:
    import random
    from collections.abc import AsyncIterator, Iterable, Mapping

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from iron_defer_trio.domain import Task
    from iron_defer_trio.domain.periodic import Periodic
    from iron_defer_trio.store.protocol import TaskStore


@asynccontextmanager
async def open_engine(
    dsn_or_settings: str | Settings,
    *,
    tasks: Iterable[type[Task]] = (),
    queues: Mapping[str, int] | None = None,
    migrate: bool = True,
    run_workers: bool = True,
    store: TaskStore | None = None,
    logger: Logger | None = None,
    rng: random.Random | None = None,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    periodic: Iterable[Periodic] = (),
) -> AsyncIterator[Engine]:
    """Open an engine for the lifetime of the ``async with`` block.

    Args:
        dsn_or_settings: a ``postgresql://`` URL, or a full :class:`Settings`.
        tasks: the Task classes this engine may enqueue and run.
        queues: queue name -> most tasks run at once; default ``settings.queues``
            (``{"default": 4}``).
        migrate: apply pending schema migrations first (under an advisory lock, so many
            processes may start together).
        run_workers: False gives a producer-only engine: it enqueues and reads, runs nothing.
        store: use this store instead of connecting one (tests, custom backends).
        logger: a structlog bound logger; default ``structlog.get_logger("iron_defer_trio")``.
        rng: random source for jitter (tests pass a seeded one).
        meter_provider: where metrics go; default the global OpenTelemetry meter provider
            (a no-op until the application sets one). Never installed globally.
        tracer_provider: where spans go; default the global tracer provider.
        periodic: recurring tasks (:class:`Periodic`) this engine fires, besides the
            ``PERIODIC`` of the registered classes and ``settings.periodic.schedules``. Only
            engines that run workers fire them; exactly one task is enqueued per fire time
            however many engines run the same schedules.

    Yields:
        The running :class:`Engine`. Workers claim tasks while the block runs.

    On exit (normal, or an exception from the block) the engine shuts down gracefully:
    claiming stops, running tasks get ``worker.shutdown_timeout`` seconds, the rest are
    cancelled and handed back as pending. If the surrounding scope is cancelled, the hand-back
    still runs (shielded, bounded), then the cancellation continues.

    Raises:
        ConfigError: invalid settings, task classes or periodic schedules (before anything
            starts).
        StoreUnavailable: the database cannot be reached at startup.
        MigrationError: the schema could not be migrated.
        EngineCrashed: an internal service failed (a bug); the cause is chained.
    """
    settings = _settings(dsn_or_settings)
    registry = TaskRegistry(tasks)
    log = logger or default_logger()
    body_error: Exception | None = None
    try:
        async with (
            _store(settings, store, migrate=migrate, log=log) as the_store,
            run_engine(
                the_store,
                registry=registry,
                settings=settings,
                queues=queues,
                run_workers=run_workers,
                log=log,
                rng=rng,
                metrics=metrics_for(meter_provider),
                tracer=get_tracer(tracer_provider),
                periodic=periodic,
            ) as engine,
        ):
            try:
                yield engine
            except Exception as exc:
                # Held back so the engine still drains gracefully, then re-raised below as
                # itself rather than inside the nurseries' exception groups.
                body_error = exc
    except BaseExceptionGroup as group:
        error = _collapse(group, body_error)
        if error is group:
            raise
        raise error from error.__cause__
    if body_error is not None:
        raise body_error


async def migrate(
    dsn_or_settings: str | Settings, *, unlogged: bool | None = None
) -> MigrationReport:
    """Bring the database schema up to date, as ``open_engine(..., migrate=True)`` does.

    Safe to run from many processes at once (an advisory lock serialises them).

    Args:
        unlogged: also make the tasks table UNLOGGED (True) or logged again (False); None
            leaves it as it is. Either is a table rewrite under an exclusive lock.

    Raises:
        StoreUnavailable: the database cannot be reached.
        MigrationError: a migration failed or an applied one was changed.
    """
    settings = _settings(dsn_or_settings)
    try:
        report = await migrate_store(settings.database)
        if unlogged is not None:
            async with open_postgres_store(settings.database) as store:
                if await store.unlogged() != unlogged:
                    await store.set_unlogged(unlogged)
        return report
    except BaseExceptionGroup as group:
        error = _collapse(group, None)
        if error is group:
            raise
        raise error from error.__cause__


def with_running_embedded_database(settings: Settings) -> Settings:
    """``settings``, pointed at the zero-setup database of a running ``serve`` when no
    database URL is configured and such a server runs; unchanged otherwise. Never starts a
    database (only ``serve`` does)."""
    if settings.database.url is not None:
        return settings
    dsn = running_embedded_dsn(settings.database.embedded_dir)
    if dsn is None:
        return settings
    database = settings.database.model_copy(update={"url": SecretStr(dsn)})
    return settings.model_copy(update={"database": database})


def _settings(dsn_or_settings: str | Settings) -> Settings:
    if isinstance(dsn_or_settings, Settings):
        return dsn_or_settings
    if isinstance(dsn_or_settings, str):
        return Settings.build(database={"url": dsn_or_settings})
    raise ConfigError(
        f"open_engine needs a postgresql:// URL or a Settings, got {type(dsn_or_settings)!r}"
    )


@asynccontextmanager
async def _store(
    settings: Settings, given: TaskStore | None, *, migrate: bool, log: Logger
) -> AsyncIterator[TaskStore]:
    if given is not None:
        yield given
        return
    async with open_postgres_store(settings.database, log=log) as store:
        if migrate:
            report = await store.migrate()
            if report.applied:
                log.info("migrations_applied", versions=list(report.applied))
            if report.unknown:
                log.warning("schema_newer_than_package", unknown_versions=list(report.unknown))
        await _check_persistence(store, settings, log)
        yield store


async def _check_persistence(store: TaskStore, settings: Settings, log: Logger) -> None:
    """Make the tasks table UNLOGGED when configured; refuse audit_log on an UNLOGGED table.

    Engines never turn an UNLOGGED table back into a logged one by themselves (a table
    rewrite under an exclusive lock, at the whim of whichever engine starts next): that is
    ``iron-defer-trio migrate --logged``, an operator's decision.
    """
    database = settings.database
    unlogged = await store.unlogged()
    if database.unlogged_tables:
        if not unlogged:
            log.warning("tasks_table_converting", to="unlogged")
            await store.set_unlogged(True)
        log.warning(
            "tasks_table_unlogged",
            consequence="PostgreSQL empties the tasks table after a crash or an unclean "
            "shutdown; tasks are not replicated",
        )
    elif unlogged:
        if database.audit_log:
            raise ConfigError(
                "database.audit_log is on but the tasks table is UNLOGGED (an engine with "
                "database.unlogged_tables made it so): an audit trail needs durable tasks; "
                "run `iron-defer-trio migrate --logged` first"
            )
        log.warning(
            "tasks_table_unlogged",
            consequence="the tasks table is UNLOGGED although database.unlogged_tables is "
            "off; run `iron-defer-trio migrate --logged` to make it durable",
        )


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def _collapse(
    group: BaseExceptionGroup[BaseException], body_error: Exception | None
) -> BaseException:
    leaves = _leaves(group)
    real = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    if not real:
        # Pure cancellation: hand the group back untouched, the cancelled scope absorbs it.
        return group
    for exc in real:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            return exc
    if len(real) == 1 and isinstance(real[0], IronDeferError):
        error: BaseException = real[0]
    else:
        error = EngineCrashed(
            "an internal iron-defer-trio service failed: "
            + "; ".join(f"{type(e).__name__}: {e}" for e in real)
        )
        error.__cause__ = real[0] if len(real) == 1 else group
    if body_error is not None and error.__context__ is None:
        error.__context__ = body_error
    return error
