"""Turning exceptions into MLflow-style JSON errors: ``{"error_code": ..., "message": ...}``.

- `CapstanError` -> its ``http_status`` and ``code``;
- FastAPI's request validation errors -> 400 ``INVALID_PARAMETER_VALUE`` naming the field;
- Starlette's HTTP errors (unknown route, wrong method) -> their status with an MLflow error code;
- anything else -> 500 ``INTERNAL_ERROR``, logged once with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from capstan.errors import CapstanError

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("capstan.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

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


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    code = _CODE_BY_STATUS.get(exc.status_code, "INTERNAL_ERROR" if exc.status_code >= 500 else "BAD_REQUEST")
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                        headers=dict(exc.headers or {}))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("INTERNAL_ERROR", INTERNAL_MESSAGE), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app.add_exception_handler(CapstanError, _on_capstan_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    # Errors escaping the middlewares themselves; errors in handlers are caught by CatchAllMiddleware first.
    app.add_exception_handler(Exception, _on_unexpected)


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
