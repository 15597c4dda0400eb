"""No secret leaks: the DSN password, the API token and task payloads stay out of every
output the system produces, and the server binds loopback unless told otherwise.

Rules of this file: one scenario runs once for the module against a real ``serve`` whose DSN
carries a password (trust auth ignores it) and which requires an API token; it submits tasks
whose payloads hold a marker, makes some fail and retry, cancels one, walks the error paths
(400, 401, 404, 405, 409, 413, 422), scrapes /metrics, fetches /openapi.json, stops the
server, and runs ``config show``, ``config show --json``, ``config validate`` and failing
commands with the same environment. Each test then searches one kind of output for the
secrets. Answers that are task reads (a task or a page of tasks, 2xx on /tasks*) may hold
the payload and are left out of the payload search only; nothing is left out of the
password and token searches. The scenario's own outcomes are asserted too, so a search
never passes because nothing happened.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.serving import Server, base_env, start_server, wait_for, write_tasks_module
from tests.e2e.test_cli_migrate import cli
from tests.hostile._support import own_database

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator

PASSWORD = "dsn-pw-Q7v3x9Lk2"
TOKEN = "api-token-Zr81mWq5"
MARKER = "payload-secret-H4s8Tn"

#: Task kinds whose payloads carry the marker; none of them logs its payload.
LEAK_TASKS = """
from typing import ClassVar

import iron_defer_trio as iron_defer


class Keep(iron_defer.Task):
    KIND: ClassVar[str] = "keep"
    note: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


class FailFirst(iron_defer.Task):
    KIND: ClassVar[str] = "fail_first"
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = iron_defer.RetryPolicy(
        base_delay=0.1, max_delay=0.1
    )
    note: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")


class GiveUp(iron_defer.Task):
    KIND: ClassVar[str] = "give_up"
    MAX_ATTEMPTS: ClassVar[int | None] = 1
    note: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        raise RuntimeError("this task always fails")
"""


@dataclass
class Exchange:
    """One request and what came back."""

    label: str
    status: int
    headers: str
    body: str
    #: A 2xx task read (the task or a page of tasks): may legitimately carry the payload.
    reads_tasks: bool


@dataclass
class Scenario:
    """Everything the scenario saw."""

    server: Server
    dsn: str
    exchanges: list[Exchange] = field(default_factory=list)
    metrics: str = ""
    commands: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    task_statuses: dict[str, str] = field(default_factory=dict)
    #: Local addresses listening on the server's port while it ran.
    listeners: set[str] = field(default_factory=set)


def _with_password(dsn: str) -> str:
    scheme, _, rest = dsn.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{PASSWORD}@{host}"


def call(
    scenario: Scenario,
    label: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    authenticate: bool = True,
) -> Any:
    response = scenario.server.request(
        method, path, body, raw=raw, headers=headers, authenticate=authenticate
    )
    text = response.body.decode("utf-8", "replace")
    reads_tasks = path.startswith("/tasks") and 200 <= response.status < 300
    scenario.exchanges.append(
        Exchange(label, response.status, str(response.headers), text, reads_tasks)
    )
    return response


def _run_scenario(scenario: Scenario, app_dir: Path, env: dict[str, str]) -> None:
    scenario.listeners = _listening_addresses(int(scenario.server.url.rsplit(":", 1)[1]))
    note = {"note": f"{MARKER} (card 4111 1111 1111 1111)"}
    # Work: one completes, one fails once then completes, one gives up, one is cancelled.
    ids = {
        kind: call(
            scenario, f"create {kind}", "POST", "/tasks", {"kind": kind, "payload": note}
        ).json()["id"]
        for kind in ("keep", "fail_first", "give_up")
    }
    ids["fail_once"] = call(
        scenario, "create fail_once", "POST", "/tasks", {"kind": "fail_once", "payload": {}}
    ).json()["id"]
    later = call(
        scenario,
        "create scheduled",
        "POST",
        "/tasks",
        {"kind": "keep", "payload": note, "scheduledAt": "2099-01-01T00:00:00Z"},
    ).json()["id"]
    call(scenario, "cancel", "DELETE", f"/tasks/{later}")
    call(scenario, "cancel again (409)", "DELETE", f"/tasks/{later}")

    def settled() -> bool:
        statuses = {
            kind: call(scenario, f"read {kind}", "GET", f"/tasks/{task_id}").json()["status"]
            for kind, task_id in ids.items()
        }
        scenario.task_statuses = statuses
        return all(status in {"completed", "failed"} for status in statuses.values())

    wait_for(settled, timeout=30, interval=0.2)
    scenario.task_statuses["scheduled"] = call(
        scenario, "read cancelled", "GET", f"/tasks/{later}"
    ).json()["status"]
    call(scenario, "list", "GET", "/tasks?limit=500")
    call(scenario, "queues", "GET", "/queues")
    # Error paths, each carrying the marker where a client could put it.
    call(scenario, "no token (401)", "GET", "/queues", authenticate=False)
    call(
        scenario,
        "wrong token (401)",
        "POST",
        "/tasks",
        {"kind": "keep", "payload": note},
        headers={"Authorization": f"Bearer {TOKEN[:-1]}"},
    )
    call(
        scenario, "basic scheme (401)", "GET", "/tasks", headers={"Authorization": f"Basic {TOKEN}"}
    )
    call(scenario, "unknown task (404)", "GET", f"/tasks/{uuid.uuid4()}")
    call(scenario, "unknown route (404)", "GET", "/nowhere")
    call(scenario, "bad id (400)", "GET", "/tasks/not-an-id")
    call(scenario, "bad query (400)", "GET", "/tasks?limit=0")
    call(scenario, "method (405)", "PUT", "/tasks", {"kind": "keep", "payload": note})
    call(
        scenario,
        "extra field (422)",
        "POST",
        "/tasks",
        {"kind": "keep", "payload": {**note, "extra": MARKER}},
    )
    call(scenario, "wrong type (422)", "POST", "/tasks", {"kind": "keep", "payload": {"note": 5}})
    call(scenario, "unknown kind (422)", "POST", "/tasks", {"kind": "nope", "payload": note})
    call(
        scenario,
        "nul in payload (422)",
        "POST",
        "/tasks",
        {"kind": "keep", "payload": {"note": f"{MARKER}\x00"}},
    )
    call(
        scenario,
        "bad queue (422)",
        "POST",
        "/tasks",
        {"kind": "keep", "payload": note, "queue": "a b"},
    )
    call(
        scenario,
        "malformed (400)",
        "POST",
        "/tasks",
        raw=json.dumps({"kind": "keep", "payload": note}).encode()[:-3],
    )
    call(
        scenario,
        "too large (413)",
        "POST",
        "/tasks",
        {"kind": "keep", "payload": {"note": MARKER * 100_000}},
    )
    scenario.metrics = call(scenario, "metrics", "GET", "/metrics").body.decode()
    call(scenario, "openapi", "GET", "/openapi.json")
    call(scenario, "health", "GET", "/health", authenticate=False)
    call(scenario, "ready", "GET", "/health/ready", authenticate=False)
    scenario.server.stop()  # the shutdown's log lines are searched too

    flagged = ["--database-url", _with_password(scenario.dsn)]
    scenario.commands = {
        "config show": cli("config", "show", cwd=app_dir, env=env),
        "config show --json": cli("config", "show", "--json", cwd=app_dir, env=env),
        "config validate": cli("config", "validate", cwd=app_dir, env=env),
        "queues": cli("queues", cwd=app_dir, env=env),
        "tasks list": cli("tasks", "list", cwd=app_dir, env=env),
        "tasks get (missing)": cli("tasks", "get", str(uuid.uuid4()), cwd=app_dir, env=env),
        "submit (field errors)": cli(
            "submit",
            "keep",
            "--app",
            "leak_tasks",
            "--payload",
            json.dumps({"note": 5, "extra": MARKER}),
            cwd=app_dir,
            env=env,
        ),
        "submit (bad queue)": cli(
            "submit",
            "keep",
            "--app",
            "leak_tasks",
            "--queue",
            "a b",
            "--payload",
            json.dumps({"note": MARKER}),
            cwd=app_dir,
            env=env,
        ),
        "unreachable database": cli(
            "--database-url",
            f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nowhere",
            "queues",
            cwd=app_dir,
            env=env,
        ),
        "flagged config show": cli(*flagged, "config", "show", cwd=app_dir, env=env),
    }


@pytest.fixture(scope="module")
def scenario(
    template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    """The whole scenario, run once; the server is stopped before the tests search."""
    app_dir = write_tasks_module(tmp_path_factory.mktemp("leak_app"))
    (app_dir / "leak_tasks.py").write_text(LEAK_TASKS)
    with own_database(template_database, "iron_defer_leaks") as dsn:
        env = base_env(
            DATABASE_URL=_with_password(dsn),
            IRON_DEFER__SERVER__API_TOKEN=TOKEN,
            IRON_DEFER__SERVER__MAX_BODY_BYTES="65536",
            IRON_DEFER__WORKER__SHUTDOWN_TIMEOUT="5s",
            # Debug: the per-task events (task_enqueued, task_claimed, ...) are searched too.
            IRON_DEFER__OBSERVABILITY__LOG_LEVEL="debug",
        )
        server = start_server(
            "--app", "e2e_tasks", "--app", "leak_tasks", cwd=app_dir, env=env, token=TOKEN
        )
        record = Scenario(server=server, dsn=dsn)
        try:
            _run_scenario(record, app_dir, env)
        finally:
            server.stop()
        yield record


def test_the_scenario_really_exercised_every_path(scenario: Scenario) -> None:
    """Tasks completed, failed and were cancelled, and each error status was answered: the
    searches below look at real output."""
    assert scenario.task_statuses == {
        "keep": "completed",
        "fail_first": "completed",
        "give_up": "failed",
        "fail_once": "completed",
        "scheduled": "cancelled",
    }
    statuses = {exchange.status for exchange in scenario.exchanges}
    assert {200, 201, 400, 401, 404, 405, 409, 413, 422} <= statuses
    assert any(exchange.reads_tasks and MARKER in exchange.body for exchange in scenario.exchanges)
    assert scenario.server.events("task_failed_retry")
    assert scenario.server.events("task_failed_terminal")
    assert scenario.server.events("server_stopped")
    assert "iron_defer_" in scenario.metrics
    codes = {name: result.returncode for name, result in scenario.commands.items()}
    assert codes == {
        "config show": 0,
        "config show --json": 0,
        "config validate": 0,
        "queues": 0,
        "tasks list": 0,
        "tasks get (missing)": 3,
        "submit (field errors)": 2,
        "submit (bad queue)": 2,
        "unreachable database": 1,
        "flagged config show": 0,
    }, {name: result.stderr for name, result in scenario.commands.items()}


def test_the_server_log_holds_no_secret_and_no_payload(scenario: Scenario) -> None:
    """Neither the password, the token nor the payload marker is in any log line, from
    start-up to shutdown, debug events included (log_payload is off by default)."""
    log = "\n".join(scenario.server.lines)
    assert scenario.server.events("task_enqueued")
    assert scenario.server.events("task_claimed")
    assert PASSWORD not in log
    assert TOKEN not in log
    assert MARKER not in log


def test_responses_hold_no_secret_and_no_payload_outside_task_reads(scenario: Scenario) -> None:
    """No answer (body or header) carries the password or the token; none but the task
    reads carries the payload, not even the errors about that payload."""
    for exchange in scenario.exchanges:
        seen = exchange.headers + exchange.body
        assert PASSWORD not in seen, exchange.label
        assert TOKEN not in seen, exchange.label
        if not exchange.reads_tasks:
            assert MARKER not in seen, (exchange.label, exchange.body[:300])


def test_metrics_and_the_openapi_document_hold_no_secret(scenario: Scenario) -> None:
    """/metrics labels carry queues and kinds only; the document describes, never reveals."""
    openapi = next(e for e in scenario.exchanges if e.label == "openapi").body
    for text in (scenario.metrics, openapi):
        assert PASSWORD not in text
        assert TOKEN not in text
        assert MARKER not in text


def test_cli_output_holds_no_secret_and_no_payload(scenario: Scenario) -> None:
    """config show (table and JSON), config validate, and failing commands print neither the
    password, the token nor the payload marker; the secrets show as ***."""
    for name, result in scenario.commands.items():
        output = result.stdout + result.stderr
        assert PASSWORD not in output, name
        assert TOKEN not in output, name
        assert MARKER not in output, name
        assert "Traceback" not in output, name
    shown = json.loads(scenario.commands["config show --json"].stdout)
    assert shown["settings"]["server"]["api_token"] == "***"
    assert ":***@" in shown["settings"]["database"]["url"]
    assert ":***@" in scenario.commands["flagged config show"].stdout


def test_the_server_binds_loopback_by_default(scenario: Scenario) -> None:
    """With no host configured, the API listens on 127.0.0.1 only: its announced URL, and
    the kernel's table of listening sockets for its port."""
    (started,) = scenario.server.events("server_started")
    urls = started["urls"]
    assert [url.split("//")[1].rsplit(":", 1)[0] for url in urls] == ["127.0.0.1"]
    assert scenario.listeners == {"127.0.0.1"}


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets in LISTEN state on ``port`` (/proc/net/tcp and tcp6;
    IPv6 addresses are returned as ``ipv6:<hex>``)."""
    found: set[str] = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:]:
            columns = line.split()
            address, _, hex_port = columns[1].partition(":")
            if columns[3] == "0A" and int(hex_port, 16) == port:  # 0A is LISTEN
                raw = bytes.fromhex(address)
                found.add(
                    ".".join(str(b) for b in reversed(raw)) if len(raw) == 4 else f"ipv6:{address}"
                )
    return found
