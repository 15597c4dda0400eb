"""Load the named SQL blocks of ``store/sql/*.sql`` once, at import.

A block starts with ``-- name: <name>``, then purpose comment line(s) and a ``-- params:``
comment, then the statement. Python refers to queries only by name; a missing or duplicated
name, or a block without its header, fails at import rather than at the first call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$")
#: Anything that looks like a header but is not a valid one (a typo would otherwise glue the
#: next query onto the previous one's text).
_LOOSE_NAME = re.compile(r"^--\s*name\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Query:
    """One named statement."""

    name: str
    purpose: str
    params: str
    sql: str
    source: str


def parse(text: str, source: str) -> dict[str, Query]:
    """Split a .sql file into its named queries."""
    queries: dict[str, Query] = {}
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = _NAME.match(line)
        if match:
            blocks.append((match.group(1), []))
        elif _LOOSE_NAME.match(line):
            raise ValueError(f"{source}: malformed query header {line!r} (use '-- name: x_y')")
        elif blocks:
            blocks[-1][1].append(line)
        elif line.strip() and not line.startswith("--"):
            raise ValueError(f"{source}: SQL before the first '-- name:' header: {line!r}")
    for name, lines in blocks:
        if name in queries:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        params_at = next((i for i, line in enumerate(lines) if line.startswith("-- params:")), None)
        purpose_lines = lines[:params_at] if params_at is not None else []
        if (
            params_at is None
            or not purpose_lines
            or not all(line.startswith("-- ") for line in purpose_lines)
        ):
            raise ValueError(
                f"{source}: query {name!r} needs purpose comment line(s), then '-- params:'"
            )
        sql = "\n".join(lines[params_at + 1 :]).strip()
        if not sql:
            raise ValueError(f"{source}: query {name!r} has no statement")
        queries[name] = Query(
            name=name,
            purpose=" ".join(line[3:].strip() for line in purpose_lines),
            params=lines[params_at].removeprefix("-- params:").strip(),
            sql=sql,
            source=source,
        )
    return queries


def load(filename: str) -> dict[str, Query]:
    """Parse ``store/sql/<filename>`` from the installed package."""
    text = resources.files("iron_defer_trio.store").joinpath("sql", filename).read_text("utf-8")
    return parse(text, f"sql/{filename}")


class Queries:
    """Attribute-free lookup that fails loudly on an unknown name."""

    def __init__(self, *files: str) -> None:
        self._queries: dict[str, Query] = {}
        for filename in files:
            for name, query in load(filename).items():
                if name in self._queries:
                    raise ValueError(f"query {name!r} is defined in two files")
                self._queries[name] = query

    def __getitem__(self, name: str) -> str:
        return self._queries[name].sql

    def all(self) -> dict[str, Query]:
        """Every loaded query by name (for tests that prepare each one)."""
        return dict(self._queries)


#: Queries the task store runs.
TASKS = Queries("tasks.sql", "queues.sql", "periodic.sql", "dashboard.sql")
#: Operators' queries: manual retries and retention.
OPERATIONS = Queries("operations.sql")
#: Queries the migration runner runs.
MIGRATE = Queries("migrate.sql")
