"""Model registry pages (``/ui/models``, ``/ui/models/NAME``, ``/ui/models/NAME/versions/V``) and their JSON
twins under ``/api/v1/views``.

These are the pages the links of the ``mlflow`` client open (``/#/models/<name>/versions/<v>``, mapped by
``home.js``). The list's twin is the existing ``GET /api/v1/registered-models`` (same store call, same
parameters; the project in ``X-Capstan-Project``); the model and version pages have twins of their own, built by
`capstan.ui.models_view`. Editors get buttons to set and delete aliases; they call the existing alias routes
(``PUT``/``DELETE /api/v1/registered-models/NAME/aliases/ALIAS``), which check the role again.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from capstan.auth.policy import Principal, allows
from capstan.errors import InvalidParameterValue
from capstan.server.api_v1_common import render as render_json
from capstan.server.api_v1_schemas import VersionPath
from capstan.server.security import current_principal, require
from capstan.ui import models_view as mv
from capstan.ui.render import Crumb, page, render, services, ui_project

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/views", tags=["web UI views"])

MODELS = Crumb("Models", "/ui/models")
SORTS = (("Name", "name"), ("Last update", "last_updated_timestamp"))


def _may_read(principal: Principal) -> mv.MayRead:
    return lambda project: allows(principal, "read", project)


def model_url(name: str) -> str:
    """The page of model ``name``."""
    return f"/ui/models/{quote(name, safe='')}"


def list_url(project: str, filter_string: str, order_by: str, *, page_token: str | None = None,
             max_results: int = mv.LIST_PAGE_SIZE) -> str:
    """The models list with these parameters (empty ones left out)."""
    pairs = [(k, v) for k, v in (("project", project), ("filter", filter_string), ("order_by", order_by)) if v]
    if max_results != mv.LIST_PAGE_SIZE:
        pairs.append(("max_results", str(max_results)))
    if page_token:
        pairs.append(("page_token", page_token))
    return "/ui/models?" + urlencode(pairs)


# -- the list -------------------------------------------------------------------------------------------------
@pages.get("/ui/models")
@page("models")
def models_page(request: Request) -> Response:
    """The project's registered models, filtered as ``capstan models list --filter`` (``name LIKE 'fraud%'``,
    ``tags.team = 'risk'``), one server page at a time; a malformed filter shows the parser's message."""
    project = ui_project(request)
    require(request, "read", project)
    params = request.query_params
    filter_string, order_by = params.get("filter", ""), params.get("order_by", "")
    page_token = params.get("page_token") or None
    max_results = mv.check_page_size(params.get("max_results"), default=mv.LIST_PAGE_SIZE,
                                     maximum=mv.MAX_LIST_PAGE_SIZE)
    error = ""
    try:  # the same call as GET /api/v1/registered-models
        found = services(request).registry.search_registered_models(
            filter_string=filter_string, max_results=max_results, order_by=(order_by,) if order_by else (),
            page_token=page_token, project=project)
        models, next_token = found.items, found.next_page_token
    except InvalidParameterValue as exc:
        models, next_token, error = (), None, exc.message
    links = {"first": list_url(project, filter_string, order_by, max_results=max_results),
             "next": list_url(project, filter_string, order_by, page_token=next_token, max_results=max_results)}
    sorts = [(label, list_url(project, filter_string, _flip(order_by, key), max_results=max_results),
              _sort_state(order_by, key)) for label, key in SORTS]
    return render(request, "models.html", title="Models", area="models", crumbs=[Crumb("Models")],
                  project=project, models=models, filter=filter_string, order_by=order_by, error=error,
                  next_page_token=next_token, page_token=page_token, links=links, sorts=sorts,
                  model_url=model_url)


def _sort_state(order_by: str, key: str) -> str:
    clause = order_by.strip() or "name ASC"  # the store's default order
    if clause == key or clause == f"{key} ASC":
        return "asc"
    return "desc" if clause == f"{key} DESC" else ""


def _flip(order_by: str, key: str) -> str:
    """Sort by ``key``: ascending first (newest first for times), the other way when it is the current sort."""
    state = _sort_state(order_by, key)
    descending = state == "asc" or (not state and key.endswith("timestamp"))
    return f"{key} {'DESC' if descending else 'ASC'}"


# -- a model --------------------------------------------------------------------------------------------------
def _model_detail(request: Request, name: str, max_results: int, page_token: str | None) -> mv.ModelDetail:
    svc = services(request)
    detail = mv.model_detail(svc.registry, svc.tracking, _may_read(current_principal(request)), name,
                             max_results=max_results, page_token=page_token)
    require(request, "read", detail.project, target=f"model/{name}")
    return detail


@pages.get("/ui/models/{name}")
@page("models")
def model_page(request: Request, name: str) -> Response:
    """A registered model: aliases (editors may set and delete them), tags, and its versions with lineage."""
    params = request.query_params
    max_results = mv.check_page_size(params.get("max_results"), default=mv.DEFAULT_PAGE_SIZE,
                                     maximum=mv.MAX_PAGE_SIZE)
    page_token = params.get("page_token") or None
    detail = _model_detail(request, name, max_results, page_token)
    base = model_url(name)
    next_link = (f"{base}?{urlencode({'max_results': max_results, 'page_token': detail.next_page_token})}"
                 if detail.next_page_token else None)
    return render(request, "models_model.html", title=f"Model {name}", area="models",
                  crumbs=[Crumb("Models", f"/ui/models?project={quote(detail.project, safe='')}"), Crumb(name)],
                  detail=detail, model=detail.model, base=base, next_link=next_link, page_token=page_token,
                  alias_url=f"/api/v1/registered-models/{quote(name, safe='')}/aliases/")


@api.get("/models/{name}", summary="A registered model with one page of its versions and their lineage (web UI twin)")
def model_json(request: Request, name: str,
               max_results: Annotated[int, Query(ge=1, le=mv.MAX_PAGE_SIZE)] = mv.DEFAULT_PAGE_SIZE,
               page_token: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    """What ``/ui/models/{name}`` shows: the model (aliases, tags, latest versions) and its versions, newest
    first, each with its lineage (run, experiment, training job, study trial, pipeline run and step)."""
    return render_json(_model_detail(request, name, max_results, page_token).to_dict())


# -- a version ------------------------------------------------------------------------------------------------
def _version_detail(request: Request, name: str, version: int) -> mv.VersionDetail:
    svc = services(request)
    detail = mv.version_detail(svc.registry, svc.tracking, _may_read(current_principal(request)), name, version)
    require(request, "read", detail.project, target=f"model/{name}")
    return detail


@pages.get("/ui/models/{name}/versions/{version}")
@page("models")
def version_page(request: Request, name: str, version: str) -> Response:
    """A model version: stage, aliases, tags, source and its lineage back to the run (and pipeline step)."""
    detail = _version_detail(request, name, mv.check_version(version))
    number = detail.version.version
    return render(request, "models_version.html", title=f"{name} version {number}", area="models",
                  crumbs=[Crumb("Models", f"/ui/models?project={quote(detail.project, safe='')}"),
                          Crumb(name, model_url(name)), Crumb(f"Version {number}")],
                  detail=detail, model=detail.model, v=detail.version, lineage=detail.row.lineage,
                  model_link=model_url(name), alias_url=f"/api/v1/registered-models/{quote(name, safe='')}/aliases/")


@api.get("/models/{name}/versions/{version}", summary="A model version with its lineage (web UI twin)")
def version_json(request: Request, name: str, version: VersionPath) -> Response:
    """What ``/ui/models/{name}/versions/{version}`` shows: the model, the version and its lineage."""
    return render_json(_version_detail(request, name, version).to_dict())
