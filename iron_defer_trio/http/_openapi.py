"""OpenAPI 3.1 document, generated from the route table and the wire models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic.json_schema import models_json_schema

from iron_defer_trio.domain.limits import QUEUE_NAME_PATTERN
from iron_defer_trio.http._errors import CODES, PROBLEM_JSON
from iron_defer_trio.http._schemas import Problem

if TYPE_CHECKING:
    from collections.abc import Sequence

    from iron_defer_trio.http._routes import Route
    from iron_defer_trio.http._schemas import WireModel

_REF = "#/components/schemas/{model}"


def build_openapi(routes: Sequence[Route], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes``."""
    models: set[type[WireModel]] = {Problem}
    for route in routes:
        if route.request_body is not None:
            models.add(route.request_body)
        models.update(model for _, model in route.responses.values() if model is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, schemas = models_json_schema(
        [(model, "serialization") for model in ordered], ref_template=_REF, by_alias=True
    )
    components: dict[str, Any] = dict(schemas.get("$defs", {}))

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "iron-defer-trio",
            "version": version,
            "description": "REST API of a durable task queue backed by PostgreSQL.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Required on every endpoint but the health probes when "
                    "the server has server.api_token set.",
                }
            },
        },
    }


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "responses": {},
    }
    if route.tags:
        operation["tags"] = list(route.tags)
    parameters = [
        {
            "name": param.name,
            "in": "query",
            "required": False,
            "description": param.description,
            "schema": param.schema,
        }
        for param in route.query
    ] + [
        {
            "name": param.name,
            "in": "header",
            "required": False,
            "description": param.description,
            "schema": param.schema,
        }
        for param in route.headers
    ]
    if "{id}" in route.path:
        parameters.insert(
            0,
            {
                "name": "id",
                "in": "path",
                "required": True,
                "description": "Task id (UUID).",
                "schema": {"type": "string", "format": "uuid"},
            },
        )
    if "{name}" in route.path:
        parameters.insert(
            0,
            {
                "name": "name",
                "in": "path",
                "required": True,
                "description": "Queue name.",
                "schema": {"type": "string", "pattern": QUEUE_NAME_PATTERN.pattern},
            },
        )
    if parameters:
        operation["parameters"] = parameters
    if route.request_body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF.format(model=route.request_body.__name__)}
                }
            },
        }
    for status, (description, model) in route.responses.items():
        response: dict[str, Any] = {"description": description}
        if model is not None:
            response["content"] = {
                route.media_type: {"schema": {"$ref": _REF.format(model=model.__name__)}}
            }
        elif route.media_type != "application/json":
            response["content"] = {route.media_type: {"schema": {"type": "string"}}}
        operation["responses"][str(status)] = response
    codes = list(route.errors) + (["UNAUTHORIZED"] if route.authenticated else [])
    codes.append("INTERNAL_ERROR")
    for status in sorted({CODES[code] for code in codes}):
        listed = sorted(code for code in codes if CODES[code] == status)
        operation["responses"][str(status)] = {
            "description": "Error: " + ", ".join(listed),
            "content": {PROBLEM_JSON: {"schema": {"$ref": _REF.format(model="Problem")}}},
        }
    if route.authenticated:
        # Optional: only enforced when the server has a token configured.
        operation["security"] = [{"bearerAuth": []}, {}]
    return operation
