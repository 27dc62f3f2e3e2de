"""Hyperparameter studies pages: ``/ui/studies`` (a project's studies with their trial counts and best trial) and
``/ui/studies/NAME`` (the trials table, the best trial highlighted, the optimisation-history chart).

The list's twin is the existing ``GET /api/v1/studies`` (same store calls, parameters and page tokens); the study
page's is ``GET /api/v1/views/studies/NAME`` here (the page of trials it shows and the history it draws). The
caller's project (``?project=``, else ``X-Capstan-Project``, else ``default``) is checked before a study is looked
up, and a study of another project is a 404, as in the API. ``static/studies.js`` draws the chart with plotly.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from capstan.server.api_v1_common import render as render_json
from capstan.server.security import require
from capstan.ui import studies_view as sv
from capstan.ui.jobs_view import project_suffix
from capstan.ui.render import Crumb, page, render, services, ui_project

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/views", tags=["web UI views"])


@pages.get("/ui/studies")
@page("studies")
def studies_list_page(request: Request) -> Response:
    """The project's studies, newest first, one page at a time."""
    project = ui_project(request)
    require(request, "read", project)
    params = request.query_params
    listing = sv.studies_page(services(request).studies, project, sv.check_page_size(params.get("max_results")),
                              params.get("page_token") or None)
    return render(request, "studies.html", title="Studies", area="studies", crumbs=[Crumb("Studies")],
                  listing=listing, project=project, suffix=project_suffix(project))


def _detail(request: Request, name: str, max_results: int | str | None, page_token: str | None) -> sv.StudyDetail:
    project = ui_project(request)
    require(request, "read", project, target=f"study/{name}")
    return sv.study_detail(services(request).studies, project, name, sv.check_page_size(max_results),
                           page_token or None)


@pages.get("/ui/studies/{name}")
@page("studies")
def study_page(request: Request, name: str) -> Response:
    """A study: its state and spec, the best trial, the optimisation history and a page of its trials."""
    params = request.query_params
    detail = _detail(request, name, params.get("max_results"), params.get("page_token"))
    suffix = project_suffix(detail.project)
    return render(request, "study.html", title=f"Study {name}", area="studies",
                  crumbs=[Crumb("Studies", f"/ui/studies{suffix}"), Crumb(name)], detail=detail,
                  study=detail.result.study, spec=detail.result.study.spec, best=detail.best, suffix=suffix,
                  history=detail.history.to_dict())


@api.get("/studies/{name}", summary="A study with a page of its trials and its optimisation history (web UI twin)")
def study_json(request: Request, name: str,
               max_results: Annotated[int, Query(ge=1, le=sv.MAX_PAGE_SIZE)] = sv.DEFAULT_PAGE_SIZE,
               page_token: str | None = None) -> Response:
    """What ``/ui/studies/{name}`` shows: the study (state, spec, counts of trials by state, best trial), one page
    of its trials by number, and the optimisation history (each COMPLETE trial's value, each PRUNED trial's last
    value, the best value so far). The project is ``X-Capstan-Project`` (or ``?project=``)."""
    return render_json(sv.study_detail_json(_detail(request, name, max_results, page_token)))
