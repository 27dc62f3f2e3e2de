"""Shared plumbing of the ``/api/v1`` routers: store access, orjson rendering and project-scoped authorisation.

Every handler authorises with `capstan.server.security.require` against the project of the object it touches.
Which project owns a run or logged model never changes, so those answers are cached per app; experiment lookups
are cached briefly (ids could be reused after a purge).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Request
from starlette.responses import Response

from capstan.auth.policy import Permission, Principal
from capstan.errors import InvalidParameterValue
from capstan.server.security import request_project, require

if TYPE_CHECKING:
    from capstan.services import Services

JSON = "application/json"
NO_CONTENT = 204
_EXPERIMENT_TTL_S = 10.0
_MAX_ENTRIES = 100_000


def render(payload: Mapping[str, Any] | list[Any], status_code: int = 200) -> Response:
    """An orjson-rendered JSON response."""
    return Response(content=orjson.dumps(payload), status_code=status_code, media_type=JSON)


def no_content() -> Response:
    """An empty 204 answer."""
    return Response(status_code=NO_CONTENT)


def services(request: Request) -> Services:
    """The app's stores."""
    svc: Services = request.app.state.services
    return svc


class ProjectCache:
    """Which project owns a run, logged model or experiment (see the module docstring)."""

    def __init__(self) -> None:
        self.runs: dict[str, str] = {}
        self.models: dict[str, str] = {}
        self.experiments: dict[str, tuple[str, float]] = {}

    @staticmethod
    def put(cache: dict[str, Any], key: str, value: Any) -> None:
        if len(cache) >= _MAX_ENTRIES:
            cache.clear()
        cache[key] = value


def _cache(request: Request) -> ProjectCache:
    state = request.app.state
    cache: ProjectCache | None = getattr(state, "api_v1_projects", None)
    if cache is None:
        cache = ProjectCache()
        state.api_v1_projects = cache
    return cache


def experiment_project(request: Request, experiment_id: str) -> str:
    """The project of an experiment (`ResourceDoesNotExist` when unknown)."""
    cache = _cache(request)
    hit = cache.experiments.get(experiment_id)
    if hit is not None and hit[1] > time.monotonic():
        return hit[0]
    project = services(request).tracking.get_experiment(experiment_id).project
    cache.put(cache.experiments, experiment_id, (project, time.monotonic() + _EXPERIMENT_TTL_S))
    return project


def run_project(request: Request, run_id: str) -> str:
    """The project of a run, through its experiment."""
    cache = _cache(request)
    project = cache.runs.get(run_id)
    if project is None:
        project = experiment_project(request, services(request).tracking.get_run(run_id).info.experiment_id)
        cache.put(cache.runs, run_id, project)
    return project


def logged_model_project(request: Request, model_id: str) -> str:
    """The project of an MLflow 3 logged model, through its experiment."""
    cache = _cache(request)
    project = cache.models.get(model_id)
    if project is None:
        project = experiment_project(request,
                                     services(request).tracking.get_logged_model(model_id).experiment_id)
        cache.put(cache.models, model_id, project)
    return project


def authorize_project(request: Request, permission: Permission) -> tuple[str, Principal]:
    """Authorise an action on the request's own project (``X-Capstan-Project``, default ``default``)."""
    project = request_project(request)
    return project, require(request, permission, project)


def authorize_experiment(request: Request, experiment_id: str, permission: Permission) -> Principal:
    """Authorise ``permission`` on the experiment's project."""
    return require(request, permission, experiment_project(request, experiment_id),
                   target=f"experiment/{experiment_id}")


def authorize_run(request: Request, run_id: str, permission: Permission) -> Principal:
    """Authorise ``permission`` on the run's project."""
    return require(request, permission, run_project(request, run_id), target=f"run/{run_id}")


def authorize_logged_model(request: Request, model_id: str, permission: Permission) -> Principal:
    """Authorise ``permission`` on the logged model's project."""
    return require(request, permission, logged_model_project(request, model_id), target=f"logged-model/{model_id}")


def authorize_registered_model(request: Request, name: str, permission: Permission) -> Principal:
    """Authorise ``permission`` on the registered model's project (not cached: models can be renamed)."""
    project = services(request).registry.get_registered_model(name).project
    return require(request, permission, project, target=f"model/{name}")


def check_view_type(view_type: str) -> str:
    """``ACTIVE_ONLY``, ``DELETED_ONLY`` or ``ALL`` (case-insensitive)."""
    from capstan.tracking.records import VIEW_TYPES

    value = view_type.upper()
    if value not in VIEW_TYPES:
        raise InvalidParameterValue(f"view_type: must be one of {', '.join(VIEW_TYPES)}, got {view_type!r}")
    return value
