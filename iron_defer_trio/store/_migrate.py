"""Forward-only schema migrations, applied under an advisory lock.

Migrations are the ``NNNN_description.sql`` files of the repository's ``migrations/`` folder
(copied into the wheel as ``iron_defer_trio/_migrations``). All pending ones run in one
transaction, after ``pg_advisory_xact_lock``, so any number of processes may start at once:
one migrates, the others wait and then find nothing to do. A migration whose text changed after
it was applied is refused (its checksum no longer matches the ledger).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from iron_defer_trio.errors import MigrationError
from iron_defer_trio.store._queries import MIGRATE

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text: a changed file is detected, never silently skipped."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What a migration run did."""

    #: Versions applied by this run (empty when the database was up to date).
    applied: tuple[int, ...]
    #: Versions recorded in the database that this package does not know: a newer release
    #: migrated it. Old engines keep working only if those migrations were additive.
    unknown: tuple[int, ...]


def _migrations_dir() -> Traversable:
    packaged = resources.files("iron_defer_trio").joinpath("_migrations")
    if packaged.is_dir():
        return packaged
    # Running from a source checkout (editable install): the folder at the repository root.
    source = Path(__file__).resolve().parents[2] / "migrations"
    if source.is_dir():
        return source
    raise MigrationError("the migrations folder is missing from this installation")


def load_migrations() -> list[Migration]:
    """Every shipped migration, in version order."""
    found: list[Migration] = []
    for entry in _migrations_dir().iterdir():
        match = _FILENAME.match(entry.name)
        if match is None:
            continue
        found.append(
            Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
        )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


async def apply_migrations(
    dsn: str, *, connect_timeout: float, migrations: list[Migration]
) -> MigrationReport:
    """(asyncio side) Bring the database to the newest version, in one transaction."""
    conn = await asyncpg.connect(
        dsn,
        timeout=connect_timeout,
        server_settings={"application_name": "iron-defer-trio migrate"},
    )
    try:
        async with conn.transaction():
            await conn.execute(MIGRATE["lock"])
            await conn.execute(MIGRATE["bootstrap"])
            recorded = {row["version"]: row for row in await conn.fetch(MIGRATE["applied"])}
            known = {m.version for m in migrations}
            for migration in migrations:
                row = recorded.get(migration.version)
                if row is not None and row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after "
                        "it was applied to this database (checksum mismatch); migrations are "
                        "forward-only: add a new file instead of editing an applied one"
                    )
            applied: list[int] = []
            for migration in migrations:
                if migration.version in recorded:
                    continue
                try:
                    await conn.execute(migration.sql)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} failed: "
                        f"{exc.sqlstate} {exc.args[0] if exc.args else exc}",
                        sqlstate=exc.sqlstate,
                    ) from exc
                await conn.execute(
                    MIGRATE["record"], migration.version, migration.name, migration.checksum
                )
                applied.append(migration.version)
            unknown = tuple(sorted(v for v in recorded if v not in known))
            return MigrationReport(applied=tuple(applied), unknown=unknown)
    finally:
        await conn.close()
