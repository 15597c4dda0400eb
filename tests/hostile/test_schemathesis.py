"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis).

Rules of this file: one real ``serve`` subprocess with an API token on one fresh database for
the whole module; every operation of the OpenAPI document is fuzzed with positive and negative
data from a fixed seed (derandomized, no example database) so CI runs the same cases each time;
every response must be a non-5xx, documented status with a documented content type and a body
that matches the document, negative data must be rejected, and a rejected ``POST /tasks`` must
leave iron_defer.tasks as it was (a custom check counting the rows before and after). A
schema-level hook steers part of the positive cases onto registered task kinds and existing
task ids so the fuzzing reaches the enqueue, read and cancel paths.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from iron_defer_trio._version import __version__
from iron_defer_trio.http._app import ROUTES
from iron_defer_trio.http._openapi import build_openapi
from tests.e2e.serving import Server, base_env, start_server, write_tasks_module
from tests.hostile._support import own_database, task_count

if TYPE_CHECKING:
    from collections.abc import Iterator

    from schemathesis import Case, CheckContext, HookContext, Response

TOKEN = "fuzz-token-8f3e2a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEED = 20260601
EXAMPLES_PER_OPERATION = 100

#: The document ``GET /openapi.json`` serves, built by the same code the server runs. The
#: pytest integration needs the schema when tests are collected, before any server is up;
#: test_the_fuzzed_document_is_the_one_the_server_serves proves the two are identical.
DOCUMENT: dict[str, Any] = build_openapi(ROUTES, version=__version__)

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "mode": "all",  # positive and negative data
            "max-examples": EXAMPLES_PER_OPERATION,
            "deterministic": True,  # derandomized: CI replays the same cases
            "database": "none",  # and never replays a developer's earlier local failures
        },
    }
)

schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)

#: Ids of the tasks the fuzzing created, so GET and DELETE /tasks/{id} also reach real tasks.
_CREATED: list[str] = []


@schema.hook
def flatmap_case(context: HookContext, case: Case[Any]) -> st.SearchStrategy[Case[Any]]:
    """Steer part of the generated cases into the handlers' deeper paths: positive task
    submissions get a registered kind with a fitting (fuzzed) payload, and task ids often
    name a task that exists.
    """
    positive = case.meta is None or not case.meta.generation.mode.is_negative
    operation = (case.method.upper(), case.path)
    if positive and operation == ("POST", "/tasks") and _submission_shaped(case.body):
        return st.one_of(
            st.just(None),
            st.builds(lambda message: {"kind": "echo", "payload": {"message": message}}, st.text()),
            st.just({"kind": "fail_once", "payload": {}}),
        ).map(lambda steer: _steer(case, steer))
    if positive and case.path == "/tasks/{id}" and _CREATED:
        return st.booleans().map(lambda pick: _pick_created(case, pick))
    return st.just(case)


def _submission_shaped(body: object) -> bool:
    return isinstance(body, dict) and isinstance(body.get("kind"), str)


def _steer(case: Case[Any], steer: dict[str, Any] | None) -> Case[Any]:
    if steer is not None and isinstance(case.body, dict):
        case.body = {**case.body, **steer}
    return case


def _pick_created(case: Case[Any], pick: bool) -> Case[Any]:
    if pick and case.path_parameters is not None:
        case.path_parameters = {**case.path_parameters, "id": _CREATED[len(_CREATED) // 2]}
    return case


@pytest.fixture(scope="module")
def fuzz_dsn(template_database: str) -> Iterator[str]:
    """One fresh database for the module (the per-test ``database_url`` is too short-lived)."""
    with own_database(template_database, "iron_defer_fuzz") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def fuzz_server(fuzz_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server, with workers for the e2e task kinds and an API token."""
    app_dir = write_tasks_module(tmp_path_factory.mktemp("fuzz_app"))
    server = start_server(
        "--app",
        "e2e_tasks",
        cwd=app_dir,
        env=base_env(DATABASE_URL=fuzz_dsn, IRON_DEFER__SERVER__API_TOKEN=TOKEN),
        token=TOKEN,
    )
    try:
        yield server
    finally:
        server.stop()


#: case id -> (database, rows in iron_defer.tasks just before that POST /tasks was sent).
_ROWS_BEFORE: dict[str, tuple[str, int]] = {}


def count_rows_before(case: Case[Any], dsn: str) -> None:
    """Remember the row count before a submission (see rejected_submission_writes_nothing)."""
    if case.method.upper() == "POST" and case.path == "/tasks":
        _ROWS_BEFORE[case.id] = (dsn, task_count(dsn))


def rejected_submission_writes_nothing(
    ctx: CheckContext, response: Response, case: Case[Any]
) -> bool | None:
    """The custom check: a POST /tasks answered >= 400 left iron_defer.tasks as it was."""
    remembered = _ROWS_BEFORE.pop(case.id, None)
    if remembered is None or response.status_code < 400:
        return None
    dsn, before = remembered
    after = task_count(dsn)
    assert after == before, (
        f"POST /tasks answered {response.status_code}, yet iron_defer.tasks went from "
        f"{before} to {after} rows"
    )
    return True


def test_the_fuzzed_document_is_the_one_the_server_serves(fuzz_server: Server) -> None:
    """GET /openapi.json is exactly the document the fuzzing below is generated from."""
    served = fuzz_server.request("GET", "/openapi.json")
    assert served.status == 200
    assert served.json() == json.loads(json.dumps(DOCUMENT))


@schema.parametrize()
def test_every_operation_survives_fuzzing_and_matches_its_document(
    case: Case[Any], fuzz_server: Server, fuzz_dsn: str
) -> None:
    """Generated requests (valid and invalid) never get a 5xx, an undocumented status or
    content type, or a body that contradicts the document; rejected submissions write
    nothing."""
    count_rows_before(case, fuzz_dsn)
    response = case.call(base_url=fuzz_server.url, headers=AUTH, timeout=30)
    if response.status_code == 201:
        _CREATED.append(response.json()["id"])
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
            rejected_submission_writes_nothing,
        ],
        headers=AUTH,
    )
