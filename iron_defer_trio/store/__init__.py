"""Persistence: the only package that talks SQL, asyncpg and trio-asyncio.

The engine depends on :class:`~iron_defer_trio.store.protocol.TaskStore` only; this package
also provides the PostgreSQL implementation and the migration runner.
"""

from iron_defer_trio.store._cluster import ClusterError as ClusterError
from iron_defer_trio.store._embedded import EmbeddedDatabase as EmbeddedDatabase
from iron_defer_trio.store._embedded import default_data_dir as default_data_dir
from iron_defer_trio.store._embedded import open_embedded_database as open_embedded_database
from iron_defer_trio.store._embedded import running_embedded_dsn as running_embedded_dsn
from iron_defer_trio.store._migrate import MigrationReport as MigrationReport
from iron_defer_trio.store._postgres import PostgresStore as PostgresStore
from iron_defer_trio.store._postgres import migrate as migrate
from iron_defer_trio.store._postgres import open_postgres_store as open_postgres_store
from iron_defer_trio.store.protocol import TaskStore as TaskStore

__all__ = [
    "ClusterError",
    "EmbeddedDatabase",
    "MigrationReport",
    "PostgresStore",
    "TaskStore",
    "default_data_dir",
    "migrate",
    "open_embedded_database",
    "open_postgres_store",
    "running_embedded_dsn",
]
