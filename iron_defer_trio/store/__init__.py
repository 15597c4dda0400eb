"""Persistence: the only package that talks SQL, asyncpg and trio-asyncio.

The engine depends on :class:`~iron_defer_trio.store.protocol.TaskStore` only; this package
also provides the PostgreSQL implementation and the migration runner.
"""

from iron_defer_trio.store._migrate import MigrationReport as MigrationReport
from iron_defer_trio.store._postgres import PostgresStore as PostgresStore
from iron_defer_trio.store._postgres import migrate as migrate
from iron_defer_trio.store._postgres import open_postgres_store as open_postgres_store
from iron_defer_trio.store.protocol import TaskStore as TaskStore

__all__ = ["MigrationReport", "PostgresStore", "TaskStore", "migrate", "open_postgres_store"]
