"""Turning exceptions into MLflow-style JSON errors: ``{"error_code": ..., "message": ...}``.

- `CapstanError` -> its ``http_status`` and ``code``;
- FastAPI's request validation errors -> 400 ``INVALID_PARAMETER_VALUE`` naming the field;
- Starlette's HTTP errors (unknown route, wrong method) -> their status with an MLflow error code;
- anything else -> 500 ``INTERNAL_ERROR``, logged once with its traceback.

`document_error_responses` makes the OpenAPI document say the same: FastAPI's generated ``422`` entries become
the ``400`` this module answers, and every operation lists the error statuses it can return with the shared
``Error`` body schema.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse

from capstan.errors import CapstanError
from capstan.server.asgi import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("capstan.server")


_CODE_BY_STATUS = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                   404: "ENDPOINT_NOT_FOUND", 405: "BAD_REQUEST", 413: "INVALID_PARAMETER_VALUE",
                   415: "BAD_REQUEST", 429: "REQUEST_LIMIT_EXCEEDED", 503: "TEMPORARILY_UNAVAILABLE"}
INTERNAL_MESSAGE = "internal server error; the server log has the details"


def error_body(code: str, message: str) -> dict[str, str]:
    """The JSON error body."""
    return {"error_code": code, "message": message}


def capstan_error_response(exc: CapstanError) -> JSONResponse:
    """The response for a typed error."""
    return JSONResponse(exc.to_dict(), status_code=exc.http_status)


def validation_message(errors: Sequence[Any]) -> str:
    """One line naming each invalid field: ``"experiment_id: Field required; max_results: ..."``."""
    parts: list[str] = []
    for err in list(errors)[:3]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header", "cookie")]
        field = ".".join(loc) or "request body"
        parts.append(f"{field}: {err.get('msg', 'invalid value')}")
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more")
    return "; ".join(parts) or "invalid request"


async def _on_capstan_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CapstanError)
    return capstan_error_response(exc)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    from fastapi.exceptions import RequestValidationError

    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body("INVALID_PARAMETER_VALUE", validation_message(exc.errors())), status_code=400)


def _route_table(routes: Sequence[Any], prefix: str = "") -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path regex, methods) of every route, descending into included routers (as `RouteTemplates` does)."""
    from starlette.routing import compile_path

    table: list[tuple[re.Pattern[str], frozenset[str]]] = []
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(getattr(route, "path_format", None), str) and isinstance(path, str):
            # ``path`` keeps the convertors (``{path:path}`` matches several segments); ``path_format`` drops them.
            table.append((compile_path(prefix + path)[0], frozenset(getattr(route, "methods", None) or ())))
            continue
        nested = getattr(route, "original_router", None) or getattr(route, "app", None)
        nested_routes = getattr(nested, "routes", None)
        if nested_routes is not None:
            nested_prefix = getattr(getattr(route, "include_context", None), "prefix", None)
            table += _route_table(nested_routes, prefix + str(nested_prefix if nested_prefix is not None
                                                               else getattr(route, "path", "")))
    return table


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path. FastAPI adds one route per method and path, and
    Starlette's own 405 names only the first matching route's methods in ``Allow``."""
    state = request.app.state
    table = getattr(state, "capstan_route_table", None)
    if table is None:
        table = _route_table(request.app.router.routes)
        state.capstan_route_table = table
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for regex, route_methods in table:
        if regex.match(path):
            methods.update(route_methods)
    return sorted(methods)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    code = _CODE_BY_STATUS.get(exc.status_code, "INTERNAL_ERROR" if exc.status_code >= 500 else "BAD_REQUEST")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        methods = allowed_methods(request)
        if methods:
            headers["Allow"] = ", ".join(methods)
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("INTERNAL_ERROR", INTERNAL_MESSAGE), status_code=500)


ERROR_SCHEMA: Final[dict[str, Any]] = {
    "title": "Error",
    "type": "object",
    "description": "Every error answer: an MLflow-style error code and a message naming the field or object.",
    "properties": {"error_code": {"type": "string", "examples": ["INVALID_PARAMETER_VALUE"]},
                   "message": {"type": "string"}},
    "required": ["error_code", "message"],
}
ERROR_DESCRIPTIONS: Final[dict[int, str]] = {
    400: "Invalid input (a malformed or out-of-range field, named in the message), a name already taken, or an "
         "object in the wrong state",
    401: "No credential, or an unknown, revoked or expired one",
    403: "The caller's role does not allow this action in the object's project",
    404: "The object (or the route) does not exist",
    413: "The body is larger than the configured limit",
    503: "The metadata store, or a service this route needs, is not available",
}
NAMES_AN_OBJECT: Final[dict[int | str, dict[str, Any]]] = {
    404: {"description": "An object the request names (in its body or query) does not exist"}}
"""``responses=`` of a route whose body or query names existing objects (its 404 is not implied by a path)."""
_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


def _error_statuses(path: str, operation: Mapping[str, Any]) -> list[int]:
    """The error statuses an operation can answer, besides those its route declares itself.

    Every request is authenticated (401) and most are authorised against a project (403; ``/whoami`` only needs
    a credential); any input may be invalid (400); a path naming an object may name a missing one (404); a raw
    upload may exceed the size limit (413); any route may find the metadata store down (503).
    """
    statuses = [400, 401]
    if not path.endswith("/whoami"):
        statuses.append(403)
    if "{" in path:
        statuses.append(404)
    body = operation.get("requestBody", {}).get("content", {})
    if "application/octet-stream" in body:
        statuses.append(413)
    statuses.append(503)
    return statuses


def document_errors(schema: dict[str, Any], *, prefix: str = "/") -> dict[str, Any]:
    """Rewrite an OpenAPI document (in place, and return it) so its error responses are the real ones.

    For each operation under ``prefix``: FastAPI's ``422`` goes (validation errors answer ``400``), the
    statuses of `_error_statuses` are added, and every 4xx/5xx response carries the ``Error`` schema. Integral
    numeric bounds are written as integers.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path, item in schema.get("paths", {}).items():
        if not path.startswith(prefix):
            continue
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code in _error_statuses(path, operation):
                responses.setdefault(str(code), {})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response.setdefault("description", ERROR_DESCRIPTIONS.get(int(status), "An error"))
                    response["content"] = {"application/json": {"schema": ref}}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    _integral_bounds(schema)
    return schema


_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})


def _integral_bounds(node: Any) -> None:
    """FastAPI's document models hold numeric bounds as floats; write integral ones as integers again, so a
    64-bit bound (``exclusiveMaximum: 2**63``) reads exactly."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in _BOUNDS and isinstance(value, float) and value.is_integer():
                    item[key] = int(value)
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def document_error_responses(app: FastAPI, *, prefix: str = "/") -> None:
    """Make ``app.openapi()`` describe the error answers of `install_error_handlers` (see `document_errors`)."""
    generate = app.openapi
    done: list[int] = []

    def openapi() -> dict[str, Any]:
        schema = generate()  # cached by FastAPI until the routes change
        if not done or done[0] != id(schema):
            document_errors(schema, prefix=prefix)
            done[:] = [id(schema)]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the document


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app`` and document their answers in its OpenAPI document."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app.add_exception_handler(CapstanError, _on_capstan_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    # Errors escaping the middlewares themselves; errors in handlers are caught by CatchAllMiddleware first.
    app.add_exception_handler(Exception, _on_unexpected)
    document_error_responses(app)


class CatchAllMiddleware:
    """Innermost middleware: an unexpected exception becomes a logged 500 JSON answer.

    Handling it here (rather than in Starlette's outermost error middleware, which re-raises to the server) lets
    the metrics and audit middlewares see the 500 and keeps one log record per failure.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # the last line of defence: log it, answer 500 JSON
            if isinstance(exc, CapstanError):
                response = capstan_error_response(exc)
            else:
                log.error("unexpected error in %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
                response = JSONResponse(error_body("INTERNAL_ERROR", INTERNAL_MESSAGE), status_code=500)
            if not started:
                await response(scope, receive, send)
