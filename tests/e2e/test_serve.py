"""The real ``iron-defer-trio serve`` process: every endpoint over HTTP (with each error
status), authentication, and shutdown by SIGTERM / a second signal.

Tests here are synchronous: they drive a subprocess and talk HTTP with urllib.
"""

from __future__ import annotations

import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests import pg
from tests.e2e.serving import Server, base_env, start_server, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from iron_defer_trio.store._cluster import PrivateCluster

TOKEN = "e2e-token-0123456789"


@pytest.fixture
def server(database_url: str, app_dir: Path) -> Iterator[Server]:
    running = start_server(
        "--app",
        "e2e_tasks",
        "--queue",
        "default=4",
        "--queue",
        "slow=2",
        cwd=app_dir,
        env=base_env(
            DATABASE_URL=database_url,
            IRON_DEFER__SERVER__API_TOKEN=TOKEN,
            IRON_DEFER__SERVER__MAX_BODY_BYTES="4096",
            IRON_DEFER__WORKER__SHUTDOWN_TIMEOUT="10s",
            IRON_DEFER__OBSERVABILITY__GAUGE_INTERVAL="200ms",
        ),
        token=TOKEN,
    )
    try:
        yield running
    finally:
        running.stop()


def test_every_endpoint_and_error_status_over_http(server: Server, database_url: str) -> None:
    """The served API answers each endpoint, and each documented error, over real HTTP."""
    created = server.request("POST", "/tasks", {"kind": "echo", "payload": {"message": "hi"}})
    assert created.status == 201
    task = created.json()
    assert created.headers["Location"] == f"/tasks/{task['id']}"
    done = wait_for(
        lambda: (
            (r := server.request("GET", f"/tasks/{task['id']}")).json()["status"] == "completed"
            and r
        )
    )
    assert done.json()["attempts"] == 1

    later = server.request(
        "POST",
        "/tasks",
        {"kind": "echo", "payload": {"message": "later"}, "scheduledAt": "2099-01-01T00:00:00Z"},
    ).json()
    page = server.request("GET", "/tasks?limit=1")
    assert page.status == 200
    assert page.json()["items"][0]["id"] == later["id"]
    assert page.json()["nextCursor"] == later["id"]
    assert (
        server.request("GET", f"/tasks?cursor={later['id']}").json()["items"][0]["id"] == task["id"]
    )
    queues = {q["queue"]: q for q in server.request("GET", "/queues").json()["queues"]}
    assert queues["default"]["completed"] == 1
    assert queues["default"]["scheduled"] == 1
    cancelled = server.request("DELETE", f"/tasks/{later['id']}")
    assert (cancelled.status, cancelled.json()["status"]) == (200, "cancelled")
    assert server.request("GET", "/health", authenticate=False).status == 200
    assert server.request("GET", "/health/ready", authenticate=False).status == 200
    metrics = server.request("GET", "/metrics")
    assert metrics.status == 200
    assert b"iron_defer_" in metrics.body
    openapi = server.request("GET", "/openapi.json")
    assert openapi.json()["openapi"] == "3.1.0"

    errors = [
        (server.request("POST", "/tasks", raw=b"{oops"), 400, "MALFORMED_JSON"),
        (server.request("GET", "/tasks?limit=0"), 400, "INVALID_QUERY"),
        (server.request("GET", "/tasks/xyz"), 400, "INVALID_TASK_ID"),
        (server.request("GET", "/queues", authenticate=False), 401, "UNAUTHORIZED"),
        (server.request("GET", f"/tasks/{uuid.uuid4()}"), 404, "TASK_NOT_FOUND"),
        (server.request("GET", "/nowhere"), 404, "NOT_FOUND"),
        (server.request("PATCH", "/tasks"), 405, "METHOD_NOT_ALLOWED"),
        (server.request("DELETE", f"/tasks/{task['id']}"), 409, "INVALID_TRANSITION"),
        (server.request("POST", "/tasks", raw=b"{" + b" " * 5000 + b"}"), 413, "PAYLOAD_TOO_LARGE"),
        (
            server.request("POST", "/tasks", raw=b"{}", headers={"Content-Type": "text/csv"}),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            server.request("POST", "/tasks", {"kind": "echo", "payload": {}}),
            422,
            "VALIDATION_FAILED",
        ),
        (server.request("POST", "/tasks", {"kind": "nope", "payload": {}}), 422, "UNKNOWN_KIND"),
        (
            server.request(
                "POST", "/tasks", {"kind": "echo", "payload": {"message": "x"}, "queue": "a b"}
            ),
            422,
            "INVALID_TASK",
        ),
    ]
    for response, status, code in errors:
        assert (response.status, response.json()["code"]) == (status, code), response.body
        assert response.headers["Content-Type"] == "application/problem+json"
    rows = pg.fetch_sync(database_url, "SELECT count(*) AS n FROM iron_defer.tasks")
    assert rows[0]["n"] == 2  # rejected requests wrote nothing


def test_serve_tunes_the_garbage_collector_of_its_own_process(server: Server) -> None:
    """Inside ``serve``, start-up objects are frozen out of collections and the young
    generation is collected less often (docs/guides/production.md, The process)."""
    created = server.request("POST", "/tasks", {"kind": "gc_state", "payload": {}})
    assert created.status == 201
    [state] = wait_for(lambda: server.events("gc_state"))
    assert state["threshold"][0] == 10_000
    assert state["frozen"] > 10_000


def test_sigterm_drains_running_tasks_and_exits_zero(server: Server, database_url: str) -> None:
    """SIGTERM with tasks in flight: they finish, nothing is left running, exit status 0."""
    ids = [
        server.request(
            "POST", "/tasks", {"kind": "sleep", "payload": {"seconds": 1.0}, "queue": "slow"}
        ).json()["id"]
        for _ in range(2)
    ]
    wait_for(
        lambda: all(server.request("GET", f"/tasks/{i}").json()["status"] == "running" for i in ids)
    )
    server.signal(signal.SIGTERM)
    started = time.monotonic()
    assert server.wait(timeout=30) == 0
    took = time.monotonic() - started
    rows = pg.fetch_sync(
        database_url, "SELECT status, count(*) AS n FROM iron_defer.tasks GROUP BY status"
    )
    assert {r["status"]: r["n"] for r in rows} == {"completed": 2}
    assert took < 10.0
    assert server.events("shutdown_requested")[0]["signal"] == "SIGTERM"
    assert server.events("server_stopped")


def test_tasks_past_the_shutdown_timeout_are_pending_again(
    database_url: str, app_dir: Path
) -> None:
    """Tasks still running at the deadline are cancelled and handed back; exit 0 within
    shutdown_timeout plus a small margin."""
    running = start_server(
        "--app",
        "e2e_tasks",
        cwd=app_dir,
        env=base_env(DATABASE_URL=database_url, IRON_DEFER__WORKER__SHUTDOWN_TIMEOUT="1s"),
    )
    try:
        ids = [
            running.request("POST", "/tasks", {"kind": "sleep", "payload": {"seconds": 60}}).json()[
                "id"
            ]
            for _ in range(3)
        ]
        wait_for(
            lambda: all(
                running.request("GET", f"/tasks/{i}").json()["status"] == "running" for i in ids
            )
        )
        running.signal(signal.SIGTERM)
        started = time.monotonic()
        assert running.wait(timeout=30) == 0
        took = time.monotonic() - started
    finally:
        running.stop()
    rows = pg.fetch_sync(database_url, "SELECT status, attempts, claimed_by FROM iron_defer.tasks")
    assert [(r["status"], r["attempts"], r["claimed_by"]) for r in rows] == [
        ("pending", 0, None)
    ] * 3
    assert 1.0 <= took < 5.0


def test_second_signal_stops_at_once(database_url: str, app_dir: Path) -> None:
    """A second signal during the drain exits promptly (status 1), still handing tasks back."""
    running = start_server(
        "--app",
        "e2e_tasks",
        cwd=app_dir,
        env=base_env(DATABASE_URL=database_url, IRON_DEFER__WORKER__SHUTDOWN_TIMEOUT="5m"),
    )
    try:
        task = running.request(
            "POST", "/tasks", {"kind": "sleep", "payload": {"seconds": 600}}
        ).json()
        wait_for(
            lambda: running.request("GET", f"/tasks/{task['id']}").json()["status"] == "running"
        )
        running.signal(signal.SIGINT)
        wait_for(lambda: running.events("server_draining"))
        running.signal(signal.SIGINT)
        started = time.monotonic()
        assert running.wait(timeout=30) == 1
        took = time.monotonic() - started
    finally:
        running.stop()
    rows = pg.fetch_sync(database_url, "SELECT status, claimed_by FROM iron_defer.tasks")
    assert [(r["status"], r["claimed_by"]) for r in rows] == [("pending", None)]
    assert took < 5.0
    assert running.events("shutdown_forced")


def test_serve_without_task_modules_is_a_usage_error(database_url: str, tmp_path: Path) -> None:
    """serve refuses to start with nothing to run: exit 2 and one clear line."""
    import subprocess

    from tests.e2e.serving import CLI

    result = subprocess.run(
        [str(CLI), "serve", "--port", "0"],
        cwd=tmp_path,
        env=base_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--app" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_and_rest_agree_both_ways(server: Server, database_url: str, app_dir: Path) -> None:
    """A task submitted with the CLI reads the same over REST, and one created over REST reads
    the same with the CLI's --json (the shared wire format)."""
    import json

    from tests.e2e.test_cli_migrate import cli, cli_env

    env = cli_env(DATABASE_URL=database_url)
    submitted = cli(
        "submit",
        "echo",
        "--payload",
        '{"message": "from the cli"}',
        "--queue",
        "slow",
        "--app",
        "e2e_tasks",
        cwd=app_dir,
        env=env,
    )
    assert submitted.returncode == 0, submitted.stderr
    cli_id = submitted.stdout.strip()
    over_rest = wait_for(
        lambda: (
            (r := server.request("GET", f"/tasks/{cli_id}").json())["status"] == "completed" and r
        )
    )
    assert (over_rest["kind"], over_rest["queue"], over_rest["payload"]) == (
        "echo",
        "slow",
        {"message": "from the cli"},
    )
    shown = cli("tasks", "get", cli_id, "--json", cwd=app_dir, env=env)
    assert json.loads(shown.stdout) == over_rest

    created = server.request(
        "POST",
        "/tasks",
        {
            "kind": "echo",
            "payload": {"message": "from rest"},
            "scheduledAt": "2099-01-01T00:00:00Z",
        },
    ).json()
    read = cli("tasks", "get", created["id"], "--json", cwd=app_dir, env=env)
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout) == server.request("GET", f"/tasks/{created['id']}").json()
    listed = json.loads(
        cli("tasks", "list", "--json", "--limit", "500", cwd=app_dir, env=env).stdout
    )
    assert {item["id"] for item in listed["items"]} == {cli_id, created["id"]}
    cancelled = cli("tasks", "cancel", created["id"], cwd=app_dir, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert server.request("GET", f"/tasks/{created['id']}").json()["status"] == "cancelled"
    again = cli("tasks", "cancel", created["id"], cwd=app_dir, env=env)
    assert again.returncode == 4
    rest_queues = server.request("GET", "/queues").json()
    cli_queues = json.loads(cli("queues", "--json", cwd=app_dir, env=env).stdout)

    def without_age(queues: dict[str, Any]) -> list[dict[str, Any]]:
        # The age moves between the two reads; everything else must be identical.
        return [
            {k: v for k, v in q.items() if k != "oldestPendingAgeSeconds"} for q in queues["queues"]
        ]

    assert without_age(cli_queues) == without_age(rest_queues)


def test_database_outage_is_503_then_the_server_recovers(
    private_cluster: PrivateCluster, app_dir: Path
) -> None:
    """With PostgreSQL down: readiness and writes answer 503 (nothing half-written); once it
    is back, the same server is ready again and runs work, without a restart."""
    dsn = private_cluster.create_database("served")
    running = start_server(
        "--app",
        "e2e_tasks",
        cwd=app_dir,
        env=base_env(DATABASE_URL=dsn, IRON_DEFER__SERVER__READY_TIMEOUT="1s"),
    )
    try:
        assert running.request("GET", "/health/ready").status == 200
        private_cluster.stop()
        ready = running.request("GET", "/health/ready")
        assert (ready.status, ready.json()["status"]) == (503, "unavailable")
        write = running.request("POST", "/tasks", {"kind": "echo", "payload": {"message": "x"}})
        assert (write.status, write.json()["code"]) == (503, "DATABASE_UNAVAILABLE")
        assert running.request("GET", "/health").status == 200
        private_cluster.start()
        wait_for(lambda: running.request("GET", "/health/ready").status == 200, timeout=30)
        task = wait_for(
            lambda: (
                (
                    r := running.request(
                        "POST", "/tasks", {"kind": "echo", "payload": {"message": "y"}}
                    )
                ).status
                == 201
                and r.json()
            )
        )
        wait_for(
            lambda: running.request("GET", f"/tasks/{task['id']}").json()["status"] == "completed"
        )
    finally:
        running.stop()
    rows = pg.fetch_sync(dsn, "SELECT payload->>'message' AS m FROM iron_defer.tasks")
    assert [r["m"] for r in rows] == ["y"]


def test_metrics_scraped_from_the_server_have_every_documented_name(
    server: Server, database_url: str
) -> None:
    """After real work (completions, a retry, a recovered lease), /metrics parses as
    Prometheus text, carries every documented metric with sensible values, nothing doubled."""
    from prometheus_client.parser import text_string_to_metric_families

    from iron_defer_trio.observability.metrics import ALL

    def submit(kind: str, payload: dict[str, Any], **extra: Any) -> str:
        body = {"kind": kind, "payload": payload, **extra}
        task_id: str = server.request("POST", "/tasks", body).json()["id"]
        return task_id

    ids = [submit("echo", {"message": str(i)}) for i in range(3)]
    ids.append(submit("fail_once", {}))
    orphan = submit("echo", {"message": "orphan"}, scheduledAt="2099-01-01T00:00:00Z")
    pg.fetch_sync(  # a worker that died mid-attempt: running, lease already expired
        database_url,
        "UPDATE iron_defer.tasks SET status = 'running', attempts = 1, scheduled_at = now(), "
        "claimed_by = gen_random_uuid(), claimed_until = now() - interval '1 s', "
        "started_at = now() WHERE id = $1 RETURNING id",
        uuid.UUID(orphan),
    )
    ids.append(orphan)
    pg.fetch_sync(  # history past retention (failed: 7 days), for the sweeper to delete
        database_url,
        "INSERT INTO iron_defer.tasks (id, queue, kind, payload, max_attempts, status, attempts,"
        " last_error, finished_at) VALUES (gen_random_uuid(), 'default', 'echo', '{}', 1,"
        " 'failed', 1, 'old', now() - interval '30 days') RETURNING id",
    )
    wait_for(
        lambda: all(
            server.request("GET", f"/tasks/{i}").json()["status"] == "completed" for i in ids
        )
    )
    samples: dict[str, list[Any]] = {}

    def scrape() -> bool:
        text = server.request("GET", "/metrics").body.decode()
        samples.clear()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample)
        # Wait for a gauge refresh after the work (nothing running any more) and for a sweep
        # after the old history went in (it is deleted).
        running = samples.get("iron_defer_tasks_running")
        idle = running is not None and sum(s.value for s in running) == 0
        return idle and "iron_defer_tasks_deleted_total" in samples

    wait_for(scrape, timeout=20)
    expected = {spec.name + ("_count" if spec.kind == "histogram" else "") for spec in ALL}
    assert expected <= set(samples), expected - set(samples)
    assert not any("_total_total" in name or "_seconds_seconds" in name for name in samples)

    def value(name: str, **labels: str) -> float:
        return float(
            sum(
                s.value
                for s in samples[name]
                if all(s.labels.get(k) == v for k, v in labels.items())
            )
        )

    echo = {"queue": "default", "kind": "echo"}
    flaky = {"queue": "default", "kind": "fail_once"}
    assert value("iron_defer_tasks_enqueued_total", **echo) == 4
    assert value("iron_defer_task_attempts_total", **echo) == 4  # 3 + the orphan's rerun
    assert value("iron_defer_tasks_completed_total", **echo) == 4
    assert value("iron_defer_task_attempts_total", **flaky) == 2
    assert value("iron_defer_task_failures_total", **flaky) == 1
    assert value("iron_defer_task_retries_total", **flaky) == 1
    assert value("iron_defer_lease_recoveries_total", queue="default", status="pending") == 1
    assert value("iron_defer_tasks_deleted_total", status="failed") == 1
    assert value("iron_defer_task_duration_seconds_count", outcome="completed", **echo) == 4
    assert value("iron_defer_task_duration_seconds_count", outcome="retry", **flaky) == 1
    assert value("iron_defer_queue_wait_seconds_count", queue="default") == 6
    assert 0 <= value("iron_defer_worker_utilization", queue="default") <= 1
    assert value("iron_defer_db_pool_size") >= 1
    assert value("iron_defer_tasks_running") == 0
