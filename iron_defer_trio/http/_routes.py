"""The route table: one entry per endpoint, used both to register the handlers and to
generate the OpenAPI document, so the two cannot drift."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from quart import Response

    from iron_defer_trio.http._schemas import WireModel


@dataclass(frozen=True)
class QueryParam:
    """One query-string parameter or request header, for the OpenAPI document."""

    name: str
    description: str
    schema: dict[str, object]


@dataclass(frozen=True)
class Route:
    """One endpoint."""

    method: str
    #: OpenAPI-style path, e.g. ``/tasks/{id}``.
    path: str
    operation_id: str
    summary: str
    handler: Callable[..., Awaitable[Response]]
    #: Success status -> (description, body model or None for a non-JSON/empty body).
    responses: dict[int, tuple[str, type[WireModel] | None]]
    #: Error codes this endpoint can answer with (besides 401/500 common to all).
    errors: tuple[str, ...] = ()
    request_body: type[WireModel] | None = None
    query: tuple[QueryParam, ...] = ()
    #: Request headers the endpoint reads (documented like query parameters).
    headers: tuple[QueryParam, ...] = ()
    #: False for the health probes: they never require the API token.
    authenticated: bool = True
    #: Media type of the success body when it is not JSON.
    media_type: str = "application/json"
    tags: tuple[str, ...] = field(default=())

    @property
    def quart_rule(self) -> str:
        """The path in Quart's syntax (``/tasks/<id>``)."""
        return self.path.replace("{", "<").replace("}", ">")
