"""Prometheus metrics of one app: requests by route template, and metadata-store statement latency.

Each app owns a `CollectorRegistry` (no global state), so several apps in one process, as in tests, never mix
their counts. With ``--workers N`` every worker process counts the requests it served; a scrape sees one worker.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from capstan.server.asgi import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from capstan.serving.metrics import ServingMetrics


UNMATCHED = "<unmatched>"
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_OPERATIONS = frozenset({"select", "insert", "update", "delete", "begin"})
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatusRecorder:
    """An ASGI ``send`` that passes every message on and keeps the HTTP status of the response it started.

    ``status`` is ``default`` (500: what a request counts as when the app fails before responding) until the
    ``http.response.start`` message goes through. The one status capture of the server's middlewares (metrics
    and audit).
    """

    __slots__ = ("_send", "status")

    def __init__(self, send: Send, default: int = 500) -> None:
        self._send = send
        self.status = default

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self._send(message)


class RouteTemplates:
    """Maps the route a request matched to its full path template (``/api/v1/runs/{run_id}``).

    Routes included with a prefix keep a path relative to their router, so the full template is computed here,
    once, from the routers the app includes. A route included under several prefixes is told apart by its path.
    """

    def __init__(self) -> None:
        self._by_route: dict[int, list[tuple[re.Pattern[str], str]]] = {}

    def add_router(self, routes: Iterable[Any], prefix: str = "") -> None:
        """Record the templates of ``routes`` (a router's ``.routes``) included under ``prefix``."""
        from starlette.routing import compile_path

        for route in routes:
            path_format = getattr(route, "path_format", None)
            if isinstance(path_format, str):
                full = prefix + path_format
                self._by_route.setdefault(id(route), []).append((compile_path(full)[0], full))
                continue
            # A router nested inside an included router: descend with its prefix when FastAPI exposes it.
            nested = getattr(route, "original_router", None) or getattr(route, "app", None)
            nested_routes = getattr(nested, "routes", None)
            if nested_routes is not None:
                nested_prefix = getattr(getattr(route, "include_context", None), "prefix", None)
                if nested_prefix is None:
                    nested_prefix = getattr(route, "path", "")
                self.add_router(nested_routes, prefix + str(nested_prefix))

    def label(self, scope: Scope) -> str:
        """The template of the route ``scope`` matched, or ``<unmatched>``."""
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        entries = self._by_route.get(id(route))
        if not entries:
            return str(getattr(route, "path", UNMATCHED))
        if len(entries) == 1:
            return entries[0][1]
        path = scope.get("path", "")
        for regex, template in entries:
            if regex.match(path):
                return template
        return entries[0][1]


class ServerMetrics:
    """The app's registry and its three families of metrics."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter("capstan_http_requests", "HTTP requests served, by route template.", labels,
                                registry=self.registry)
        self.latency = Histogram("capstan_http_request_duration_seconds",
                                 "Time to serve an HTTP request, by route template.", labels,
                                 buckets=HTTP_BUCKETS, registry=self.registry)
        self.store_latency = Histogram("capstan_store_operation_duration_seconds",
                                       "Time the metadata store took to execute a statement, by operation.",
                                       ("operation",), buckets=STORE_BUCKETS, registry=self.registry)
        self._deployments: ServingMetrics | None = None

    def deployment_metrics(self) -> ServingMetrics:
        """The deployment controller's metrics (replicas by state, desired replicas, cold starts), shown by this
        app's ``/metrics``; created and registered on first use (the controller runs in the leader process only).

        The names belong to `capstan.serving.metrics.ServingMetrics`; only the controller's families are exposed
        here (the serving families stay on each replica's own ``/metrics``)."""
        if self._deployments is None:
            from capstan.serving.metrics import ServingMetrics

            metrics = ServingMetrics()
            self.registry.register(_Families((metrics.replicas, metrics.desired_replicas, metrics.cold_starts,
                                              metrics.cold_start_seconds)))
            self._deployments = metrics
        return self._deployments

    def render(self) -> bytes:
        """The Prometheus text exposition of this app's metrics."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))

    def instrument_engine(self, engine: Engine) -> Callable[[], None]:
        """Time every statement ``engine`` executes; returns a function that removes the instrumentation."""
        from sqlalchemy import event

        histogram = self.store_latency
        stack_key = "capstan.metrics.t0"

        def before(conn: Any, _cursor: Any, _statement: str, _params: Any, _context: Any, _many: bool) -> None:
            conn.info.setdefault(stack_key, []).append(time.perf_counter())

        def after(conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
            stack = conn.info.get(stack_key)
            if not stack:
                return
            elapsed = time.perf_counter() - stack.pop()
            histogram.labels(_operation(statement)).observe(elapsed)

        def error(context: Any) -> None:
            stack = context.connection.info.get(stack_key) if context.connection is not None else None
            if stack:
                stack.pop()

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        event.listen(engine, "handle_error", error)

        def remove() -> None:
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)
            event.remove(engine, "handle_error", error)

        return remove


class _Families:
    """A collector showing some metric families of another registry in this one."""

    def __init__(self, families: Iterable[Any]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterable[Any]:
        """The families' current samples."""
        for family in self._families:
            yield from family.collect()

    def describe(self) -> Iterable[Any]:
        """The families, for the registry's duplicate-name check."""
        for family in self._families:
            yield from family.describe()


def _operation(statement: str) -> str:
    head = statement.lstrip()[:16].split(None, 1)
    word = head[0].lower() if head else ""
    return word if word in _OPERATIONS else "other"


class MetricsMiddleware:
    """ASGI middleware counting and timing every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, *, metrics: ServerMetrics, templates: RouteTemplates) -> None:
        self.app = app
        self._metrics = metrics
        self._templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        recorder = StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        finally:
            labels = (scope["method"], self._templates.label(scope), str(recorder.status))
            self._metrics.requests.labels(*labels).inc()
            self._metrics.latency.labels(*labels).observe(time.perf_counter() - start)
