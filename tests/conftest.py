"""Shared fixtures. Every test that touches PostgreSQL gets its own database, cloned from a
template migrated once per session, so tests are independent and can run in any order.

PostgreSQL is required: when it cannot be reached the tests error out, they never skip.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.config import Settings
from iron_defer_trio.store._cluster import PrivateCluster
from tests import pg

#: Engine settings for tests: short leases and intervals so recovery happens in seconds.
FAST_WORKER: dict[str, Any] = {
    "poll_interval": 0.2,
    "lease_duration": 2.0,
    "heartbeat_interval": 0.5,
    "sweeper_interval": 0.5,
    "shutdown_timeout": 5.0,
    "base_delay": 0.1,
    "max_delay": 1.0,
}


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database with the schema applied, cloned by each test."""
    name = pg.unique_name("iron_defer_tpl")
    try:
        pg.run_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # any failure here means "no database": say so plainly
        pytest.fail(
            f"PostgreSQL is required for the tests and is not reachable at {pg.ADMIN_DSN} "
            f"({type(exc).__name__}: {exc}). Start it (pg_ctlcluster 15 main start) or set "
            "IRON_DEFER_TEST_ADMIN_DSN.",
            pytrace=False,
        )
    try:
        trio.run(iron_defer.migrate, pg.dsn_for(name))
        yield name
    finally:
        pg.run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    """The DSN of a fresh, migrated database for this test only."""
    name = pg.unique_name("iron_defer_test")
    pg.run_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    try:
        yield pg.dsn_for(name)
    finally:
        pg.run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[pg.Db]:
    """A connection to this test's database, to assert on real rows."""
    async with pg.connect(database_url) as conn:
        yield conn


def fast_settings(database_url: str, **worker: Any) -> Settings:
    """Settings with the test timings, overridable per worker key."""
    return Settings.build(database={"url": database_url}, worker={**FAST_WORKER, **worker})


EngineFactory = Callable[..., AbstractAsyncContextManager[iron_defer.Engine]]


@pytest.fixture
def open_test_engine(database_url: str) -> EngineFactory:
    """``async with open_test_engine(tasks=[...], queues=..., **worker_settings) as engine``
    opens an engine on this test's database with fast test timings."""

    @asynccontextmanager
    async def factory(
        *,
        tasks: list[type[iron_defer.Task]],
        queues: dict[str, int] | None = None,
        run_workers: bool = True,
        seed: int | None = 1234,
        **worker: Any,
    ) -> AsyncIterator[iron_defer.Engine]:
        settings = fast_settings(database_url, **worker)
        async with iron_defer.open_engine(
            settings,
            tasks=tasks,
            queues=queues,
            run_workers=run_workers,
            migrate=False,
            rng=None if seed is None else random.Random(seed),
        ) as engine:
            yield engine

    return factory


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    """A PostgreSQL cluster of this test's own, for tests that stop or crash the server (the
    shared server on 5432 is never touched). Commits are durable (synchronous_commit on), so
    a crash loses nothing that was acknowledged."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="idt-cluster-"))
    root.chmod(0o755)  # the server account must reach the data directory when we are root
    cluster = PrivateCluster(
        data_dir=root / "data", fast_unsafe=True, extra_settings={"synchronous_commit": "on"}
    )
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
