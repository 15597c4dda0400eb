"""Queues, health probes, metrics, OpenAPI, authentication and 5xx hygiene."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import trio
from openapi_spec_validator import validate as validate_openapi
from prometheus_client.parser import text_string_to_metric_families

import iron_defer_trio as iron_defer
from iron_defer_trio.http._app import ROUTES, create_app
from iron_defer_trio.http._errors import CODES
from iron_defer_trio.observability.telemetry import build_telemetry
from iron_defer_trio.store import PostgresStore
from tests.conftest import fast_settings
from tests.http.conftest import Report, SendEmail

if TYPE_CHECKING:
    from collections.abc import Callable

    from iron_defer_trio.domain import QueueStatistics
    from iron_defer_trio.store._cluster import PrivateCluster

TOKEN = "s3cret-token"


async def test_queues_reports_counts_per_queue(open_api: Callable[..., Any]) -> None:
    """GET /queues gives per-queue counts in camelCase."""
    with trio.fail_after(15):
        async with open_api() as (client, engine):
            await engine.enqueue_many("mail", [SendEmail(to="x") for _ in range(3)])
            cancelled = await engine.enqueue(Report())
            await engine.cancel(cancelled.id)
            body = json.loads(await (await client.get("/queues")).get_data())
    by_queue = {q["queue"]: q for q in body["queues"]}
    assert by_queue["mail"]["pending"] == 3
    assert by_queue["mail"]["oldestPendingAgeSeconds"] >= 0
    assert by_queue["reports"]["cancelled"] == 1
    assert by_queue["reports"]["oldestPendingAgeSeconds"] is None
    assert set(by_queue["mail"]) == {
        "queue",
        "pending",
        "scheduled",
        "running",
        "suspended",
        "completed",
        "failed",
        "cancelled",
        "activeWorkers",
        "oldestPendingAgeSeconds",
        "region",
        "paused",
        "pausedAt",
    }


async def test_health_and_readiness(open_api: Callable[..., Any]) -> None:
    """Liveness is always 200; readiness is 200 while the database answers."""
    with trio.fail_after(15):
        async with open_api() as (client, _):
            live = await client.get("/health")
            ready = await client.get("/health/ready")
    assert (live.status_code, json.loads(await live.get_data())["status"]) == (200, "ok")
    assert (ready.status_code, json.loads(await ready.get_data())["status"]) == (200, "ok")


async def test_readiness_is_503_while_draining(open_api: Callable[..., Any]) -> None:
    """Once the server drains, readiness fails with the reason; liveness stays up."""
    draining = False
    with trio.fail_after(15):
        async with open_api(draining=lambda: draining) as (client, _):
            assert (await client.get("/health/ready")).status_code == 200
            draining = True
            response = await client.get("/health/ready")
            assert (await client.get("/health")).status_code == 200
    assert response.status_code == 503
    assert json.loads(await response.get_data()) == {"status": "unavailable", "reason": "draining"}


async def test_readiness_is_503_when_the_database_is_down(
    private_cluster: PrivateCluster,
) -> None:
    """With PostgreSQL stopped, readiness answers 503 within its timeout."""
    dsn = private_cluster.create_database("ready")
    await iron_defer.migrate(dsn)
    settings = fast_settings(dsn).model_copy(
        update={"server": iron_defer.Settings.build(server={"ready_timeout": 1}).server}
    )
    with trio.fail_after(30):
        async with iron_defer.open_engine(settings, tasks=[SendEmail], run_workers=False) as engine:
            app = create_app(engine, settings)
            async with app.test_app() as test_app:
                client = test_app.test_client()
                assert (await client.get("/health/ready")).status_code == 200
                await trio.to_thread.run_sync(private_cluster.stop)
                started = trio.current_time()
                response = await client.get("/health/ready")
                took = trio.current_time() - started
                await trio.to_thread.run_sync(private_cluster.start)
    assert response.status_code == 503
    assert "database" in json.loads(await response.get_data())["reason"]
    assert took < 3.0


async def test_metrics_renders_the_engines_meter_provider(database_url: str) -> None:
    """GET /metrics renders the text format 0.0.4, from the same provider the engine records
    into, after real work."""
    telemetry = build_telemetry(iron_defer.Settings().observability)
    settings = fast_settings(database_url)
    with trio.fail_after(20):
        async with iron_defer.open_engine(
            settings, tasks=[SendEmail], migrate=False, meter_provider=telemetry.meter_provider
        ) as engine:
            app = create_app(engine, settings, metrics=telemetry.render)
            async with app.test_app() as test_app:
                client = test_app.test_client()
                await engine.enqueue(SendEmail(to="x"))
                await engine.wait_until_idle()
                response = await client.get("/metrics")
                text = await response.get_data(as_text=True)
    telemetry.shutdown()
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    completed = families["iron_defer_tasks_completed"]  # the parser drops the _total suffix
    assert [s.value for s in completed.samples if s.name.endswith("_total")] == [1.0]
    assert "iron_defer_worker_utilization" in families


async def test_rest_submission_joins_the_callers_trace(open_api: Callable[..., Any]) -> None:
    """A traceparent header on POST /tasks is stored with the task (same trace id)."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with trio.fail_after(15):
        async with open_api() as (client, _):
            response = await client.post(
                "/tasks",
                json={"kind": "send_email", "payload": {"to": "x"}},
                headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            )
            untraced = await client.post(
                "/tasks", json={"kind": "send_email", "payload": {"to": "y"}}
            )
    body = json.loads(await response.get_data())
    assert body["traceparent"].split("-")[1] == trace_id
    assert json.loads(await untraced.get_data())["traceparent"] is None


async def test_openapi_document_is_valid_3_1_and_lists_every_route(
    open_api: Callable[..., Any],
) -> None:
    """/openapi.json passes the OpenAPI 3.1 validator and documents every route and code."""
    with trio.fail_after(15):
        async with open_api() as (client, _):
            document = json.loads(await (await client.get("/openapi.json")).get_data())
    validate_openapi(document)
    assert document["openapi"].startswith("3.1")
    documented = {
        (path, method.upper()) for path, ops in document["paths"].items() for method in ops
    }
    assert documented == {(route.path, route.method) for route in ROUTES}
    create = document["paths"]["/tasks"]["post"]
    assert {"201", "400", "413", "415", "422", "503"} <= set(create["responses"])
    assert "Problem" in document["components"]["schemas"]
    assert "TaskOut" in document["components"]["schemas"]


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if r.authenticated], ids=lambda r: f"{r.method} {r.path}"
)
async def test_every_protected_route_requires_the_token(
    open_api: Callable[..., Any], route: Any
) -> None:
    """With server.api_token set, a missing or wrong token is 401 on every protected route,
    and the right one gets through."""
    path = route.path.replace("{id}", "00000000-0000-0000-0000-000000000000")
    with trio.fail_after(15):
        async with open_api(api_token=TOKEN) as (client, _):
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": TOKEN},
                {"Authorization": f"Basic {TOKEN}"},
            ):
                response = await client.open(path, method=route.method, headers=headers)
                assert response.status_code == 401, headers
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert TOKEN not in await response.get_data(as_text=True)
            allowed = await client.open(
                path, method=route.method, headers={"Authorization": f"Bearer {TOKEN}"}
            )
    assert allowed.status_code != 401


async def test_health_probes_never_require_the_token(open_api: Callable[..., Any]) -> None:
    """Load balancers probe without credentials."""
    with trio.fail_after(15):
        async with open_api(api_token=TOKEN) as (client, _):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/health/ready")).status_code == 200


class _FailingStore(PostgresStore):
    """A real store whose statistics query fails like a schema problem would."""

    async def queue_statistics(
        self, *, by_region: bool = False, queue: str | None = None
    ) -> list[QueueStatistics]:
        raise iron_defer.StoreError(
            'database error 42P01: relation "iron_defer.tasks" does not exist '
            "(SELECT queue FROM iron_defer.tasks; dsn postgresql://app:pw@db/x)",
            sqlstate="42P01",
        )

    async def list_tasks(self, **kwargs: Any) -> list[iron_defer.TaskRecord]:
        raise iron_defer.StoreUnavailable("cannot reach the database (Connection refused)")


async def test_server_errors_reveal_no_internals(database_url: str) -> None:
    """A database error is a 500 with a generic detail; an outage a 503; neither carries SQL,
    DSNs or stack traces."""
    settings = fast_settings(database_url)
    with trio.fail_after(15):
        async with iron_defer.open_engine(settings, tasks=[SendEmail], run_workers=False) as real:
            store = real._store
            assert isinstance(store, PostgresStore)
            failing = _FailingStore(store._bridge, store._pool, settings.database, "unused")
            async with iron_defer.open_engine(
                settings, tasks=[SendEmail], store=failing, run_workers=False
            ) as engine:
                app = create_app(engine, settings)
                async with app.test_app() as test_app:
                    client = test_app.test_client()
                    broken = await client.get("/queues")
                    down = await client.get("/tasks")
    for response, status, code in (
        (broken, 500, "DATABASE_ERROR"),
        (down, 503, "DATABASE_UNAVAILABLE"),
    ):
        text = await response.get_data(as_text=True)
        assert response.status_code == status
        assert json.loads(text)["code"] == code
        for secret in (
            "SELECT",
            "42P01",
            "postgresql://",
            "pw@",
            "Traceback",
            "Connection refused",
        ):
            assert secret not in text


def test_every_code_has_a_status_in_the_documented_range() -> None:
    """The code table is consistent: 4xx for client problems, 5xx for ours."""
    assert all(400 <= status < 600 for status in CODES.values())
    assert CODES["VALIDATION_FAILED"] == 422
