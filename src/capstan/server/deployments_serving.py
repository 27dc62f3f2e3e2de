"""The inference routes of managed deployments in ``capstan server``: ``/deployments/NAME/...``.

``deployments_router(make_router)`` returns the FastAPI router to mount at the root (no prefix):

- ``GET|POST /deployments/{name}/{path:path}``: everything below the prefix goes to a replica of the deployment
  through the worker's `DeploymentRouter` (``/deployments/NAME/v2/models/NAME/infer``,
  ``/deployments/NAME/v1/models/NAME:predict``, ``/deployments/NAME/invocations``, ...; tritonclient works with
  ``url="HOST:PORT/deployments/NAME"``). Bodies are passed through whatever their content type.
- ``POST /deployments/{name}/feedback``: ground truth for earlier request ids (``{"request_id": ..., "truth": ...}``
  or a list of them).
- ``GET /deployments/{name}/quality``: the per-version A/B report (`capstan.serving.abtest.deployment_quality`).

The deployment is looked up in the request's project (``X-Capstan-Project``, else the project of a token scoped to
the deployment, else ``default``); every route needs
the ``read`` permission there (inference, feedback and the report alike), so they are not audited as changes.
Errors are JSON with both the serving protocols' ``error`` and the server's ``error_code``/``message``.

With ``grpc`` options the router's lifespan also starts OIP v2 over gRPC for every deployment
(`capstan.serving.grpc_router`) on the same `DeploymentRouter`, its calls authorized by `grpc_authorizer` with the
same rules as the inference route: the credential as ``authorization`` metadata, ``read`` in the project, a
deployment-scoped token only for its deployment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from capstan.auth.policy import Principal, authorize
from capstan.errors import CapstanError, ResourceDoesNotExist
from capstan.server.security import (
    DEFAULT_PROJECT,
    PROJECT_HEADER,
    Authenticator,
    check_token_scope,
    current_principal,
    require,
)

if TYPE_CHECKING:
    # The data plane is imported when first used (by `make_router`), not while the app is built (decision 0750).
    from capstan.serving.grpc_router import Authorize
    from capstan.serving.grpc_server import GrpcOptions
    from capstan.serving.router import DeploymentRouter

__all__ = ["DEPLOYMENTS_PREFIX", "deployment_project", "deployments_router", "grpc_authorizer"]

DEPLOYMENTS_PREFIX = "/deployments"


class _BodyTooLarge(CapstanError):
    code = "INVALID_PARAMETER_VALUE"
    http_status = 413


def deployment_project(sent: str | None, principal: Principal, name: str) -> str:
    """The project to find deployment ``name`` in: the one the caller ``sent`` (``X-Capstan-Project``), or, when
    it sent none and holds a token scoped to that deployment, the token's; else ``default``."""
    if sent is None:
        scope = principal.scope
        if scope is not None and scope.deployment == name:
            return scope.project
    return (sent or "").strip() or DEFAULT_PROJECT


def _project(request: Request, name: str) -> str:
    return deployment_project(request.headers.get(PROJECT_HEADER), current_principal(request), name)


def grpc_authorizer(authenticator: Authenticator) -> Authorize:
    """The check of a gRPC call to a deployment: the rules of the REST inference route (`deployment_project`, the
    token's scope, ``read`` in the project), with the ``authorization`` and ``x-capstan-project`` metadata for the
    headers."""

    async def authorize_call(authorization: str | None, project: str | None, deployment: str) -> str:
        principal = await authenticator.resolve(authorization)
        check_token_scope(principal, f"{DEPLOYMENTS_PREFIX}/{deployment}")
        chosen = deployment_project(project, principal, deployment)
        authorize(principal, "read", chosen)
        return chosen

    return authorize_call


def _error(exc: CapstanError) -> JSONResponse:
    return JSONResponse({"error": exc.message, "error_code": exc.code, "message": exc.message},
                        status_code=exc.http_status)


class _Routes:
    """The handlers, over one `DeploymentRouter` built on first use."""

    def __init__(self, make_router: Callable[[], DeploymentRouter]) -> None:
        self._make_router = make_router
        self._router: DeploymentRouter | None = None

    @property
    def router(self) -> DeploymentRouter:
        if self._router is None:
            self._router = self._make_router()
        return self._router

    async def close(self) -> None:
        if self._router is not None:
            await self._router.aclose()

    async def _body(self, request: Request) -> bytes:
        limit = self.router.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _BodyTooLarge(f"the request body ({declared} bytes) is over the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge(f"the request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def forward(self, request: Request, name: str, path: str) -> Response:
        """Send the request to a replica of deployment ``name`` (see `DeploymentRouter.handle`)."""
        try:
            project = _project(request, name)
            require(request, "read", project, target=f"deployment/{name}")
            return await self.router.handle(
                project, name, method=request.method, path="/" + path, query=request.url.query,
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
                body=await self._body(request) if request.method == "POST" else b"")
        except CapstanError as exc:
            return _error(exc)

    async def feedback(self, request: Request, name: str) -> Response:
        """Record ground truth for earlier requests of deployment ``name``."""
        try:
            project = _project(request, name)
            require(request, "read", project, target=f"deployment/{name}")
            return await self.router.feedback(project, name, await self._body(request))
        except CapstanError as exc:
            return _error(exc)

    async def quality(self, request: Request, name: str) -> Response:
        """The deployment's per-version quality report (JSON)."""
        try:
            project = _project(request, name)
            require(request, "read", project, target=f"deployment/{name}")
            router = self.router
            if await router.table(project, name) is None:
                raise ResourceDoesNotExist(f"deployment {name!r} does not exist in project {project!r}")
            if router.outcomes is None:
                return JSONResponse({"error": "this server records no request outcomes"}, status_code=503)
            await router.flush()
            outcomes = router.outcomes
            from capstan.serving.abtest import deployment_quality

            report = await asyncio.to_thread(deployment_quality, outcomes, project, name)
            return JSONResponse(report.to_dict())
        except CapstanError as exc:
            return _error(exc)


def deployments_router(make_router: Callable[[], DeploymentRouter], *,
                       grpc: GrpcOptions | None = None) -> APIRouter:
    """The ``/deployments`` routes over the `DeploymentRouter` that ``make_router`` builds (once, on the first
    request of this process); the router's lifespan closes it (flushing outcomes and load reports) at shutdown.

    With ``grpc``, the lifespan also serves OIP v2 over gRPC for every deployment through the same router, its
    calls checked by the app's authenticator (``app.state.authenticator``, as `current_principal` uses), and stops
    it (calls in flight get ``grace_s``) before the router closes."""
    routes = _Routes(make_router)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        grpc_server = None
        try:
            if grpc is not None:
                from capstan.serving.grpc_router import start_deployments_grpc

                grpc_server = await start_deployments_grpc(
                    lambda: routes.router, grpc, authorize=grpc_authorizer(app.state.authenticator),
                    max_message_bytes=routes.router.options.max_body_bytes)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop()
            await routes.close()

    api = APIRouter(prefix=DEPLOYMENTS_PREFIX, tags=["deployments"], lifespan=lifespan)
    api.add_api_route("/{name}/feedback", routes.feedback, methods=["POST"], summary="Send ground truth",
                      response_class=JSONResponse)
    api.add_api_route("/{name}/quality", routes.quality, methods=["GET"], summary="Per-version A/B quality",
                      response_class=JSONResponse)
    for method in ("GET", "POST"):  # one route per method, so each has its own OpenAPI operation id
        api.add_api_route("/{name}/{path:path}", routes.forward, methods=[method],
                          summary="Inference through the deployment router", include_in_schema=True,
                          operation_id=f"deployment_forward_{method.lower()}")
    return api

