"""Experiments and runs pages (``/ui/experiments``, ``/ui/experiments/ID``, ``/ui/runs/ID``, ``/ui/compare``) and
their JSON twins under ``/api/v1/views``.

The pattern every page module follows (docs/ui.md, "Adding a page"): ``pages`` holds the HTML handlers, ``api``
the JSON twins; both call the same read-model function (`capstan.ui.runs_view`) with the same query parameters,
and authorise with `capstan.server.security.require` in the object's project. The experiments list's twin is the
existing ``GET /api/v1/experiments`` (same store call, same parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from capstan.errors import InvalidParameterValue
from capstan.server.api_v1_common import render as render_json
from capstan.server.errors import NAMES_AN_OBJECT
from capstan.server.security import require
from capstan.ui import runs_view as rv
from capstan.ui.render import Crumb, page, render, services, ui_project

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/views", tags=["web UI views"])

EXPERIMENTS = Crumb("Experiments", "/ui/experiments")


def runs_query(request: Request) -> rv.RunsQuery:
    """The runs table's query parameters, shared by the page and its twin: ``column`` (repeated, e.g.
    ``metrics.acc``), ``filter``, ``order_by`` (repeated), ``page_token``, ``max_results``, ``view_type``."""
    params = request.query_params
    return rv.RunsQuery(columns=rv.parse_columns(params.getlist("column")), filter=params.get("filter", ""),
                        order_by=tuple(o for o in params.getlist("order_by") if o.strip()),
                        page_token=params.get("page_token") or None,
                        max_results=rv.check_page_size(params.get("max_results")),
                        view_type=rv.check_view(params.get("view_type")))


@dataclass(frozen=True, slots=True)
class SortKey:
    """A sortable header of the runs table: its label, the ``order_by`` field, and the first direction."""

    label: str
    field: str
    descending_first: bool = False


ATTRIBUTE_SORTS = (SortKey("Run", "attributes.run_name"), SortKey("Status", "attributes.status"),
                   SortKey("Started", "attributes.start_time", True), SortKey("User", "attributes.user_id"))


@dataclass(frozen=True, slots=True)
class RunsLinks:
    """URLs of the runs page that change one thing of its query: the sort, the page."""

    base: str
    query: rv.RunsQuery

    def _url(self, *, order_by: tuple[str, ...] | None = None, page_token: str | None = None) -> str:
        q = self.query
        pairs: list[tuple[str, str]] = [("column", c.name) for c in q.columns]
        if q.filter:
            pairs.append(("filter", q.filter))
        pairs += [("order_by", o) for o in (q.order_by if order_by is None else order_by)]
        if q.view_type != "ACTIVE_ONLY":
            pairs.append(("view_type", q.view_type))
        if q.max_results != rv.DEFAULT_PAGE_SIZE:
            pairs.append(("max_results", str(q.max_results)))
        if page_token:
            pairs.append(("page_token", page_token))
        return f"{self.base}?{urlencode(pairs)}" if pairs else self.base

    def sort_state(self, key: SortKey) -> str:
        """``asc``, ``desc`` or empty: how the table is sorted by ``key`` now."""
        current = self.query.order_by[0] if self.query.order_by else ""
        for state in ("asc", "desc"):
            if current == f"{key.field} {state.upper()}":
                return state
        return ""

    def sort(self, key: SortKey) -> str:
        """The first page sorted by ``key`` (the other direction when it is the current sort)."""
        state = self.sort_state(key)
        descending = state == "asc" or (not state and key.descending_first)
        return self._url(order_by=(f"{key.field} {'DESC' if descending else 'ASC'}",))

    def page(self, token: str | None) -> str:
        """The page starting at ``token`` (the first page for None)."""
        return self._url(page_token=token)


def column_sort(column: rv.Column) -> SortKey:
    """The sort key of a chosen column (metrics sort best-first, i.e. descending, on the first click)."""
    return SortKey(column.name, column.order_clause(descending=False).rsplit(" ", 1)[0], column.kind == "metrics")


# -- experiments --------------------------------------------------------------------------------------------
@pages.get("/ui/experiments")
@page("experiments")
def experiments_page(request: Request) -> Response:
    """The experiments of a project (``?project=``), filtered with MLflow syntax, one page at a time."""
    project = ui_project(request)
    require(request, "read", project)
    params = request.query_params
    filter_string = params.get("filter", "")
    max_results = rv.check_page_size(params.get("max_results"))
    error = ""
    try:  # the same call as GET /api/v1/experiments
        found = services(request).tracking.search_experiments(
            project=project, view_type="ACTIVE_ONLY", filter_string=filter_string, max_results=max_results,
            page_token=params.get("page_token") or None)
        experiments, next_token = found.items, found.next_page_token
    except InvalidParameterValue as exc:
        experiments, next_token, error = (), None, exc.message
    return render(request, "experiments.html", title="Experiments", area="experiments",
                  crumbs=[Crumb("Experiments")], project=project, experiments=experiments, filter=filter_string,
                  error=error, next_page_token=next_token, max_results=max_results,
                  page_token=params.get("page_token") or "")


# -- runs table ---------------------------------------------------------------------------------------------
@pages.get("/ui/experiments/{experiment_id}")
@page("experiments")
def runs_page(request: Request, experiment_id: str) -> Response:
    """An experiment's runs table; a malformed filter shows the parser's message next to the filter box."""
    tracking = services(request).tracking
    experiment = tracking.get_experiment(experiment_id)
    require(request, "read", experiment.project, target=f"experiment/{experiment_id}")
    query = runs_query(request)
    error = ""
    try:
        table: rv.RunsTable | None = rv.runs_table(tracking, experiment_id, query)
    except InvalidParameterValue as exc:
        table, error = None, exc.message
    return render(request, "runs.html", title=f"Runs of {experiment.name}", area="experiments",
                  crumbs=[EXPERIMENTS, Crumb(experiment.name)], experiment=experiment, query=query, table=table,
                  error=error, kinds=rv.COLUMN_KINDS,
                  choices=rv.column_choices(table.available if table else {}, query.columns),
                  links=RunsLinks(f"/ui/experiments/{experiment_id}", query),
                  attribute_sorts=ATTRIBUTE_SORTS, column_sort=column_sort)


@api.get("/experiments/{experiment_id}/runs", summary="The runs table of an experiment (web UI twin)")
def runs_table_json(request: Request, experiment_id: str,
                    column: Annotated[list[str] | None, Query(description="Chosen columns, e.g. metrics.acc")] = None,
                    filter: str = "", order_by: Annotated[list[str] | None, Query()] = None,
                    page_token: str | None = None, max_results: int = rv.DEFAULT_PAGE_SIZE,
                    view_type: str = "ACTIVE_ONLY") -> Response:
    """One page of an experiment's runs with only the chosen param/metric/tag columns, and the column keys seen
    on that page (what ``/ui/experiments/{experiment_id}`` shows)."""
    tracking = services(request).tracking
    experiment = tracking.get_experiment(experiment_id)
    require(request, "read", experiment.project, target=f"experiment/{experiment_id}")
    return render_json(rv.runs_table_json(rv.runs_table(tracking, experiment_id, runs_query(request))))


# -- run detail ---------------------------------------------------------------------------------------------
@pages.get("/ui/runs/{run_id}")
@page("experiments")
def run_page(request: Request, run_id: str) -> Response:
    """A run: params, latest metrics with charts, tags, artifacts and lineage."""
    svc = services(request)
    detail = rv.run_detail(svc.tracking, svc.registry, run_id)
    require(request, "read", detail.project, target=f"run/{run_id}")
    info = detail.run.info
    return render(request, "run.html", title=f"Run {info.run_name or info.run_id}", area="experiments",
                  crumbs=[EXPERIMENTS, Crumb(detail.experiment.name, f"/ui/experiments/{info.experiment_id}"),
                          Crumb(info.run_name or info.run_id)], detail=detail, run=detail.run, lineage=detail.lineage,
                  chart_runs=[{"run_id": info.run_id, "name": info.run_name or info.run_id}],
                  chart_keys=sorted(m.key for m in detail.run.data.metrics))


@api.get("/runs/{run_id}", summary="A run with its experiment and lineage (web UI twin)")
def run_detail_json(request: Request, run_id: str) -> Response:
    """What ``/ui/runs/{run_id}`` shows: the run, its experiment, and its lineage (parent run, job, study trial,
    registered model versions)."""
    svc = services(request)
    detail = rv.run_detail(svc.tracking, svc.registry, run_id)
    require(request, "read", detail.project, target=f"run/{run_id}")
    return render_json(rv.run_detail_json(detail))


# -- compare ------------------------------------------------------------------------------------------------
def _compare(request: Request, run_ids: list[str]) -> rv.Comparison:
    comparison = rv.compare_runs(services(request).tracking, run_ids)
    for project in sorted(comparison.projects()):
        require(request, "read", project)
    return comparison


@pages.get("/ui/compare")
@page("experiments")
def compare_page(request: Request) -> Response:
    """Selected runs side by side (``?run_id=A&run_id=B``): differing values highlighted, metrics overlaid."""
    comparison = _compare(request, request.query_params.getlist("run_id"))
    first = comparison.runs[0].info.experiment_id
    experiment = comparison.experiments[first]
    return render(request, "compare.html", title=f"Compare {len(comparison.runs)} runs", area="experiments",
                  crumbs=[EXPERIMENTS, Crumb(experiment.name, f"/ui/experiments/{first}"), Crumb("Compare")],
                  comparison=comparison,
                  chart_runs=[{"run_id": r.info.run_id, "name": r.info.run_name or r.info.run_id[:8]}
                              for r in comparison.runs],
                  chart_keys=[row.key for row in comparison.metrics])


@api.get("/compare", responses=NAMES_AN_OBJECT,
         summary="Params, metrics and tags of several runs side by side (web UI twin)")
def compare_json(request: Request,
                 run_id: Annotated[list[str], Query(description="2 to 20 run ids")]) -> Response:
    """What ``/ui/compare`` shows; each row says whether the runs' values differ."""
    return render_json(rv.comparison_json(_compare(request, run_id)))
