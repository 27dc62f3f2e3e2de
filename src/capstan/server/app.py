"""The server's FastAPI application: routers, JSON errors, auth, audit, metrics and health.

``create_app(settings)`` builds the app for one process; ``app_from_env`` is the import-string factory uvicorn's
worker processes use (``capstan.server.app:app_from_env``). Nothing heavy is imported at module level: the server
path never loads numpy, scikit-learn or mlflow.

Request path (outermost first): metrics -> browser guard (Host, Origin, CORS, JSON content type) ->
authentication and audit -> catch-all 500 -> FastAPI's error handlers
-> the route. Routes: ``/`` (a page that opens the web UI, `capstan.server.home`), the web UI under ``/ui``
(`capstan.ui`), ``/health``, ``/metrics``, the
managed deployments' inference routes under ``/deployments/NAME/...`` (`capstan.server.deployments_serving`), the
native API under ``/api/v1`` (OpenAPI document at ``/api/v1/openapi.json``, interactive docs at ``/api/v1/docs``
with their Swagger UI files served locally) and the MLflow-compatible API.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Request
from starlette.responses import Response

from capstan.settings import Settings

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

    from capstan.server.leader_duties import LeaderDuties
    from capstan.server.metrics import ServerMetrics
    from capstan.services import Services
    from capstan.serving.controller import DeploymentController
    from capstan.serving.grpc_server import GrpcOptions
    from capstan.serving.router import DeploymentRouter
    from capstan.training.controller import JobController

log = logging.getLogger("capstan.server")

API_V1_PREFIX = "/api/v1"
BIND_HOST_VARIABLE = "CAPSTAN_SERVER_HOST"
"""Read (as `Settings.server_host`) by `app_from_env`: the address the server is bound to, which decides whether
single-user mode is possible. When it is unset the app assumes a network-reachable address (auth required)."""


def create_app(settings: Settings, *, services: Services | None = None, bind_host: str = "127.0.0.1",
               grpc: GrpcOptions | None = None) -> FastAPI:
    """Build the server application.

    Args:
        settings: where the stores are.
        services: already-open stores; opened from ``settings`` (and closed at shutdown) when omitted.
        bind_host: the address the server listens on. A loopback address with no users configured allows
            single-user mode; anything else requires credentials. In-process use (tests) defaults to loopback.
        grpc: also serve every managed deployment over OIP v2 gRPC there (`capstan.server.deployments_serving`).
    """
    from fastapi import FastAPI

    from capstan.auth.audit import AuditWriter
    from capstan.auth.policy import is_loopback_host
    from capstan.server import (
        admin_api,
        api_v1,
        api_v1_series,
        deployments_api,
        deployments_serving,
        home,
        jobs_api,
        mlflow_api,
        pipelines_api,
        queue_api,
        studies_api,
        timeline_api,
    )
    from capstan.server.errors import CatchAllMiddleware, install_error_handlers
    from capstan.server.leader import LeaderElection, leadership_for
    from capstan.server.leader_duties import LeaderDuties
    from capstan.server.metrics import MetricsMiddleware, RouteTemplates, ServerMetrics
    from capstan.server.security import (
        Authenticator,
        BrowserGuardMiddleware,
        BrowserPolicy,
        JsonRoutes,
        SecurityMiddleware,
    )
    from capstan.services import Services
    from capstan.ui import app as ui_app

    own_services = services is None
    svc = Services.open(settings) if services is None else services
    metrics = ServerMetrics()
    uninstrument = metrics.instrument_engine(svc.engine)
    audit = AuditWriter(svc.auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from starlette.concurrency import run_in_threadpool

        # The leader's work (resuming and scheduling runs, deployments, training jobs, requeues after backoff) runs
        # in the one process that holds the leader lock; a follower takes over within seconds when the leader dies.
        duties = LeaderDuties(app, deployments=lambda: _deployment_controller(settings, svc, metrics),
                              jobs=lambda: _job_controller(svc))
        election = LeaderElection(leadership_for(settings, svc.engine), on_elected=duties.elected,
                                  on_deposed=duties.deposed)
        # The pipeline service (a large import, and resuming runs) starts beside the server rather than before it,
        # so /health answers at once; pipeline requests wait for `pipelines_ready`.
        boot = threading.Thread(target=_start_pipelines, args=(app, svc, duties), name="capstan-pipelines-start",
                                daemon=True)
        boot.start()
        await run_in_threadpool(election.start)  # the first attempt: a lone server leads from its start
        try:
            yield
        finally:
            await run_in_threadpool(election.stop)  # no more rounds; the lock is held until the work has stopped
            # Clean shutdown stops the replicas (the next leader restarts them) and hands training jobs back.
            await run_in_threadpool(duties.stop_controllers)
            await run_in_threadpool(boot.join)
            if app.state.pipelines is not None:
                await run_in_threadpool(app.state.pipelines.stop)
            await run_in_threadpool(app.state.queue.stop)  # workload queue
            election.release()
            audit.close()
            uninstrument()
            if own_services:
                svc.close()

    app = FastAPI(title="Capstan", version=_version(), openapi_url=f"{API_V1_PREFIX}/openapi.json",
                  docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.services = svc
    app.state.metrics = metrics
    app.state.audit_writer = audit
    app.state.pipelines = None  # started with the app (see `_start_pipelines`); tests may set their own first
    app.state.pipelines_ready = threading.Event()
    app.state.deployments = None  # the deployment controller, in the leader process only (`LeaderDuties`)
    app.state.jobs = None  # the training job controller, in the leader process only (`LeaderDuties`)
    app.state.authenticator = Authenticator(svc.auth, bind_host=bind_host, clock=svc.clock)
    # -- workload queue: one locked manager per call, per-queue metrics on this app's registry --
    app.state.queue = queue_api.ServerQueue(svc)
    app.state.queue.register_metrics(metrics.registry)
    # -- end workload queue --
    install_error_handlers(app)

    templates = RouteTemplates()
    app.add_api_route("/health", _health, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", _metrics, methods=["GET"], include_in_schema=False)
    home.install(app, version=app.version)  # GET / and /api/v1/docs with its Swagger UI files (no CDN)
    ui_app.install(app)  # the web UI's static files under /ui/static (its routes are included below)
    # MLflow's routes come first: they carry the hot logging traffic, and their prefixes overlap with nothing else.
    included: list[tuple[APIRouter, str]] = [(router, "") for router in mlflow_api.routers]
    included += [(api_v1.router, API_V1_PREFIX), (admin_api.router, API_V1_PREFIX),
                 (pipelines_api.router, API_V1_PREFIX), (queue_api.router, API_V1_PREFIX),
                 (deployments_api.router, API_V1_PREFIX), (jobs_api.router, API_V1_PREFIX),
                 (studies_api.router, API_V1_PREFIX), (timeline_api.router, API_V1_PREFIX),
                 (api_v1_series.router, API_V1_PREFIX),
                 (deployments_serving.deployments_router(lambda: _deployment_router(svc), grpc=grpc), "")]
    included += ui_app.routers()  # the web UI's pages under /ui and their JSON twins under /api/v1/views
    for router, prefix in included:
        app.include_router(router, prefix=prefix)
        templates.add_router(router.routes, prefix)

    # add_middleware wraps the app built so far, so the last one added is the outermost.
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(SecurityMiddleware, authenticator=app.state.authenticator, audit=audit,
                       clock=svc.clock, route_label=templates.label)
    json_routes = JsonRoutes()
    json_routes.add_routes(app.routes)
    # Outside authentication: a CORS preflight carries no credential, and a cross-site request is refused unread.
    app.add_middleware(BrowserGuardMiddleware, json_route=json_routes, policy=BrowserPolicy(
        loopback=is_loopback_host(bind_host), allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins))
    app.add_middleware(MetricsMiddleware, metrics=metrics, templates=templates)
    return app


def _deployment_controller(settings: Settings, services: Services, metrics: ServerMetrics) -> DeploymentController:
    """The control plane of managed deployments: replicas are ``capstan serve`` processes on this machine; its
    replica and cold-start metrics are on this process's ``/metrics``."""
    from capstan.serving.controller import DeploymentController
    from capstan.serving.replicas import SubprocessLauncher

    return DeploymentController(services.deployments, events=services.events, launcher=SubprocessLauncher(settings),
                                admission=services.admission.get, clock=services.clock,
                                metrics=metrics.deployment_metrics())


def _job_controller(services: Services) -> JobController:
    """Runs the training jobs submitted through ``/api/v1/jobs`` on this machine."""
    from capstan.training.controller import JobController

    return JobController(services.job_runner())


def _deployment_router(services: Services) -> DeploymentRouter:
    """The data plane of managed deployments in this worker: requests to replicas, load reports, outcomes."""
    from capstan.serving.router import DeploymentRouter

    return DeploymentRouter(services.deployments, services.outcomes, clock=services.clock)


def _start_pipelines(app: FastAPI, services: Services, duties: LeaderDuties) -> None:
    """Create (unless a test already set one) and start the pipeline service; while this process is the leader
    it also resumes and schedules (`LeaderDuties`)."""
    try:
        if app.state.pipelines is None:
            from capstan.pipelines.service import PipelineService

            app.state.pipelines = PipelineService(services.pipelines.get())
        app.state.pipelines.start(schedules=False, resume=False)
    except Exception:  # a broken pipeline store must not take the tracking server down with it
        log.exception("the pipeline service did not start; /api/v1/pipelines answers 503")
        app.state.pipelines = None
    finally:
        app.state.pipelines_ready.set()
    try:
        duties.pipelines_started()
    except Exception:  # resuming failed; the schedule loop's ticks adopt the orphaned runs later
        log.exception("resuming unfinished pipeline runs failed")


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn capstan.server.app:app_from_env --factory`` and for ``capstan server --workers N``.

    Settings come from ``CAPSTAN_*`` variables; ``CAPSTAN_SERVER_HOST`` names the bound address (``capstan
    server`` sets it for its workers).
    """
    from capstan.server.runner import freeze_startup_objects

    settings = Settings.from_env()
    app = create_app(settings, bind_host=settings.server_host or "0.0.0.0")
    freeze_startup_objects()
    return app


def _health(request: Request) -> Response:
    """``{"status": "ok"}`` when the metadata store answers; 503 otherwise."""
    from starlette.responses import JSONResponse

    from capstan.server.staged import store_probe

    status, body = store_probe(request.app.state.services)
    return JSONResponse(body, status_code=status)


def _metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's metrics (needs a credential when auth is on)."""
    from capstan.server.metrics import CONTENT_TYPE
    from capstan.server.security import current_principal

    current_principal(request)
    metrics: ServerMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("capstan")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
        return "0.0.0"
