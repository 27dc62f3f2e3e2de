"""Managed deployments over HTTP; `router` is mounted under ``/api/v1`` (so ``POST /api/v1/deployments``).

Deployments belong to the request's project (``X-Capstan-Project``). Changing one needs ``write`` (editor), reading
``read`` (viewer). A spec whose model URIs point into another project is refused unless the caller may read that
project too (the same indirect-access rule as model-version sources, `capstan.server.model_sources`). Handlers only
write records; the controller in the leader process (`capstan.serving.controller`) starts and stops replicas.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from capstan.server.api_v1_schemas import INTEGRAL
from capstan.server.security import request_project, require

if TYPE_CHECKING:
    from collections.abc import Callable

    from capstan.serving.manage import DeploymentManager
    from capstan.serving.ports import DeploymentRecord

log = logging.getLogger("capstan.server.deployments")
router = APIRouter(prefix="/deployments", tags=["deployments"])


class Scale(BaseModel):
    """A fixed replica count for the primary model."""

    model_config = ConfigDict(strict=True)

    replicas: Annotated[int, Field(ge=1, le=1000), INTEGRAL]


def _render(payload: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def _manager(request: Request) -> DeploymentManager:
    """The manager over this server's stores; it reads a model's MLmodel (through these stores, in the request's
    project) to check the spec's options against the kind of model."""
    import dataclasses

    from capstan.sdk.backends_local import LocalBackend
    from capstan.sdk.model_kind import language_model_in

    services = request.app.state.services
    backend = LocalBackend(dataclasses.replace(services.settings, project=request_project(request), url=None),
                           services=services)

    def language_model(uri: str) -> bool:
        return language_model_in(backend, uri)

    return services.deployment_manager(language_model)  # type: ignore[no-any-return]  # app.state is untyped


def _wake(request: Request) -> None:
    """Tell this process's controller (when it runs here) to reconcile now rather than at its next pass."""
    controller = getattr(request.app.state, "deployments", None)
    if controller is not None:
        controller.wake()


@router.post("", summary="Create or change a deployment")
def apply_deployment(request: Request, spec: Annotated[dict[str, Any], Body()],
                     create: Annotated[bool, Query(description="refuse when it exists")] = False) -> Response:
    """Apply a deployment spec (the document of ``deployment.yaml``, as JSON): 201 when created, 200 when changed."""
    from capstan.server.model_sources import authorize_source
    from capstan.serving.manage import record_json, spec_uris
    from capstan.serving.spec import parse_spec

    project = request_project(request)
    require(request, "write", project, target=f"deployment/{spec.get('name', '')}")
    parsed = parse_spec(spec)
    for _role, uri in spec_uris(parsed):
        authorize_source(request, uri.uri)
    record, created = _manager(request).apply(parsed, project, create_only=create)
    _wake(request)
    return _render({"deployment": record_json(record)}, 201 if created else 200)


@router.get("", summary="List deployments")
def list_deployments(request: Request) -> Response:
    """The project's deployments with their state and replica counts."""
    from capstan.serving.manage import deployment_state, record_json

    project = request_project(request)
    require(request, "read", project)
    services = request.app.state.services
    out = []
    for record in _manager(request).list(project):
        replicas = list(services.deployments.replicas(project, record.name))
        out.append({**record_json(record), "state": deployment_state(record, replicas),
                    "ready_replicas": sum(r.state == "ready" for r in replicas),
                    "replicas": len(replicas)})
    return _render({"deployments": out})


@router.get("/{name}", summary="Show a deployment's status")
def show_deployment(request: Request, name: str) -> Response:
    """Spec, resolved versions, state, traffic, replicas (state and message), last cold start and recent events."""
    project = request_project(request)
    require(request, "read", project, target=f"deployment/{name}")
    return _render(_manager(request).status(project, name))


@router.get("/{name}/drift", summary="Show a deployment's live data drift")
def deployment_drift(request: Request, name: str) -> Response:
    """Each version's drift, merged from its ready replicas' ``GET /drift`` (rows summed, the latest window's
    statistics); a replica that does not answer is listed with ``available: false``."""
    project = request_project(request)
    require(request, "read", project, target=f"deployment/{name}")
    return _render(_manager(request).drift(project, name))


@router.delete("/{name}", status_code=204, summary="Delete a deployment")
def delete_deployment(request: Request, name: str) -> Response:
    """Remove it; its replicas are stopped."""
    project = request_project(request)
    require(request, "write", project, target=f"deployment/{name}")
    _manager(request).delete(project, name)
    _wake(request)
    return Response(status_code=204)


def _change(request: Request, name: str, change: Callable[[DeploymentManager, str], DeploymentRecord]) -> Response:
    """Promote, roll back or scale: ``write`` in the request's project, the change, then wake the controller."""
    from capstan.serving.manage import record_json

    project = request_project(request)
    require(request, "write", project, target=f"deployment/{name}")
    record = change(_manager(request), project)
    _wake(request)
    return _render({"deployment": record_json(record)})


@router.post("/{name}/promote", summary="Promote the canary")
def promote_deployment(request: Request, name: str) -> Response:
    """The canary's version becomes the primary; the old primary's replicas drain."""
    return _change(request, name, lambda manager, project: manager.promote(project, name))


@router.post("/{name}/rollback", summary="Roll back")
def rollback_deployment(request: Request, name: str) -> Response:
    """Drop the canary, or return to the previous revision when there is none."""
    return _change(request, name, lambda manager, project: manager.rollback(project, name))


@router.post("/{name}/scale", summary="Set a fixed replica count")
def scale_deployment(request: Request, name: str, body: Scale) -> Response:
    """Run ``replicas`` primary replicas (an autoscaled deployment becomes fixed until a rollback or apply)."""
    return _change(request, name, lambda manager, project: manager.scale(project, name, body.replicas))
