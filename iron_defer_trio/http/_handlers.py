"""Request handlers. Each parses and validates its input, calls the engine, and answers with
a wire model; errors are raised (ApiError, IronDeferError) and rendered in one place."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from uuid import UUID

import trio
from pydantic import Field, ValidationError
from quart import Response, current_app, request

from iron_defer_trio.domain import TaskStatus
from iron_defer_trio.domain.limits import QUEUE_NAME_PATTERN
from iron_defer_trio.errors import StoreError
from iron_defer_trio.http._errors import ApiError
from iron_defer_trio.http._schemas import (
    DEFAULT_PAGE,
    MAX_PAGE,
    AuditPage,
    BulkRetryOut,
    CreateTask,
    FieldProblem,
    Health,
    PeriodicList,
    PeriodicOut,
    QueueList,
    QueueOut,
    RetryTasks,
    SignalTask,
    TaskOut,
    TaskPage,
    WireModel,
)
from iron_defer_trio.observability import tracing

if TYPE_CHECKING:
    from collections.abc import Callable

    from iron_defer_trio.config import Settings
    from iron_defer_trio.engine import Engine


_Wire = TypeVar("_Wire", bound=WireModel)


@dataclass(frozen=True)
class ApiState:
    """What the handlers need, attached to the app."""

    engine: Engine
    settings: Settings
    #: True once the server began shutting down (readiness answers 503).
    draining: Callable[[], bool]
    #: Prometheus text exposition of the metrics, and its content type.
    metrics: Callable[[], tuple[bytes, str]]


def state() -> ApiState:
    """The state of the app handling the current request."""
    found: ApiState = current_app.extensions["iron_defer"]
    return found


def json_response(
    body: WireModel, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialise a wire model."""
    return Response(
        json.dumps(body.to_json()),
        status=status,
        content_type="application/json",
        headers=headers or {},
    )


def field_problems(exc: ValidationError, prefix: str = "") -> list[FieldProblem]:
    """pydantic errors as (dotted field, message) pairs."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"])
        dotted = ".".join(part for part in (prefix, path) if part) or "(body)"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(FieldProblem(field=dotted, message=message))
    return problems


async def _json_body() -> Any:
    content_type = request.mimetype
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            "UNSUPPORTED_MEDIA_TYPE", f"send the body as application/json, not {content_type}"
        )
    raw = await request.get_data(as_text=False)
    if isinstance(raw, str):  # the overloads allow it; as_text=False never returns one
        raw = raw.encode()
    try:
        return json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except UnicodeDecodeError:
        raise ApiError("MALFORMED_JSON", "the body is not valid UTF-8") from None
    except RecursionError:
        raise ApiError("MALFORMED_JSON", "the body is nested too deeply") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise ApiError("MALFORMED_JSON", f"the body is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    # 1e400 parses to infinity, which JSON cannot carry back out: it would be stored as null.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _task_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise ApiError("INVALID_TASK_ID", f"{raw[:64]!r} is not a task id (a UUID)") from None


#: A filter value: text without NUL (PostgreSQL text cannot hold one), bounded like the columns.
_Filter = Annotated[str, Field(max_length=255, pattern=r"^[^\x00]*$")]


class ListQuery(WireModel):
    """Query string of GET /tasks."""

    queue: _Filter | None = None
    status: TaskStatus | None = None
    kind: _Filter | None = None
    limit: int = Field(default=DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    cursor: UUID | None = None
    #: The first hexadecimal digits of the ids wanted (dashes allowed).
    id_prefix: str | None = Field(default=None, pattern=r"^[0-9a-fA-F-]{1,36}$")


# --- tasks --------------------------------------------------------------------------------


async def _body(model: type[_Wire]) -> _Wire:
    """The JSON body validated as ``model`` (VALIDATION_FAILED with field errors if not)."""
    body = await _json_body()
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(
            "VALIDATION_FAILED", "the request body is invalid", errors=field_problems(exc)
        ) from None


def _query(model: type[_Wire]) -> _Wire:
    """The query string validated as ``model`` (INVALID_QUERY if a parameter is repeated or
    invalid)."""
    repeated = [key for key in request.args if len(request.args.getlist(key)) > 1]
    if repeated:
        raise ApiError("INVALID_QUERY", f"parameter {repeated[0]!r} is given more than once")
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise ApiError(
            "INVALID_QUERY", "invalid query parameters", errors=field_problems(exc)
        ) from None


async def create_task() -> Response:
    """POST /tasks."""
    create = await _body(CreateTask)
    key = _idempotency_key(create)
    # The caller's W3C trace context (traceparent header): the task's attempts join its trace.
    token = tracing.attach(tracing.context_from_headers(dict(request.headers)))
    try:
        record = await state().engine.enqueue_payload(
            create.queue,
            create.kind,
            create.payload,
            priority=create.priority,
            scheduled_at=create.scheduled_at,
            max_attempts=create.max_attempts,
            idempotency_key=key,
            attempt_timeout=create.attempt_timeout,
            region=create.region,
        )
    except ValidationError as exc:
        raise ApiError(
            "VALIDATION_FAILED",
            f"the payload does not match task kind {create.kind!r}",
            errors=field_problems(exc, prefix="payload"),
        ) from None
    finally:
        tracing.detach(token)
    # 200 for a retried submission: the task its key already named, nothing new stored.
    return json_response(
        TaskOut.from_record(record),
        status=201 if record.created else 200,
        headers={"Location": f"/tasks/{record.id}"},
    )


def _idempotency_key(create: CreateTask) -> str | None:
    """The Idempotency-Key header or the body's idempotencyKey (equal when both are given)."""
    values = request.headers.getlist("Idempotency-Key")
    if len(values) > 1:
        raise ApiError("VALIDATION_FAILED", "the Idempotency-Key header is given more than once")
    header = values[0] if values else None
    if header is not None and create.idempotency_key not in (None, header):
        raise ApiError(
            "VALIDATION_FAILED",
            "the Idempotency-Key header and the body's idempotencyKey differ",
            errors=[FieldProblem(field="idempotencyKey", message="differs from the header")],
        )
    return header if header is not None else create.idempotency_key


async def list_tasks() -> Response:
    """GET /tasks."""
    query = _query(ListQuery)
    # One extra row tells whether another page exists, without a count.
    records = await state().engine.list(
        queue=query.queue,
        status=query.status,
        kind=query.kind,
        limit=query.limit + 1,
        before=query.cursor,
        id_prefix=query.id_prefix,
    )
    return json_response(TaskPage.from_records(records, query.limit))


async def get_task(id: str) -> Response:
    """GET /tasks/{id}."""
    record = await state().engine.get(_task_id(id))
    return json_response(TaskOut.from_record(record))


class AuditQuery(WireModel):
    """Query string of GET /tasks/{id}/audit."""

    limit: int = Field(default=DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    cursor: int | None = Field(default=None, ge=0, le=2**63 - 1)  # a bigint


async def task_audit(id: str) -> Response:
    """GET /tasks/{id}/audit."""
    query = _query(AuditQuery)
    entries = await state().engine.audit_log(
        _task_id(id), after=query.cursor, limit=query.limit + 1
    )
    return json_response(AuditPage.from_entries(entries, query.limit))


async def signal_task(id: str) -> Response:
    """POST /tasks/{id}/signal."""
    task_id = _task_id(id)
    signal = await _body(SignalTask)
    record = await state().engine.signal(task_id, signal.payload)
    return json_response(TaskOut.from_record(record))


async def cancel_task(id: str) -> Response:
    """DELETE /tasks/{id}: 200 when cancelled, 202 when a running task was asked to stop."""
    record = await state().engine.cancel(_task_id(id))
    accepted = record.status is TaskStatus.RUNNING
    return json_response(TaskOut.from_record(record), status=202 if accepted else 200)


# --- queues and operations ------------------------------------------------------------------


class QueuesQuery(WireModel):
    """Query string of GET /queues."""

    by_region: bool = False


async def list_queues() -> Response:
    """GET /queues."""
    query = _query(QueuesQuery)
    stats = await state().engine.queue_stats(by_region=query.by_region)
    return json_response(QueueList(queues=[QueueOut.from_statistics(s) for s in stats]))


def _queue_name(raw: str) -> str:
    if not QUEUE_NAME_PATTERN.fullmatch(raw):
        raise ApiError(
            "INVALID_QUEUE_NAME",
            f"{raw[:64]!r} is not a queue name (1-128 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit)",
        )
    return raw


async def pause_queue(name: str) -> Response:
    """POST /queues/{name}/pause."""
    stats = await state().engine.pause_queue(_queue_name(name))
    return json_response(QueueOut.from_statistics(stats))


async def resume_queue(name: str) -> Response:
    """POST /queues/{name}/resume."""
    stats = await state().engine.resume_queue(_queue_name(name))
    return json_response(QueueOut.from_statistics(stats))


async def health() -> Response:
    """GET /health: the process is up and serving."""
    return json_response(Health(status="ok"))


async def ready() -> Response:
    """GET /health/ready: not draining, and the database answers in time."""
    current = state()
    if current.draining():
        return json_response(Health(status="unavailable", reason="draining"), status=503)
    try:
        with trio.fail_after(current.settings.server.ready_timeout):
            await current.engine.ping()
    except trio.TooSlowError:
        return json_response(
            Health(status="unavailable", reason="the database did not answer in time"),
            status=503,
        )
    except StoreError:
        return json_response(
            Health(status="unavailable", reason="the database is unavailable"), status=503
        )
    return json_response(Health(status="ok"))


async def metrics() -> Response:
    """GET /metrics: Prometheus text exposition."""
    body, content_type = state().metrics()
    return Response(body, status=200, content_type=content_type)


async def list_periodic() -> Response:
    """GET /periodic: every registered periodic schedule with its last and next fire time."""
    schedules = await state().engine.periodic_schedules()
    return json_response(PeriodicList(schedules=[PeriodicOut.from_schedule(s) for s in schedules]))


# --- retrying -------------------------------------------------------------------------------


async def retry_task(id: str) -> Response:
    """POST /tasks/{id}/retry: a failed or cancelled task, pending again."""
    record = await state().engine.retry(_task_id(id))
    return json_response(TaskOut.from_record(record))


async def retry_tasks() -> Response:
    """POST /tasks/retry: count (without expect) or retry (with the confirmed count)."""
    body = await _body(RetryTasks)
    result = await state().engine.retry_many(
        queue=body.queue, status=body.status, kind=body.kind, expect=body.expect
    )
    return json_response(BulkRetryOut.from_result(result))
