"""The quart-trio application: route registration, authentication, error rendering."""

from __future__ import annotations

import hmac
import json
import traceback
from typing import TYPE_CHECKING

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from iron_defer_trio._version import __version__
from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.errors import IronDeferError
from iron_defer_trio.http import _handlers as h
from iron_defer_trio.http._errors import (
    ApiError,
    classify,
    log_request_failure,
    problem_response,
)
from iron_defer_trio.http._openapi import build_openapi
from iron_defer_trio.http._routes import QueryParam, Route
from iron_defer_trio.http._schemas import (
    DEFAULT_PAGE,
    MAX_PAGE,
    AuditPage,
    BulkRetryOut,
    CreateTask,
    Health,
    PeriodicList,
    QueueList,
    QueueOut,
    RetryTasks,
    SignalTask,
    TaskOut,
    TaskPage,
)
from iron_defer_trio.http.ui import UI_PREFIX, create_dashboard, not_found_page
from iron_defer_trio.observability import default_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from iron_defer_trio.config import Settings
    from iron_defer_trio.engine import Engine
    from iron_defer_trio.observability import Logger

_TASK_ERRORS = ("INVALID_TASK_ID", "TASK_NOT_FOUND", "DATABASE_UNAVAILABLE")
_PAGE_LIMIT = QueryParam(
    "limit",
    f"Page size, 1..{MAX_PAGE} (default {DEFAULT_PAGE}).",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/tasks",
        "createTask",
        "Enqueue a task",
        h.create_task,
        {
            201: ("The task, stored and pending", TaskOut),
            200: ("The task the idempotency key already named; nothing new was stored", TaskOut),
        },
        errors=(
            "MALFORMED_JSON",
            "PAYLOAD_TOO_LARGE",
            "UNSUPPORTED_MEDIA_TYPE",
            "VALIDATION_FAILED",
            "UNKNOWN_KIND",
            "INVALID_TASK",
            "IDEMPOTENCY_KEY_REUSED",
            "DATABASE_UNAVAILABLE",
        ),
        request_body=CreateTask,
        headers=(
            QueryParam(
                "Idempotency-Key",
                "1-255 characters naming this submission within the queue: a retry with the "
                "same key and the same kind and payload returns the first task (200) while it "
                "is active and for worker.idempotency_retention after it finished; different "
                "work under the key is answered 409 IDEMPOTENCY_KEY_REUSED.",
                {"type": "string", "minLength": 1, "maxLength": 255},
            ),
        ),
        tags=("tasks",),
    ),
    Route(
        "GET",
        "/tasks",
        "listTasks",
        "List tasks, newest first",
        h.list_tasks,
        {200: ("One page of tasks", TaskPage)},
        errors=("INVALID_QUERY", "DATABASE_UNAVAILABLE"),
        query=(
            QueryParam("queue", "Only this queue.", {"type": "string"}),
            QueryParam(
                "status",
                "Only this status.",
                {
                    "type": "string",
                    "enum": [status.value for status in TaskStatus],
                },
            ),
            QueryParam("kind", "Only this kind.", {"type": "string"}),
            QueryParam(
                "idPrefix",
                "Only tasks whose id starts with these hexadecimal digits (dashes allowed).",
                {"type": "string", "pattern": "^[0-9a-fA-F-]{1,36}$"},
            ),
            _PAGE_LIMIT,
            QueryParam(
                "cursor",
                "The nextCursor of the previous page.",
                {"type": "string", "format": "uuid"},
            ),
        ),
        tags=("tasks",),
    ),
    Route(
        "GET",
        "/tasks/{id}",
        "getTask",
        "Read one task",
        h.get_task,
        {200: ("The task", TaskOut)},
        errors=_TASK_ERRORS,
        tags=("tasks",),
    ),
    Route(
        "GET",
        "/tasks/{id}/audit",
        "getTaskAudit",
        "A task's audit trail, oldest first (database.audit_log)",
        h.task_audit,
        {200: ("One page of audit entries (empty when the audit log is off)", AuditPage)},
        errors=(*_TASK_ERRORS, "INVALID_QUERY"),
        query=(
            _PAGE_LIMIT,
            QueryParam(
                "cursor",
                "The nextCursor of the previous page.",
                {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
            ),
        ),
        tags=("tasks",),
    ),
    Route(
        "POST",
        "/tasks/{id}/signal",
        "signalTask",
        "Resume a suspended task with a payload",
        h.signal_task,
        {200: ("The task, pending again", TaskOut)},
        errors=(
            *_TASK_ERRORS,
            "INVALID_TRANSITION",
            "MALFORMED_JSON",
            "PAYLOAD_TOO_LARGE",
            "UNSUPPORTED_MEDIA_TYPE",
            "VALIDATION_FAILED",
            "INVALID_TASK",
        ),
        request_body=SignalTask,
        tags=("tasks",),
    ),
    Route(
        "DELETE",
        "/tasks/{id}",
        "cancelTask",
        "Cancel a task; a running one is stopped on whichever engine runs it",
        h.cancel_task,
        {
            200: ("The task, now cancelled (it was pending or suspended)", TaskOut),
            202: (
                "The task is running: cancellation was requested (cancelRequestedAt) and it "
                "ends cancelled once its handler stops",
                TaskOut,
            ),
        },
        errors=(*_TASK_ERRORS, "INVALID_TRANSITION"),
        tags=("tasks",),
    ),
    Route(
        "GET",
        "/queues",
        "listQueues",
        "Counts per queue",
        h.list_queues,
        {200: ("Every queue that has tasks or is paused", QueueList)},
        errors=("INVALID_QUERY", "DATABASE_UNAVAILABLE"),
        query=(
            QueryParam(
                "byRegion",
                "Count per queue and region (region null: unpinned tasks).",
                {"type": "boolean"},
            ),
        ),
        tags=("queues",),
    ),
    Route(
        "POST",
        "/queues/{name}/pause",
        "pauseQueue",
        "Pause a queue: no engine claims from it until it is resumed",
        h.pause_queue,
        {200: ("The queue, paused", QueueOut)},
        errors=("INVALID_QUEUE_NAME", "DATABASE_UNAVAILABLE"),
        tags=("queues",),
    ),
    Route(
        "POST",
        "/queues/{name}/resume",
        "resumeQueue",
        "Resume a paused queue; its workers claim at once",
        h.resume_queue,
        {200: ("The queue, not paused", QueueOut)},
        errors=("INVALID_QUEUE_NAME", "DATABASE_UNAVAILABLE"),
        tags=("queues",),
    ),
    Route(
        "GET",
        "/health",
        "health",
        "Liveness: the process is up",
        h.health,
        {200: ("Alive", Health)},
        authenticated=False,
        tags=("operations",),
    ),
    Route(
        "GET",
        "/health/ready",
        "ready",
        "Readiness: not draining and the database answers",
        h.ready,
        {200: ("Ready", Health), 503: ("Not ready (draining or database down)", Health)},
        authenticated=False,
        tags=("operations",),
    ),
    Route(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics (text exposition format 0.0.4)",
        h.metrics,
        {200: ("Metrics", None)},
        media_type="text/plain",
        tags=("operations",),
    ),
    Route(
        "GET",
        "/openapi.json",
        "openapi",
        "This OpenAPI 3.1 document",
        h.health,  # replaced in create_app: the document is built once
        {200: ("The OpenAPI document", None)},
        tags=("operations",),
    ),
    Route(
        "GET",
        "/periodic",
        "listPeriodic",
        "Periodic schedules with their last and next fire times",
        h.list_periodic,
        {200: ("Every registered schedule, by name", PeriodicList)},
        errors=("DATABASE_UNAVAILABLE",),
        tags=("periodic",),
    ),
    Route(
        "POST",
        "/tasks/{id}/retry",
        "retryTask",
        "Run a failed or cancelled task again, with a new attempt budget",
        h.retry_task,
        {200: ("The task, pending and due now (attempts 0)", TaskOut)},
        errors=(*_TASK_ERRORS, "INVALID_TRANSITION"),
        tags=("tasks",),
    ),
    Route(
        "POST",
        "/tasks/retry",
        "retryTasks",
        "Count, then retry with the confirmed count, the failed or cancelled tasks of a queue",
        h.retry_tasks,
        {
            200: (
                "Without expect: how many tasks match (nothing changed). With expect: how "
                "many were retried",
                BulkRetryOut,
            )
        },
        errors=(
            "MALFORMED_JSON",
            "PAYLOAD_TOO_LARGE",
            "UNSUPPORTED_MEDIA_TYPE",
            "VALIDATION_FAILED",
            "INVALID_TASK",
            "COUNT_CHANGED",
            "DATABASE_UNAVAILABLE",
        ),
        request_body=RetryTasks,
        tags=("tasks",),
    ),
)


def create_app(
    engine: Engine,
    settings: Settings,
    *,
    draining: Callable[[], bool] | None = None,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    log: Logger | None = None,
) -> QuartTrio:
    """Build the REST API over ``engine``.

    Args:
        engine: the engine whose tasks and queues the API serves.
        settings: ``server`` settings (token, body limit, readiness timeout) are read here.
        draining: returns True once the server is shutting down (readiness then fails);
            default: the engine is no longer running.
        metrics: renders the Prometheus exposition (``serve`` passes its telemetry's); by
            default /metrics answers an empty exposition.
        log: where request failures are logged.
    """
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_body_bytes
    # Problem documents are our own JSON; Quart must not re-sort or pretty-print anything.
    app.config["JSON_SORT_KEYS"] = False
    logger = log or default_logger()
    app.extensions["iron_defer"] = h.ApiState(
        engine=engine,
        settings=settings,
        draining=draining or (lambda: engine.state.value != "running"),
        metrics=metrics or _no_metrics,
    )
    openapi = json.dumps(build_openapi(ROUTES, version=__version__))

    async def openapi_document() -> Response:
        return Response(openapi, status=200, content_type="application/json")

    public = {route.path for route in ROUTES if not route.authenticated}
    token = settings.server.api_token

    for route in ROUTES:
        handler = openapi_document if route.operation_id == "openapi" else route.handler
        app.add_url_rule(
            route.quart_rule,
            endpoint=route.operation_id,
            view_func=handler,
            methods=[route.method],
        )

    # The dashboard: browser pages outside ROUTES and the OpenAPI document, with its own
    # cookie login over the same token (a browser cannot send a bearer header).
    app.register_blueprint(create_dashboard(settings, logger))

    @app.before_request
    async def authenticate() -> Response | None:
        if token is None or request.path in public:
            return None
        if _is_dashboard(request.path):
            return None
        headers = request.headers.getlist("Authorization")
        # Several Authorization headers are ambiguous (proxies disagree on which one wins).
        header = headers[0] if len(headers) == 1 else ""
        scheme, _, given = header.partition(" ")
        expected = token.get_secret_value().encode()
        # Constant-time compare: the answer must not leak how much of the token matched.
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return None
        return problem_response(
            "UNAUTHORIZED",
            "a valid 'Authorization: Bearer <token>' header is required",
            headers={"WWW-Authenticate": 'Bearer realm="iron-defer-trio"'},
        )

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        return problem_response(exc.code, exc.detail, errors=exc.errors, headers=exc.headers)

    @app.errorhandler(IronDeferError)
    async def domain_error(exc: IronDeferError) -> Response:
        status, code = classify(exc)
        if status >= 500:
            log_request_failure(logger, code, exc)
        return problem_response(code, str(exc))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            return problem_response(
                "PAYLOAD_TOO_LARGE",
                f"the body exceeds {settings.server.max_body_bytes} bytes",
            )
        if isinstance(exc, MethodNotAllowed):
            allowed = ", ".join(sorted(exc.valid_methods or ()))
            return problem_response(
                "METHOD_NOT_ALLOWED",
                f"{request.method} is not allowed here (allowed: {allowed})",
                headers={"Allow": allowed},
            )
        if isinstance(exc, NotFound):
            if _is_dashboard(request.path):
                return await not_found_page()
            return problem_response("NOT_FOUND", f"no endpoint at {request.path}")
        if exc.code is not None and exc.code < 500:
            return problem_response("MALFORMED_JSON", exc.description or "bad request")
        return await unexpected(exc)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log_request_failure(
            logger,
            "INTERNAL_ERROR",
            exc,
            traceback="".join(traceback.format_exception(exc)).rstrip(),
        )
        return problem_response("INTERNAL_ERROR", "unexpected error")

    return app


def _is_dashboard(path: str) -> bool:
    return path == UI_PREFIX or path.startswith(f"{UI_PREFIX}/")


def _no_metrics() -> tuple[bytes, str]:
    # Embedded, the application's meter provider owns the metrics; this app has none to show.
    return b"", CONTENT_TYPE_PLAIN_0_0_4
