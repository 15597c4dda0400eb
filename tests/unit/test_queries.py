"""Pins the named-SQL loader (block format and its refusals), that the shipped .sql files load
with a purpose and params for every query, and that Python code carries no SQL text."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import iron_defer_trio
from iron_defer_trio.store import _queries
from iron_defer_trio.store._queries import MIGRATE, OPERATIONS, TASKS, Queries, Query, parse

PACKAGE_DIR = Path(iron_defer_trio.__file__).parent

TWO_QUERIES = """\
-- Leading comments before the first header are allowed.

-- name: get_one
-- Read one task by id.
-- params: $1 id
SELECT * FROM iron_defer.tasks WHERE id = $1;

-- name: bump
-- Move a task on,
-- in two purpose lines.
-- params: $1 id, $2 status
UPDATE iron_defer.tasks
SET status = $2
WHERE id = $1;
"""


# --- parse -------------------------------------------------------------------------------


def test_blocks_are_parsed_into_name_purpose_params_and_sql() -> None:
    """Each '-- name:' block yields a Query with its fields and source."""
    queries = parse(TWO_QUERIES, "demo.sql")
    assert list(queries) == ["get_one", "bump"]
    assert queries["get_one"] == Query(
        name="get_one",
        purpose="Read one task by id.",
        params="$1 id",
        sql="SELECT * FROM iron_defer.tasks WHERE id = $1;",
        source="demo.sql",
    )


def test_multi_line_purpose_is_joined_and_sql_is_stripped() -> None:
    """Purpose lines join with spaces; the statement keeps its inner lines, not edge blanks."""
    bump = parse(TWO_QUERIES, "demo.sql")["bump"]
    assert bump.purpose == "Move a task on, in two purpose lines."
    assert bump.params == "$1 id, $2 status"
    assert bump.sql == "UPDATE iron_defer.tasks\nSET status = $2\nWHERE id = $1;"


def test_empty_text_has_no_queries() -> None:
    """A file with only comments and blank lines defines nothing."""
    assert parse("-- just a comment\n\n", "empty.sql") == {}


def test_sql_before_the_first_header_is_rejected() -> None:
    """A statement outside any block raises, quoting the line and the file."""
    with pytest.raises(ValueError, match=r"^orphan\.sql: SQL before the first '-- name:' header"):
        parse("SELECT 1;\n" + TWO_QUERIES, "orphan.sql")


def test_duplicate_query_names_are_rejected() -> None:
    """The same name twice in a file raises, naming the query."""
    text = TWO_QUERIES + "\n-- name: get_one\n-- Again.\n-- params: none\nSELECT 2;\n"
    with pytest.raises(ValueError, match=r"^dup\.sql: query 'get_one' is defined twice$"):
        parse(text, "dup.sql")


@pytest.mark.parametrize(
    "block",
    [
        "-- name: q\n-- params: none\nSELECT 1;\n",  # no purpose
        "-- name: q\n-- Purpose only.\nSELECT 1;\n",  # no params line
        "-- name: q\n\n-- Purpose after a blank.\n-- params: none\nSELECT 1;\n",
        "-- name: q\n--Purpose without a space.\n-- params: none\nSELECT 1;\n",
    ],
)
def test_block_without_purpose_or_params_is_rejected(block: str) -> None:
    """Every block needs '-- ' purpose line(s) right after its name, then '-- params:'."""
    with pytest.raises(ValueError, match=r"query 'q' needs purpose comment line\(s\)"):
        parse(block, "bad.sql")


@pytest.mark.parametrize(
    "block",
    [
        "-- name: q\n-- Nothing.\n-- params: none\n",
        "-- name: q\n-- Nothing.\n-- params: none\n\n  \n",
    ],
)
def test_block_with_an_empty_statement_is_rejected(block: str) -> None:
    """A block with a header but no statement raises 'has no statement'."""
    with pytest.raises(ValueError, match=r"^empty\.sql: query 'q' has no statement$"):
        parse(block, "empty.sql")


def test_a_later_block_does_not_inherit_the_previous_statement() -> None:
    """Each block's SQL ends where the next '-- name:' header begins."""
    queries = parse(TWO_QUERIES, "demo.sql")
    assert "UPDATE" not in queries["get_one"].sql
    assert "SELECT" not in queries["bump"].sql


# --- the shipped files -------------------------------------------------------------------


@pytest.mark.parametrize(
    "queries", [TASKS, OPERATIONS, MIGRATE], ids=["tasks.sql", "operations.sql", "migrate.sql"]
)
def test_shipped_files_load_with_purpose_and_params_for_every_query(queries: Queries) -> None:
    """Every shipped query has a non-empty purpose, params line and statement."""
    loaded = queries.all()
    assert loaded
    for name, query in loaded.items():
        assert query.name == name
        assert query.purpose, name
        assert query.params, name
        assert query.sql, name
        assert queries[name] == query.sql


def test_shipped_sql_files_are_exactly_the_loaded_ones() -> None:
    """Every .sql file in store/sql is loaded by some Queries instance (none is forgotten)."""
    on_disk = {path.name for path in (PACKAGE_DIR / "store" / "sql").glob("*.sql")}
    loaded = {query.source for q in (TASKS, OPERATIONS, MIGRATE) for query in q.all().values()}
    assert loaded == {f"sql/{name}" for name in on_disk}


def test_parameters_used_are_documented_in_the_params_line() -> None:
    """Every $n placeholder in a statement appears in its '-- params:' line."""
    for queries in (TASKS, OPERATIONS, MIGRATE):
        for name, query in queries.all().items():
            used = set(re.findall(r"\$\d+", query.sql))
            documented = set(re.findall(r"\$\d+", query.params))
            assert used <= documented, (name, used - documented)


def test_unknown_query_name_fails_loudly() -> None:
    """Looking up a name that no file defines raises KeyError."""
    with pytest.raises(KeyError, match="no_such_query"):
        TASKS["no_such_query"]


def test_a_name_defined_in_two_files_is_rejected() -> None:
    """Loading the same file twice into one Queries is a duplicate across files."""
    with pytest.raises(ValueError, match=r"is defined in two files"):
        Queries("migrate.sql", "migrate.sql")


def test_all_returns_a_copy() -> None:
    """Mutating the dict from all() does not change the loaded queries."""
    snapshot = TASKS.all()
    snapshot.clear()
    assert TASKS.all()


# --- no SQL in Python --------------------------------------------------------------------

#: Shapes that only SQL statements have (uppercase keywords, as the house style writes SQL).
#: Prose such as "FOR UPDATE SKIP LOCKED" or "the UPDATE is guarded" does not match.
SQL_SHAPES = re.compile(
    r"\bSELECT\s+(?:DISTINCT\s+)?[^;]{0,300}?\bFROM\s+[\w\"(]"
    r"|\bSELECT\s+[a-z_][\w.]*\s*\("
    r"|\bSELECT\s+(?:\d|\*|\$\d)"
    r"|\bINSERT\s+INTO\s"
    r"|\bUPDATE\s+[\w.\"]+\s+SET\s"
    r"|\bDELETE\s+FROM\s"
)
#: The words the rule is about; a literal needs one of them before the shapes are checked.
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b\s")


def _string_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant in a module, f-string pieces included."""
    tree = ast.parse(source)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _sql_literals(source: str) -> list[tuple[int, str]]:
    return [
        (line, text)
        for line, text in _string_literals(source)
        if SQL_WORDS.search(text) and SQL_SHAPES.search(text)
    ]


@pytest.mark.parametrize(
    "code",
    [
        'q = "SELECT * FROM iron_defer.tasks WHERE id = $1"',
        'q = f"SELECT 1 FROM pg_database WHERE datname = {name}"',
        'q = """\n    SELECT id, queue\n    FROM iron_defer.tasks\n"""',
        "q = 'SELECT pg_advisory_lock(1)'",
        'q = "INSERT INTO t (a) VALUES ($1)"',
        'q = "UPDATE iron_defer.tasks SET status = $2"',
        'q = "DELETE FROM iron_defer.tasks WHERE id = $1"',
    ],
)
def test_sql_detector_flags_statements_in_string_literals(code: str) -> None:
    """The detector used below recognises each kind of statement, f-strings included."""
    assert _sql_literals(code)


@pytest.mark.parametrize(
    "code",
    [
        '"""Lease tasks (``FOR UPDATE SKIP LOCKED``) so claimers never collide."""',
        '"""The store\'s guarded UPDATEs implement exactly these."""',
        'msg = "SELECT a queue first, then DELETE it from the list"',
        "# SELECT * FROM tasks  (a comment, not a literal)",
        'q = "select * from tasks"',
    ],
)
def test_sql_detector_ignores_prose_and_comments(code: str) -> None:
    """Docstrings mentioning SQL words in prose, comments and lowercase text are not flagged."""
    assert _sql_literals(code) == []


def test_python_code_contains_no_sql_statements() -> None:
    """SQL lives in store/sql/*.sql only; no .py file of the package embeds a statement."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        for line, text in _sql_literals(path.read_text("utf-8")):
            found.append(f"{relative}:{line}: {text.strip()[:80]!r}")
    assert found == [], "SQL text in Python (move it to store/sql/*.sql):\n" + "\n".join(found)


def test_loader_module_reads_sql_from_package_resources() -> None:
    """The loader finds the .sql files through importlib.resources, inside the package."""
    store_files = sorted(
        path.name
        for path in (PACKAGE_DIR / "store" / "sql").glob("*.sql")
        if path.name != "migrate.sql"
    )
    assert "tasks.sql" in store_files
    loaded = [name for filename in store_files for name in _queries.load(filename)]
    assert sorted(loaded) == sorted([*TASKS.all(), *OPERATIONS.all()])
