"""Deployments pages (``/ui/deployments``, ``/ui/deployments/NAME``, and the page's live part
``/ui/deployments/NAME/live``) and their JSON twins under ``/api/v1/views``.

Both pages take the project from ``?project=`` (else ``X-Capstan-Project``, else ``default``) and check ``read``
there before looking the deployment up, as the deployments API does. The deployment page's script re-reads its
live part every few seconds (the same read model rendered by the same template, decision 0546); editors' Promote,
Roll back and Scale buttons call the existing ``/api/v1/deployments/NAME/...`` routes with the project header and
the CSRF token (decision 0548).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, Response

from capstan.errors import InvalidParameterValue
from capstan.server.api_v1_common import render as render_json
from capstan.server.security import require
from capstan.ui import deployments_view as dv
from capstan.ui.render import SECURITY_HEADERS, Crumb, environment, page, render, services, ui_project, viewer

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/views", tags=["web UI views"])

DEPLOYMENTS = "Deployments"
DEFAULT_REFRESH_S = 5
"""How often the deployment page re-reads its live part unless ``?refresh=SECONDS`` says otherwise (0: never)."""
MAX_REFRESH_S = 300


def _listing(request: Request) -> dv.DeploymentList:
    project = ui_project(request)
    require(request, "read", project)
    params = request.query_params
    return dv.deployment_list(services(request).deployments, project,
                              max_results=dv.check_page_size(params.get("max_results")),
                              page_token=params.get("page_token") or None)


@pages.get("/ui/deployments")
@page("deployments")
def deployments_page(request: Request) -> Response:
    """A project's deployments: state, the versions served with their traffic weights, replicas ready/desired."""
    listing = _listing(request)
    return render(request, "deployments.html", title="Deployments", area="deployments",
                  crumbs=[Crumb(DEPLOYMENTS)], listing=listing)


@api.get("/deployments", summary="A project's deployments, one page (web UI twin)")
def deployments_json(request: Request, project: str | None = None,
                     max_results: Annotated[int, Query(ge=1, le=dv.MAX_PAGE_SIZE)] = dv.DEFAULT_PAGE_SIZE,
                     page_token: str | None = None) -> Response:
    """What ``/ui/deployments`` shows: one page of the project's deployments (``project``, else the
    ``X-Capstan-Project`` header) by name, each with its state, the versions it serves (role, traffic weight, ready
    and desired replicas); ``next_page_token`` continues the list."""
    return render_json(dv.deployment_list_json(_listing(request)))


def _detail(request: Request, name: str) -> dv.DeploymentDetail:
    """The deployment's read model, after checking ``read`` in the project (before the look-up, so a caller without
    rights learns nothing of what exists)."""
    project = ui_project(request)
    require(request, "read", project, target=f"deployment/{name}")
    svc = services(request)
    return dv.deployment_detail(svc.deployment_manager(), svc.deployments, svc.outcomes, svc.events, project, name,
                                now_ms=svc.clock())


def refresh_seconds(value: str | None) -> int:
    """The page's ``refresh`` query parameter: whole seconds from 0 (never) to `MAX_REFRESH_S`."""
    if value is None or value == "":
        return DEFAULT_REFRESH_S
    if not value.isdigit() or int(value) > MAX_REFRESH_S:
        raise InvalidParameterValue(f"refresh: must be whole seconds from 0 (never) to {MAX_REFRESH_S}, got "
                                    f"{value[:20]!r}")
    return int(value)


def _links(detail: dv.DeploymentDetail) -> dict[str, str]:
    from urllib.parse import quote

    query = f"?project={quote(detail.project, safe='')}"
    return {"query": query, "self": f"/ui/deployments/{detail.name}{query}",
            "live": f"/ui/deployments/{detail.name}/live{query}",
            "list": f"/ui/deployments{query}",
            "timeline": f"/ui/timeline/deployment/{detail.name}{query}",
            "api": f"/api/v1/deployments/{detail.name}"}


@pages.get("/ui/deployments/{name}")
@page("deployments")
def deployment_page(request: Request, name: str) -> Response:
    """A deployment: traffic split, per-version rate, latency, errors and quality, replicas, drift and events,
    refreshed in place every ``?refresh=`` seconds (default 5, 0 never); Promote, Roll back and Scale for editors."""
    refresh_s = refresh_seconds(request.query_params.get("refresh"))
    detail = _detail(request, name)
    links = _links(detail)
    return render(request, "deployment.html", title=f"Deployment {name}", area="deployments",
                  crumbs=[Crumb(DEPLOYMENTS, links["list"]), Crumb(name)], detail=detail, links=links,
                  refresh_s=refresh_s)


@pages.get("/ui/deployments/{name}/live")
@page("deployments")
def deployment_live(request: Request, name: str) -> Response:
    """The deployment page's live part alone (what its script swaps in every few seconds)."""
    detail = _detail(request, name)
    body = environment().get_template("deployment_live.html").render(
        detail=detail, links=_links(detail), viewer=viewer(request))
    return HTMLResponse(body, headers=SECURITY_HEADERS)


@api.get("/deployments/{name}", summary="A deployment as its page shows it (web UI twin)")
def deployment_json(request: Request, name: str, project: str | None = None) -> Response:
    """What ``/ui/deployments/{name}`` shows: state, traffic split, per version the request rate (last 10 s), latency
    percentiles, error rate and quality over the newest outcomes (``sample``), replicas, last cold start, recent
    events and live drift (the drift route's body)."""
    return render_json(dv.deployment_detail_json(_detail(request, name)))
