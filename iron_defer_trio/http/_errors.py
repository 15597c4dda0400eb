"""One table from errors to HTTP statuses and stable codes, and the problem+json responses.

5xx bodies never carry internals (SQL, stack traces, DSNs): the detail is generic and the
real error goes to the log.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from quart import Response, request

from iron_defer_trio.errors import (
    ConfigError,
    CountChanged,
    EngineClosed,
    EngineCrashed,
    IdempotencyConflict,
    InvalidTaskError,
    InvalidTransition,
    IronDeferError,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
    UnknownTaskKind,
)
from iron_defer_trio.http._schemas import FieldProblem, Problem

if TYPE_CHECKING:
    from collections.abc import Sequence

    from iron_defer_trio.observability import Logger

PROBLEM_JSON = "application/problem+json"

#: Error class -> (HTTP status, code). Looked up along the class's MRO, so a subclass without
#: its own entry gets its parent's.
ERROR_TABLE: dict[type[IronDeferError], tuple[int, str]] = {
    TaskNotFound: (404, "TASK_NOT_FOUND"),
    InvalidTransition: (409, "INVALID_TRANSITION"),
    IdempotencyConflict: (409, "IDEMPOTENCY_KEY_REUSED"),
    CountChanged: (409, "COUNT_CHANGED"),
    UnknownTaskKind: (422, "UNKNOWN_KIND"),
    InvalidTaskError: (422, "INVALID_TASK"),
    StoreUnavailable: (503, "DATABASE_UNAVAILABLE"),
    StoreError: (500, "DATABASE_ERROR"),
    EngineClosed: (503, "SHUTTING_DOWN"),
    EngineCrashed: (500, "INTERNAL_ERROR"),
    ConfigError: (500, "INTERNAL_ERROR"),
    IronDeferError: (500, "INTERNAL_ERROR"),
}

#: Every code the API can answer with, and its status (documented in docs/reference).
CODES: dict[str, int] = {
    "MALFORMED_JSON": 400,
    "INVALID_QUERY": 400,
    "INVALID_TASK_ID": 400,
    "INVALID_QUEUE_NAME": 400,
    "UNAUTHORIZED": 401,
    "NOT_FOUND": 404,
    "TASK_NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "INVALID_TRANSITION": 409,
    "IDEMPOTENCY_KEY_REUSED": 409,
    "COUNT_CHANGED": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "VALIDATION_FAILED": 422,
    "UNKNOWN_KIND": 422,
    "INVALID_TASK": 422,
    "INTERNAL_ERROR": 500,
    "DATABASE_ERROR": 500,
    "DATABASE_UNAVAILABLE": 503,
    "SHUTTING_DOWN": 503,
}

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

#: What a client is told for each 5xx code, whatever the underlying message was.
_GENERIC_DETAIL = {
    "INTERNAL_ERROR": "an unexpected error occurred; it has been logged",
    "DATABASE_ERROR": "the database refused the operation; it has been logged",
    "DATABASE_UNAVAILABLE": "the database is unavailable; retry later",
    "SHUTTING_DOWN": "the server is shutting down; retry on another instance",
}


class ApiError(Exception):
    """Raised by handlers to answer with a problem document."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        errors: Sequence[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.status = CODES[code]
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = headers or {}


def classify(exc: IronDeferError) -> tuple[int, str]:
    """The (status, code) of one of our errors."""
    for klass in type(exc).__mro__:
        if klass in ERROR_TABLE:
            return ERROR_TABLE[klass]
    return 500, "INTERNAL_ERROR"


def problem_response(
    code: str,
    detail: str,
    *,
    errors: Sequence[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem+json response for ``code`` (5xx details are replaced by a generic one)."""
    status = CODES[code]
    if status >= 500:
        detail = _GENERIC_DETAIL.get(code, _GENERIC_DETAIL["INTERNAL_ERROR"])
    body = Problem(
        title=_TITLES.get(status, "Error"),
        status=status,
        code=code,
        detail=detail,
        errors=list(errors) if errors else None,
    )
    return Response(
        json.dumps(body.to_json()),
        status=status,
        content_type=PROBLEM_JSON,
        headers=headers or {},
    )


def log_request_failure(log: Logger, code: str, exc: BaseException, **extra: str) -> None:
    """The server's side of a 5xx answer (the client gets no details): the request and the
    error, as ``request_failed``."""
    log.error(
        "request_failed",
        path=request.path,
        method=request.method,
        code=code,
        error=f"{type(exc).__name__}: {exc}",
        **extra,
    )
