"""The deployment router without a database: one deployment whose versions are fixed URLs (``capstan k8s router``).

On Kubernetes each model version of a deployment is a Kubernetes ``Service`` in front of its pods
(`capstan.k8s.render_serving`), so the router needs no replica rows: `StaticDeploymentStore` is a read-only
`DeploymentStore` holding one `DeploymentRecord` (the spec's split and shadow share) and one always-ready replica
per version whose URL is that version's Service. The unchanged `DeploymentRouter` then draws the version by weight,
honours pins (``x-capstan-version``), retries, and mirrors the shadow's share, exactly as in ``capstan server``;
the Service balances between the version's pods.

`router_app` answers the router's own health routes and forwards every other request to the deployment, so the
client-facing Service keeps the paths of ``capstan serve`` (``/v2/models/NAME/infer``, ``/invocations``, ...)
whether it selects the router or a version's pods. There is no outcome store: A/B quality reports and feedback need
``capstan server``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from capstan.errors import CapstanError, InvalidParameterValue, InvalidState
from capstan.serving.ports import DeploymentRecord, LoadReport, ReplicaRecord, Role
from capstan.serving.router import DeploymentRouter
from capstan.serving.spec import DeploymentSpec

__all__ = ["StaticDeploymentStore", "router_app", "static_record"]

_READ_ONLY = "the routes of capstan k8s router are fixed by its command line"
_KEPT_REPORTS = 64


def static_record(spec: DeploymentSpec, project: str) -> DeploymentRecord:
    """The deployment record of ``spec``: each role serves the URI the spec names (an alias is resolved by the
    version's pods when they start, not here)."""
    versions: list[tuple[Role, str]] = [("primary", spec.model.uri)]
    if spec.canary is not None:
        versions.append(("canary", spec.canary.model.uri))
    if spec.shadow is not None:
        versions.append(("shadow", spec.shadow.model.uri))
    return DeploymentRecord(spec.name, project, spec, 1, tuple(versions), spec.replicas or 1, 0, 0)


class StaticDeploymentStore:
    """A read-only `DeploymentStore` of one deployment whose versions answer at fixed URLs."""

    def __init__(self, record: DeploymentRecord, urls: Mapping[Role, str]) -> None:
        missing = [role for role, _ in record.versions if not urls.get(role)]
        if missing:
            raise InvalidParameterValue(f"upstream: no URL for the {missing[0]} version")
        extra = sorted(set(urls) - {role for role, _ in record.versions})
        if extra:
            raise InvalidParameterValue(f"upstream: a URL for {extra[0]}, which the deployment does not have")
        self.record = record
        self._replicas = tuple(ReplicaRecord(role, record.name, record.project, role, uri, "ready", urls[role],
                                             None, 0, 0, 0) for role, uri in record.versions)
        self._reports: dict[str, LoadReport] = {}
        self._lock = threading.Lock()

    def _matches(self, project: str | None, name: str | None) -> bool:
        return project in (None, self.record.project) and name in (None, self.record.name)

    def put(self, record: DeploymentRecord, *, expected_revision: int | None = None) -> DeploymentRecord:
        """Refused: the routes are fixed."""
        raise InvalidState(_READ_ONLY)

    def get(self, project: str, name: str) -> DeploymentRecord | None:
        """The deployment, when ``project`` and ``name`` are its own."""
        return self.record if self._matches(project, name) else None

    def list(self, project: str | None = None) -> tuple[DeploymentRecord, ...]:
        """The one deployment (when of ``project``)."""
        return (self.record,) if self._matches(project, None) else ()

    def delete(self, project: str, name: str) -> bool:
        """Refused: the routes are fixed."""
        raise InvalidState(_READ_ONLY)

    def put_replica(self, replica: ReplicaRecord) -> None:
        """Refused: the routes are fixed."""
        raise InvalidState(_READ_ONLY)

    def delete_replica(self, replica_id: str) -> None:
        """Refused: the routes are fixed."""
        raise InvalidState(_READ_ONLY)

    def replicas(self, project: str | None = None, deployment: str | None = None) -> tuple[ReplicaRecord, ...]:
        """One ready replica per version, at its URL."""
        return self._replicas if self._matches(project, deployment) else ()

    def report_load(self, report: LoadReport) -> None:
        """Keep each router worker's latest report (the cluster's autoscaler, not these, scales the versions)."""
        with self._lock:
            self._reports[report.worker] = report
            while len(self._reports) > _KEPT_REPORTS:
                self._reports.pop(next(iter(self._reports)))

    def load(self, project: str, deployment: str, *, since_ms: int) -> tuple[LoadReport, ...]:
        """The kept reports written at or after ``since_ms``."""
        if not self._matches(project, deployment):
            return ()
        with self._lock:
            return tuple(r for r in self._reports.values() if r.time_ms >= since_ms)


def _json(document: object, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type="application/json")


def router_app(router: DeploymentRouter, project: str, name: str) -> Starlette:
    """An ASGI app answering ``GET /v2/health/live`` and ``/v2/health/ready`` itself and forwarding every other
    request to deployment ``name`` through ``router``; the router is closed (its shadow copies awaited) at
    shutdown."""

    limit = router.options.max_body_bytes

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        return _json({"ready": True})

    async def forward(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _json({"error": f"the request body ({declared} bytes) is over the limit of {limit} bytes"}, 413)
        try:
            return await router.handle(
                project, name, method=request.method, path=request.url.path, query=request.url.query,
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
                body=await request.body() if request.method == "POST" else b"")
        except CapstanError as exc:
            return _json({"error": exc.message, "error_code": exc.code}, exc.http_status)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await router.aclose()

    routes = [Route("/v2/health/live", live, methods=["GET"]), Route("/v2/health/ready", ready, methods=["GET"]),
              Route("/{path:path}", forward, methods=["GET", "POST"])]
    return Starlette(routes=routes, lifespan=lifespan)
