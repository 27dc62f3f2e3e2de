"""Routing of the MLflow API: one catch-all FastAPI route per prefix, then a dispatch table.

MLflow's API has ~60 endpoints, served under two prefixes each. Registered one by one they would be matched
linearly on every request (and FastAPI's included routers make each check costly), which shows on the
metric-logging hot path. Instead each prefix gets a single route, and `Dispatcher` finds the endpoint with a dict
lookup (exact paths) or a short list of templates (``/logged-models/{model_id}``). The resolved `Target` is stored
as the request's ``route``, so ``/metrics`` still labels requests by endpoint template.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from capstan.server.mlflow_common import (
    Call,
    EndpointNotFound,
    Fields,
    json_response,
    parse_body,
    query_fields,
)

Handler = Callable[[Call], "Mapping[str, Any] | Response"]
RawHandler = Callable[[Request, Mapping[str, str]], Awaitable[Response]]
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_PARAM = re.compile(r"\{(\w+)(:path)?\}")


@dataclass(frozen=True, slots=True)
class Route:
    """One MLflow endpoint: method and path below the prefix (``{name}`` matches one segment,
    ``{name:path}`` the rest), served by a JSON ``handler`` (synchronous, run in the threadpool) or by a
    ``raw`` coroutine that builds its own response (streamed artifacts)."""

    method: str
    path: str
    handler: Handler | None = None
    raw: RawHandler | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A route under one prefix; ``path`` is its full template (the ``/metrics`` route label)."""

    path: str
    route: Route


def _template_regex(path: str) -> re.Pattern[str]:
    pattern, last = [], 0
    for match in _PARAM.finditer(path):
        pattern.append(re.escape(path[last:match.start()]))
        pattern.append(f"(?P<{match.group(1)}>.+)" if match.group(2) else f"(?P<{match.group(1)}>[^/]+)")
        last = match.end()
    pattern.append(re.escape(path[last:]))
    return re.compile("".join(pattern))


class Dispatcher:
    """Finds the endpoint for a path below ``prefix`` and runs it."""

    def __init__(self, prefix: str, routes: Iterable[Route]) -> None:
        self.prefix = prefix
        self.routes: tuple[Route, ...] = tuple(routes)  # what it serves (the auth-matrix test enumerates these)
        self._exact: dict[str, dict[str, Target]] = {}
        templated: dict[str, dict[str, Target]] = {}
        for route in self.routes:
            if (route.handler is None) == (route.raw is None):
                raise ValueError(f"route {route.method} {route.path}: give exactly one of handler and raw")
            table = templated if "{" in route.path else self._exact
            by_method = table.setdefault(route.path, {})
            if route.method in by_method:
                raise ValueError(f"duplicate route {route.method} {prefix}{route.path}")
            by_method[route.method] = Target(prefix + route.path, route)
        self._templated = [(_template_regex(path), by_method) for path, by_method in templated.items()]

    def resolve(self, method: str, path: str) -> tuple[Target, dict[str, str]]:
        """The target serving ``method path`` (``path`` below the prefix) and its path parameters."""
        params: dict[str, str] = {}
        by_method = self._exact.get(path)
        if by_method is None:
            for regex, candidates in self._templated:
                match = regex.fullmatch(path)
                if match is not None:
                    by_method, params = candidates, match.groupdict()
                    break
        if by_method is None:
            raise EndpointNotFound(f"{method} {self.prefix}{path} is not an endpoint of this server")
        target = by_method.get(method)
        if target is None:
            raise EndpointNotFound(f"{method} {self.prefix}{path} is not an endpoint of this server "
                                   f"(it answers {', '.join(sorted(by_method))})")
        return target, params

    async def handle(self, request: Request) -> Response:
        """The FastAPI endpoint of ``{prefix}/{rest:path}``."""
        target, params = self.resolve(request.method, "/" + request.path_params.get("rest", ""))
        request.scope["route"] = target
        route = target.route
        if route.raw is not None:
            return await route.raw(request, params)
        if request.method == "GET":
            fields = Fields(query_fields(request), query=True)
        else:
            body = await request.body()
            fields = Fields(parse_body(body)) if body else Fields(query_fields(request), query=True)
        assert route.handler is not None
        result = await run_in_threadpool(route.handler, Call(request, fields, params))
        return result if isinstance(result, Response) else json_response(result)


def build_router(dispatchers: Iterable[Dispatcher]) -> APIRouter:
    """An APIRouter with one catch-all route per dispatcher."""
    router = APIRouter()
    for dispatcher in dispatchers:
        router.add_api_route(f"{dispatcher.prefix}/{{rest:path}}", dispatcher.handle, methods=list(METHODS),
                             include_in_schema=False, name=f"mlflow:{dispatcher.prefix}")
    return router
