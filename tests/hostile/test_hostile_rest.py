"""Hostile requests to the REST API.

Rules of this file: every hostile request is either refused with a 4xx
``application/problem+json`` answer (never a 5xx, never a crash) and writes nothing, or it is
stored / matched verbatim, which the test proves by reading it back. SQL text is data: the
table still exists afterwards and holds exactly the rows the accepted requests created.
Body-level cases go through the app's test client over a real engine on a fresh database per
test; wire-level cases (raw bytes, headers, methods) go over a socket to one real ``serve``
process per module.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import quote

import pytest
import trio
from pydantic import JsonValue

import iron_defer_trio as iron_defer
from iron_defer_trio.http._app import create_app
from iron_defer_trio.http._errors import CODES
from tests.conftest import fast_settings
from tests.e2e.serving import Server, base_env, start_server, wait_for, write_tasks_module
from tests.hostile._support import address, get_request, own_database, raw_http, task_count

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from quart.typing import TestClientProtocol

    from tests.pg import Db

TOKEN = "hostile-token-5d1c"
JSON = {"Content-Type": "application/json"}
SQL_DROP = "'; DROP TABLE iron_defer.tasks; --"
#: SQL and LIKE metacharacters: each must be plain data wherever a string goes.
SQL_META = [
    SQL_DROP,
    "%",
    "_",
    "\\",
    "$1",
    "' OR '1'='1",
    '"; SELECT pg_sleep(10); --',
    "a%",
    "_b",
    "\\%",
]


# --- the app under test: a real engine with task classes for every kind of field ----------


class Note(iron_defer.Task):
    KIND: ClassVar[str] = "note"
    text: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


class Blob(iron_defer.Task):
    KIND: ClassVar[str] = "blob"
    data: JsonValue = None

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


class Measure(iron_defer.Task):
    KIND: ClassVar[str] = "measure"
    value: float

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


def _blob_kind(kind: str) -> type[iron_defer.Task]:
    """A Blob class registered under ``kind`` (hostile kinds must be stored verbatim)."""
    name = "Kind_" + kind.encode().hex()
    return cast("type[iron_defer.Task]", type(name, (Blob,), {"KIND": kind}))


META_KINDS = {kind: _blob_kind(kind) for kind in SQL_META}
LONG_KIND = "k" * 255
TASK_CLASSES: list[type[iron_defer.Task]] = [
    Note,
    Blob,
    Measure,
    _blob_kind(LONG_KIND),
    *META_KINDS.values(),
]

Api = tuple["TestClientProtocol", iron_defer.Engine]


@pytest.fixture
def open_hostile_api(database_url: str) -> Callable[..., Any]:
    """``async with open_hostile_api(**server_settings) as (client, engine)``: the app over a
    producer-only engine on this test's database, with the task classes above."""

    @asynccontextmanager
    async def factory(**server: Any) -> AsyncIterator[Api]:
        settings = fast_settings(database_url).model_copy(
            update={"server": iron_defer.Settings.build(server=server).server}
        )
        async with iron_defer.open_engine(
            settings, tasks=TASK_CLASSES, run_workers=False, migrate=False
        ) as engine:
            app = create_app(engine, settings)
            async with app.test_app() as test_app:
                yield test_app.test_client(), engine

    return factory


async def refused(response: Any, status: int | None = None) -> dict[str, Any]:
    """The answer is a 4xx problem document (of ``status`` when given) with a known code."""
    text = await response.get_data(as_text=True)
    assert 400 <= response.status_code < 500, (response.status_code, text[:500])
    if status is not None:
        assert response.status_code == status, text[:500]
    assert response.headers["Content-Type"] == "application/problem+json"
    problem: dict[str, Any] = json.loads(text)
    assert CODES[problem["code"]] == response.status_code == problem["status"]
    assert problem["detail"]
    return problem


async def created(response: Any) -> dict[str, Any]:
    """The answer is 201 with the stored task."""
    text = await response.get_data(as_text=True)
    assert response.status_code == 201, text[:500]
    task: dict[str, Any] = json.loads(text)
    return task


async def rows(db: Db) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM iron_defer.tasks")
    return count


async def stored_payload(db: Db, task_id: str) -> Any:
    raw = await db.fetchval(
        "SELECT payload::text FROM iron_defer.tasks WHERE id = $1", uuid.UUID(task_id)
    )
    return json.loads(raw)


# --- malformed bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind": "note", "payload": {"text": "x"}',
        b'{"kind": "note", "payload": {"text": "x"}} {}',
        b"   \n\t ",
        b'\xef\xbb\xbf{"kind": "note", "payload": {"text": "x"}}',
        '{"kind": "note", "payload": {"text": "x"}}'.encode("utf-16"),
        b'{"kind": "measure", "payload": {"value": Infinity}}',
        b'{"kind": "measure", "payload": {"value": -Infinity}}',
        b'{"kind": "blob", "payload": {"data": [1, {"x": NaN}]}}',
        b'{"kind": "note", "payload": {"text": "\xff\xfe"}}',
        b'{"kind": "blob", "payload": {"data": {"\xc3\x28": 1}}}',
        b'{"kind": "note", "payload": {"text": "\xc0\xaf"}}',
        b'{"kind": "note", "payload": {"text": "\xed\xa0\x80"}}',
        b'{"kind": "note", "payload": {"text": "\x80"}}',
        b'{"kind": "note", "payload": {"text": "a\x00b"}}',
        b"{'kind': 'note', 'payload': {}}",
        b'{"kind": "note", /* comment */ "payload": {"text": "x"}}',
    ],
    ids=[
        "truncated",
        "trailing-data",
        "whitespace-only",
        "utf8-bom",
        "utf16",
        "infinity",
        "minus-infinity",
        "nested-nan",
        "invalid-utf8-in-a-value",
        "invalid-utf8-in-a-key",
        "overlong-utf8",
        "utf8-encoded-surrogate",
        "lone-continuation-byte",
        "raw-nul-in-a-string",
        "single-quotes",
        "comment",
    ],
)
async def test_malformed_bodies_are_400_and_write_nothing(
    open_hostile_api: Callable[..., Any], db: Db, body: bytes
) -> None:
    """Bodies that are not strict UTF-8 JSON are 400 MALFORMED_JSON; no row appears."""
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            problem = await refused(await client.post("/tasks", data=body, headers=JSON), 400)
        assert await rows(db) == 0
    assert problem["code"] == "MALFORMED_JSON"


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/json",
        "application/xml",
    ],
)
async def test_non_json_media_types_are_415(
    open_hostile_api: Callable[..., Any], db: Db, content_type: str
) -> None:
    """A JSON body sent under another media type is 415 UNSUPPORTED_MEDIA_TYPE."""
    body = json.dumps({"kind": "note", "payload": {"text": "x"}}).encode()
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            response = await client.post(
                "/tasks", data=body, headers={"Content-Type": content_type}
            )
            problem = await refused(response, 415)
        assert await rows(db) == 0
    assert problem["code"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_oversized_bodies_are_413_and_write_nothing(
    open_hostile_api: Callable[..., Any], db: Db
) -> None:
    """One byte over server.max_body_bytes, and 8 MiB, are both 413 PAYLOAD_TOO_LARGE."""
    envelope = json.dumps({"kind": "note", "payload": {"text": ""}}).encode()
    just_over = envelope.replace(b'""', b'"' + b"x" * (1024 - len(envelope) + 1) + b'"')
    assert len(just_over) == 1025
    with trio.fail_after(15):
        async with open_hostile_api(max_body_bytes=1024) as (client, _):
            for body in (just_over, b"[" * (8 * 1024 * 1024)):
                problem = await refused(await client.post("/tasks", data=body, headers=JSON), 413)
                assert problem["code"] == "PAYLOAD_TOO_LARGE"
        assert await rows(db) == 0


async def test_a_payload_over_one_mebibyte_is_422_even_under_the_body_limit(
    open_hostile_api: Callable[..., Any], db: Db
) -> None:
    """With a 4 MiB body limit, a 1.5 MiB payload is still refused (INVALID_TASK)."""
    body = json.dumps({"kind": "note", "payload": {"text": "x" * (1536 * 1024)}}).encode()
    with trio.fail_after(15):
        async with open_hostile_api(max_body_bytes=4 * 1024 * 1024) as (client, _):
            problem = await refused(await client.post("/tasks", data=body, headers=JSON), 422)
        assert await rows(db) == 0
    assert problem["code"] == "INVALID_TASK"


# --- nesting -----------------------------------------------------------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_a_payload_nested_100_deep_is_stored_verbatim(
    open_hostile_api: Callable[..., Any], db: Db
) -> None:
    """Nesting within reason is data: stored and read back exactly."""
    data = json.loads(_nested(100))
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            task = await created(
                await client.post("/tasks", json={"kind": "blob", "payload": {"data": data}})
            )
            read = json.loads(await (await client.get(f"/tasks/{task['id']}")).get_data())
        assert await stored_payload(db, task["id"]) == {"data": data}
    assert read["payload"] == {"data": data}


@pytest.mark.parametrize("depth", [300, 600])
async def test_a_payload_nested_hundreds_deep_is_refused_with_4xx(
    open_hostile_api: Callable[..., Any], db: Db, depth: int
) -> None:
    """Deep nesting that the parser still reads is refused by validation, not a crash."""
    body = ('{"kind": "blob", "payload": {"data": ' + _nested(depth) + "}}").encode()
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            await refused(await client.post("/tasks", data=body, headers=JSON))
        assert await rows(db) == 0


@pytest.mark.parametrize("where", ["payload", "top-level"])
async def test_json_nested_ten_thousand_deep_is_4xx_not_a_recursion_crash(
    open_hostile_api: Callable[..., Any], db: Db, where: str
) -> None:
    """A 20 kB body of 10,000 nested arrays is a client error (400), never a 500."""
    deep = _nested(10_000)
    text = '{"kind": "blob", "payload": {"data": ' + deep + "}}" if where == "payload" else deep
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            response = await client.post("/tasks", data=text.encode(), headers=JSON)
            await refused(response)
        assert await rows(db) == 0


# --- NUL characters and invalid Unicode ------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "no\x00te", "payload": {"text": "x"}},
        {"kind": "note\x00", "payload": {"text": "x"}},
        {"kind": "note", "payload": {"text": "x"}, "queue": "q\x00"},
        {"kind": "note", "payload": {"text": "a\x00b"}},
        {"kind": "blob", "payload": {"data": {"ke\x00y": 1}}},
        {"kind": "blob", "payload": {"data": [{"deep": ["\x00"]}]}},
        {"kind": "blob", "payload": {"data": {"deep": {"\x00": "x"}}}},
        {"kind": "note", "payload": {"text": "x"}, "scheduledAt": "2030-01-01T00:00:00\x00Z"},
    ],
    ids=[
        "kind",
        "kind-suffix",
        "queue",
        "payload-value",
        "payload-key",
        "nested-value",
        "nested-key",
        "scheduled-at",
    ],
)
async def test_nul_in_any_submitted_string_is_refused_and_writes_nothing(
    open_hostile_api: Callable[..., Any], db: Db, body: dict[str, Any]
) -> None:
    """PostgreSQL text cannot hold NUL, so a NUL anywhere in a submission is a 4xx (never a
    database error), and nothing is written."""
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            await refused(await client.post("/tasks", json=body))
        assert await rows(db) == 0


async def test_nul_and_garbage_in_task_ids_are_400(
    open_hostile_api: Callable[..., Any],
) -> None:
    """Reads and cancels (the idempotent side) refuse NUL, non-UUID text and SQL as ids with
    INVALID_TASK_ID."""
    bad_ids = [
        "\x00",
        "0190f3a2-5b7c-7d3e-8f10-2a3b4c5d6e7f\x00",
        "\ufffd",
        "\u00ff\u00fe",
        SQL_DROP,
    ]
    failed = {}
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            for method in ("GET", "DELETE"):
                for task_id in bad_ids:
                    response = await client.open(f"/tasks/{task_id}", method=method)
                    try:
                        problem = await refused(response, 400)
                        assert problem["code"] == "INVALID_TASK_ID"
                    except AssertionError as exc:
                        failed[f"{method} {task_id!r}"] = str(exc)[:300]
    assert failed == {}


@pytest.mark.parametrize("field", ["queue", "kind"])
async def test_nul_in_a_list_filter_is_rejected_or_matched_not_500(
    open_hostile_api: Callable[..., Any], field: str
) -> None:
    """GET /tasks?kind=a%00b is a 400, or an empty page (nothing can hold a NUL)."""
    with trio.fail_after(15):
        async with open_hostile_api() as (client, engine):
            await engine.enqueue(Note(text="x"))
            response = await client.get("/tasks", query_string={field: "a\x00b"})
            if response.status_code == 200:
                page = json.loads(await response.get_data())
                assert page["items"] == []
            else:
                await refused(response, 400)


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind": "note", "payload": {"text": "\\ud800"}}',
        b'{"kind": "blob", "payload": {"data": {"\\udfff": 1}}}',
    ],
    ids=["value", "key"],
)
async def test_lone_surrogates_in_a_payload_are_refused_not_500(
    open_hostile_api: Callable[..., Any], db: Db, body: bytes
) -> None:
    """Strings that are not valid Unicode cannot be stored: a 4xx, and no row."""
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            await refused(await client.post("/tasks", data=body, headers=JSON))
        assert await rows(db) == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind": "\\ud800", "payload": {}}',
        b'{"kind": "note", "payload": {"text": "x"}, "queue": "\\udfff"}',
        b'{"kind": "note", "payload": {"text": "x"}, "scheduledAt": "\\ud800"}',
    ],
    ids=["kind", "queue", "scheduled-at"],
)
async def test_lone_surrogates_in_kind_queue_and_time_are_refused(
    open_hostile_api: Callable[..., Any], db: Db, body: bytes
) -> None:
    """The envelope's own strings refuse invalid Unicode with a 4xx."""
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            await refused(await client.post("/tasks", data=body, headers=JSON))
        assert await rows(db) == 0


# --- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("priority", "1e400"),
        ("priority", "-1e400"),
        ("priority", str(10**30)),
        ("priority", str(-(10**30))),
        ("priority", "32768"),
        ("priority", "-32769"),
        ("priority", "5.5"),
        ("priority", "[]"),
        ("priority", "{}"),
        ("maxAttempts", str(10**30)),
        ("maxAttempts", "1e400"),
        ("maxAttempts", "0"),
        ("maxAttempts", "-1"),
        ("maxAttempts", "1001"),
        ("maxAttempts", "1.5"),
    ],
)
async def test_out_of_range_and_mistyped_numbers_are_422(
    open_hostile_api: Callable[..., Any], db: Db, field: str, literal: str
) -> None:
    """priority and maxAttempts outside their ranges, or not integers, are VALIDATION_FAILED
    naming the field; nothing is written."""
    body = '{"kind": "note", "payload": {"text": "x"}, "' + field + '": ' + literal + "}"
    # A number beyond float range cannot even be parsed faithfully: malformed JSON (400).
    unparseable = "e400" in literal
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            response = await client.post("/tasks", data=body.encode(), headers=JSON)
            problem = await refused(response, 400 if unparseable else 422)
        assert await rows(db) == 0
    if unparseable:
        assert problem["code"] == "MALFORMED_JSON"
    else:
        assert [error["field"] for error in problem["errors"]] == [field]


@pytest.mark.parametrize(
    ("field", "literal"),
    [("priority", "true"), ("priority", '"5"'), ("maxAttempts", "true"), ("maxAttempts", '"5"')],
)
async def test_booleans_and_numeric_strings_for_integer_fields_are_refused(
    open_hostile_api: Callable[..., Any], db: Db, field: str, literal: str
) -> None:
    """A JSON boolean or string is not the integer the document asks for: 422, no row."""
    body = '{"kind": "note", "payload": {"text": "x"}, "' + field + '": ' + literal + "}"
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            await refused(await client.post("/tasks", data=body.encode(), headers=JSON), 422)
        assert await rows(db) == 0


@pytest.mark.parametrize(
    "literal", [str(10**30), str(-(10**30)), "1e308", "-1e308", "5e-324", "0.1", "-0.0"]
)
async def test_huge_and_tiny_payload_numbers_are_stored_verbatim(
    open_hostile_api: Callable[..., Any], db: Db, literal: str
) -> None:
    """Finite numbers of any size are data: the API and the row give back the same decimal
    value (compared as decimals: jsonb keeps numbers exact, floats would not)."""
    body = '{"kind": "blob", "payload": {"data": ' + literal + "}}"
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            task = await created(await client.post("/tasks", data=body.encode(), headers=JSON))
            read = await (await client.get(f"/tasks/{task['id']}")).get_data(as_text=True)
        stored = await db.fetchval(
            "SELECT payload::text FROM iron_defer.tasks WHERE id = $1", uuid.UUID(task["id"])
        )
    assert _exact(read)["payload"]["data"] == Decimal(literal)
    assert _exact(stored)["data"] == Decimal(literal)


def _exact(text: str) -> Any:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


@pytest.mark.parametrize(
    "body",
    [
        '{"kind": "measure", "payload": {"value": 1e400}}',
        '{"kind": "measure", "payload": {"value": -1e400}}',
        '{"kind": "blob", "payload": {"data": [1e400]}}',
    ],
    ids=["float-field", "negative", "json-value"],
)
async def test_payload_numbers_beyond_float_range_are_refused_not_stored_as_null(
    open_hostile_api: Callable[..., Any], db: Db, body: str
) -> None:
    """1e400 cannot be stored verbatim, so it must be refused (4xx) and nothing written."""
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            await refused(await client.post("/tasks", data=body.encode(), headers=JSON))
        assert await rows(db) == 0


# --- query strings ---------------------------------------------------------------------------


BAD_QUERIES = [
    f"limit={10**30}",
    "limit=-5",
    "limit=-0",
    "limit=1.5",
    "limit=true",
    "limit=1e2",
    "limit=",
    "limit=0x10",
    "limit=%EF%BC%95",
    "limit=NaN",
    "status=PENDING%00",
    "status=" + quote(SQL_DROP),
    "cursor=" + quote(SQL_DROP),
    "cursor=0190f3a2-5b7c-7d3e-8f10-2a3b4c5d6e7f'",
    "limit=5&limit=5",
    "kind=a&kind=a",
    "status=pending&status=pending",
    "cursor=0190f3a2-5b7c-7d3e-8f10-2a3b4c5d6e7f&cursor=0190f3a2-5b7c-7d3e-8f10-2a3b4c5d6e7f",
    "limit=5&LIMIT=6",
    "kind[]=a",
    "=5",
]


async def test_bad_duplicated_and_unknown_query_parameters_are_400(
    open_hostile_api: Callable[..., Any],
) -> None:
    """Huge, negative, fractional, boolean, repeated or unknown parameters (and SQL where a
    status or cursor goes) are each 400 INVALID_QUERY."""
    failed = {}
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            for query in BAD_QUERIES:
                response = await client.get("/tasks", scope_base={"query_string": query.encode()})
                try:
                    problem = await refused(response, 400)
                    assert problem["code"] == "INVALID_QUERY"
                except AssertionError as exc:
                    failed[query] = str(exc)[:300]
    assert failed == {}


# --- long strings ----------------------------------------------------------------------------


async def test_long_strings_are_refused_at_their_limit_or_stored_verbatim(
    open_hostile_api: Callable[..., Any], db: Db
) -> None:
    """kind up to 255 bytes and queue up to 128 characters are stored; one more is a 422;
    a 512 KiB payload string and 100 kB filters are plain data."""
    long_text = "\u00e9" * (256 * 1024)
    long_queue = "q" * 128
    with trio.fail_after(20):
        async with open_hostile_api() as (client, _):
            for body in (
                {"kind": "k" * 256, "payload": {}},
                {"kind": "\u00e9" * 128, "payload": {}},
                {"kind": "note", "payload": {"text": "x"}, "queue": "q" * 129},
            ):
                await refused(await client.post("/tasks", json=body))
            assert await rows(db) == 0
            kept = await created(
                await client.post("/tasks", json={"kind": LONG_KIND, "payload": {}})
            )
            queued = await created(
                await client.post(
                    "/tasks", json={"kind": "note", "payload": {"text": "x"}, "queue": long_queue}
                )
            )
            as_utf8 = json.dumps(
                {"kind": "note", "payload": {"text": long_text}}, ensure_ascii=False
            )
            text = await created(await client.post("/tasks", data=as_utf8.encode(), headers=JSON))
            by_kind = json.loads(
                await (await client.get("/tasks", query_string={"kind": LONG_KIND})).get_data()
            )
            by_queue = json.loads(
                await (await client.get("/tasks", query_string={"queue": long_queue})).get_data()
            )
            for field in ("kind", "queue"):
                # filters are bounded like the columns they match (255 characters)
                huge = await client.get("/tasks", query_string={field: "z" * 100_000})
                await refused(huge, 400)
                longest = await client.get("/tasks", query_string={field: "z" * 255})
                assert longest.status_code == 200
                assert json.loads(await longest.get_data())["items"] == []
        assert await rows(db) == 3
        assert (await stored_payload(db, text["id"]))["text"] == long_text
    assert [item["id"] for item in by_kind["items"]] == [kept["id"]]
    assert [item["id"] for item in by_queue["items"]] == [queued["id"]]


# --- SQL metacharacters ----------------------------------------------------------------------


async def test_sql_metacharacters_are_stored_and_matched_verbatim(
    open_hostile_api: Callable[..., Any], db: Db
) -> None:
    """Each metacharacter string works as a kind, a payload key and a payload value, comes
    back byte for byte, and as a filter matches exactly that task (no LIKE wildcards, no
    injection); as a queue, status, cursor, limit, time or id it is refused, and as a trace
    header it is ignored. The table survives with exactly the accepted rows."""
    with trio.fail_after(30):
        async with open_hostile_api() as (client, engine):
            await engine.enqueue("abc", Note(text="a decoy every LIKE pattern here would match"))
            ids: dict[str, str] = {}
            for meta in SQL_META:
                payload = {"data": {meta: meta, "list": [meta]}}
                task = await created(
                    await client.post("/tasks", json={"kind": meta, "payload": payload})
                )
                ids[meta] = task["id"]
                read = json.loads(await (await client.get(f"/tasks/{task['id']}")).get_data())
                assert (read["kind"], read["payload"]) == (meta, payload)
                assert await stored_payload(db, task["id"]) == payload
            for meta in SQL_META:
                page = json.loads(
                    await (await client.get("/tasks", query_string={"kind": meta})).get_data()
                )
                assert [item["id"] for item in page["items"]] == [ids[meta]], meta
                by_queue = await client.get("/tasks", query_string={"queue": meta})
                assert json.loads(await by_queue.get_data())["items"] == [], meta
                for refused_query in ({"status": meta}, {"cursor": meta}, {"limit": meta}):
                    await refused(await client.get("/tasks", query_string=refused_query), 400)
                for method in ("GET", "DELETE"):
                    response = await client.open(f"/tasks/{quote(meta, safe='')}", method=method)
                    await refused(response, 400)
                queued = {"kind": "note", "payload": {"text": "x"}, "queue": meta}
                await refused(await client.post("/tasks", json=queued), 422)
                timed = {"kind": "note", "payload": {"text": "x"}, "scheduledAt": meta}
                await refused(await client.post("/tasks", json=timed), 422)
            traced = await created(
                await client.post(
                    "/tasks",
                    json={"kind": "note", "payload": {"text": "traced"}},
                    headers={"traceparent": SQL_DROP, "tracestate": SQL_DROP},
                )
            )
            assert traced["traceparent"] is None or SQL_DROP not in traced["traceparent"]
        kinds = {row["kind"] for row in await db.fetch("SELECT kind FROM iron_defer.tasks")}
        assert await db.fetchval("SELECT to_regclass('iron_defer.tasks') IS NOT NULL")
    assert kinds == {*SQL_META, "note"}
    assert await rows(db) == len(SQL_META) + 2


# --- the calendar's edges --------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheduled_at",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59-14:00",
    ],
)
async def test_scheduled_at_at_the_edges_of_the_calendar_is_refused_or_kept_exact(
    open_hostile_api: Callable[..., Any], db: Db, scheduled_at: str
) -> None:
    """Either a 4xx with nothing written, or the task reads back at the same instant."""
    sent = datetime.fromisoformat(scheduled_at)
    body = {"kind": "note", "payload": {"text": "x"}, "scheduledAt": scheduled_at}
    with trio.fail_after(15):
        async with open_hostile_api() as (client, _):
            response = await client.post("/tasks", json=body)
            if response.status_code < 300:
                task = await created(response)
                read = json.loads(await (await client.get(f"/tasks/{task['id']}")).get_data())
                back = datetime.fromisoformat(read["scheduledAt"])
                assert back.tzinfo is not None, read["scheduledAt"]
                assert back == sent
            else:
                await refused(response)
                assert await rows(db) == 0


# --- the real server: bytes on the wire ------------------------------------------------------


@pytest.fixture(scope="module")
def wire_server(
    template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    """One real ``serve`` with an API token, on a database of this module's own."""
    with own_database(template_database, "iron_defer_wire") as dsn:
        app_dir = write_tasks_module(tmp_path_factory.mktemp("wire_app"))
        server = start_server(
            "--app",
            "e2e_tasks",
            cwd=app_dir,
            env=base_env(DATABASE_URL=dsn, IRON_DEFER__SERVER__API_TOKEN=TOKEN),
            token=TOKEN,
        )
        try:
            yield server, dsn
        finally:
            server.stop()


AUTH = b"Authorization: Bearer " + TOKEN.encode()


def _alive(server: Server) -> bool:
    status, _, body = raw_http(server.url, get_request(b"/health"))
    return server.process.poll() is None and status == 200 and b'"ok"' in body


@pytest.mark.parametrize(
    "target",
    [b"/tasks/\xff", b"/tasks?kind=\xff\xfe", b"/tas\x00ks", b"/tasks?queue=a b"],
    ids=["raw-byte-in-path", "raw-bytes-in-query", "nul-in-path", "space-in-query"],
)
def test_raw_invalid_bytes_in_the_request_line_are_400(
    wire_server: tuple[Server, str], target: bytes
) -> None:
    """Bytes HTTP does not allow in a request target are refused by the server (400) and
    it keeps serving."""
    server, _ = wire_server
    status, _, _ = raw_http(server.url, get_request(target, AUTH))
    assert status == 400
    assert _alive(server)


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/tasks/%ff", 400),
        (b"/tasks/%C0%AF", 400),
        (b"/tasks?kind=%ff", 200),
        (b"/tasks?queue=%ED%A0%80", 200),
        (b"/tasks?kind=" + quote(SQL_DROP).encode(), 200),
    ],
)
def test_percent_encoded_invalid_utf8_is_refused_or_matches_nothing(
    wire_server: tuple[Server, str], target: bytes, status: int
) -> None:
    """An id that is not UTF-8 is INVALID_TASK_ID; a filter that is not UTF-8 (or is SQL)
    matches nothing; the table is untouched."""
    server, dsn = wire_server
    before = task_count(dsn)
    got, headers, body = raw_http(server.url, get_request(target, AUTH))
    assert got == status, body[:300]
    if status == 200:
        assert json.loads(body) == {"items": [], "nextCursor": None}
    else:
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["code"] == "INVALID_TASK_ID"
    assert task_count(dsn) == before


@pytest.mark.parametrize("method", [b"FOO", b"PROPFIND", b"TRACE", b"PATCH", b"PUT"])
@pytest.mark.parametrize("path", [b"/tasks", b"/tasks/0190f3a2-5b7c-7d3e-8f10-2a3b4c5d6e7f"])
def test_unknown_and_unsupported_methods_are_405_problems(
    wire_server: tuple[Server, str], method: bytes, path: bytes
) -> None:
    """Any other method on a task route is 405 METHOD_NOT_ALLOWED with an Allow header."""
    server, _ = wire_server
    request = get_request(path, AUTH).replace(b"GET ", method + b" ", 1)
    status, headers, body = raw_http(server.url, request)
    assert status == 405, body[:300]
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in headers["allow"]


def test_an_oversized_header_is_431_and_the_server_keeps_serving(
    wire_server: tuple[Server, str],
) -> None:
    """A 100 kB header is refused before it reaches the app; 2,000 small headers are fine."""
    server, _ = wire_server
    huge, _, _ = raw_http(server.url, get_request(b"/tasks", AUTH, b"X-Big: " + b"x" * 100_000))
    many = [b"X-H%d: v" % i for i in range(2000)]
    crowded, _, _ = raw_http(server.url, get_request(b"/tasks", AUTH, *many))
    assert huge == 431
    assert crowded == 200
    assert _alive(server)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        b"Basic " + TOKEN.encode(),
        b"Bearer",
        b"Bearer ",
        b"Bearer\t" + TOKEN.encode(),
        b"Token " + TOKEN.encode(),
        b"Bearer" + TOKEN.encode(),
        b"Bearer " + TOKEN.encode() + b"x",
        b"Bearer " + TOKEN.encode()[:-1],
        b"Bearer " + TOKEN.encode() + b" " + TOKEN.encode(),
        b"Bearer " + TOKEN.encode() + "\u00a0".encode(),
        b"Bearer " + "t\u00f8ken-\u20ac".encode(),
        b"Bearer \xff\xfe",
        b"Bearer " + b"x" * 10_000,
    ],
    ids=[
        "missing",
        "basic",
        "no-token",
        "empty-token",
        "tab-separator",
        "other-scheme",
        "no-space",
        "longer",
        "shorter",
        "twice",
        "nbsp-suffix",
        "unicode",
        "invalid-utf8",
        "10-kB",
    ],
)
def test_invalid_authorization_headers_are_401(
    wire_server: tuple[Server, str], authorization: bytes | None
) -> None:
    """Every malformed or wrong credential is 401 UNAUTHORIZED with a Bearer challenge, and
    the answer never repeats the token."""
    server, _ = wire_server
    header = () if authorization is None else (b"Authorization: " + authorization,)
    status, headers, body = raw_http(server.url, get_request(b"/queues", *header))
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["code"] == "UNAUTHORIZED"
    assert TOKEN.encode() not in body
    assert TOKEN not in json.dumps(headers)


def test_a_wrong_token_before_the_right_one_is_401(wire_server: tuple[Server, str]) -> None:
    """Repeating the Authorization header cannot smuggle a wrong credential through."""
    server, _ = wire_server
    wrong = b"Authorization: Bearer wrong-" + TOKEN.encode()
    status, _, _ = raw_http(server.url, get_request(b"/queues", wrong, AUTH))
    assert status == 401


@pytest.mark.parametrize(
    "authorization",
    [
        b"bearer " + TOKEN.encode(),
        b"BEARER " + TOKEN.encode(),
        b"Bearer  " + TOKEN.encode(),
        b"Bearer " + TOKEN.encode() + b"  ",
    ],
    ids=["lowercase-scheme", "uppercase-scheme", "two-spaces", "trailing-space"],
)
def test_spellings_the_rfcs_allow_are_accepted(
    wire_server: tuple[Server, str], authorization: bytes
) -> None:
    """The scheme is case-insensitive and 1*SP separates it (RFC 9110, RFC 6750); trailing
    whitespace is not part of a field value."""
    server, _ = wire_server
    status, _, _ = raw_http(server.url, get_request(b"/queues", b"Authorization: " + authorization))
    assert status == 200


def test_a_client_that_never_finishes_its_headers_is_dropped(
    wire_server: tuple[Server, str],
) -> None:
    """Half a request and then silence (slow loris) does not hold a connection for long, and
    other clients are served meanwhile."""
    server, _ = wire_server
    with socket.create_connection(address(server.url), timeout=30) as conn:
        conn.sendall(b"GET /queues HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH + b"\r\n")
        assert _alive(server)
        started = time.monotonic()
        leftover = conn.recv(100)
        waited = time.monotonic() - started
    assert leftover == b"" or leftover.startswith(b"HTTP/1.1 408")
    assert waited < 20


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"Content-Length: 99999999999999999999\r\n", 413),
        (b"Content-Length: -5\r\n", 400),
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", 400),
    ],
    ids=["huge-content-length", "negative-content-length", "conflicting-content-lengths"],
)
def test_lying_content_lengths_are_refused(
    wire_server: tuple[Server, str], extra: bytes, status: int
) -> None:
    """A Content-Length no body can match is refused up front; nothing is written."""
    server, dsn = wire_server
    before = task_count(dsn)
    request = (
        b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH + b"\r\n"
        b"Content-Type: application/json\r\n" + extra + b"Connection: close\r\n\r\n{}"
    )
    got, _, _ = raw_http(server.url, request)
    assert got == status
    assert task_count(dsn) == before
    assert _alive(server)


def test_a_chunked_body_over_the_limit_is_413(wire_server: tuple[Server, str]) -> None:
    """Without a Content-Length the limit still holds: 1.3 MB of chunks is 413."""
    server, dsn = wire_server
    before = task_count(dsn)
    chunks = b"".join(b"10000\r\n" + b" " * 0x10000 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"
    request = (
        b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunks
    )
    status, _, body = raw_http(server.url, request)
    assert status == 413
    assert json.loads(body)["code"] == "PAYLOAD_TOO_LARGE"
    assert task_count(dsn) == before


@pytest.mark.parametrize("length", [10_000, 60_000])
def test_a_long_query_string_is_refused_or_matches_nothing(
    wire_server: tuple[Server, str], length: int
) -> None:
    """Very long filters never reach a 5xx: an empty page, or a 4xx from the HTTP layer."""
    server, _ = wire_server
    status, _, body = raw_http(server.url, get_request(b"/tasks?kind=" + b"k" * length, AUTH))
    assert status in {200, 400, 414, 431}
    if status == 200:
        assert json.loads(body)["items"] == []
    assert _alive(server)


# --- pinned bugs that need their own server ---------------------------------------------------


def test_a_task_scheduled_at_year_one_does_not_kill_the_server(
    database_url: str, tmp_path: Path
) -> None:
    """Such a submission is refused (4xx), or the task runs and the server stays up."""
    server = start_server(
        "--app",
        "e2e_tasks",
        cwd=write_tasks_module(tmp_path),
        env=base_env(DATABASE_URL=database_url),
    )
    try:
        response = server.request(
            "POST",
            "/tasks",
            {"kind": "echo", "payload": {"message": "x"}, "scheduledAt": "0001-01-01T00:00:00Z"},
        )
        if response.status < 300:
            task_id = response.json()["id"]

            def settled() -> bool:
                if server.process.poll() is not None:
                    return True
                try:
                    status: str = server.request("GET", f"/tasks/{task_id}").json()["status"]
                except OSError:  # connection refused: the process is on its way out
                    server.process.wait(timeout=15)
                    return True
                return status == "completed"

            wait_for(settled, timeout=20)
            assert server.process.poll() is None, "\n".join(server.lines[-5:])
        else:
            assert 400 <= response.status < 500
    finally:
        server.stop()


def test_a_non_ascii_api_token_is_refused_at_startup_or_usable(
    database_url: str, tmp_path: Path
) -> None:
    """Either serve refuses the token (exit 2), or a client sending it as UTF-8 gets in."""
    token = "t\u00f8ken-\u20ac"
    env = base_env(DATABASE_URL=database_url, IRON_DEFER__SERVER__API_TOKEN=token)
    refusal = ""
    try:
        server = start_server("--app", "e2e_tasks", cwd=write_tasks_module(tmp_path), env=env)
    except AssertionError as exc:  # refused to start: the other acceptable outcome
        refusal = str(exc)
    if refusal:
        assert "api_token" in refusal
        return
    try:
        status, _, _ = raw_http(
            server.url, get_request(b"/queues", b"Authorization: Bearer " + token.encode())
        )
        assert status == 200
    finally:
        server.stop()
