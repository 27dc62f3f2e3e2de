"""Pipelines pages (``/ui/pipelines``, ``/ui/pipelines/runs/ID``, ``/ui/pipelines/runs/ID/steps/STEP``), their JSON
twins under ``/api/v1/views/pipelines`` and the live streams the pages listen to.

Read models: `capstan.ui.pipelines_view` (over the pipeline store, as ``/api/v1/pipelines`` reads it); the DAG's
layout: `capstan.ui.dag_layout`; the server-sent event streams: `capstan.ui.pipelines_live`. A run is read in its
own project (``read`` there), as ``GET /api/v1/pipelines/runs/{run_id}`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from capstan.errors import InvalidParameterValue
from capstan.server.api_v1_common import render as render_json
from capstan.server.security import require
from capstan.ui import pipelines_view as pv
from capstan.ui.pipelines_live import EventStream, log_events, run_events
from capstan.ui.render import Crumb, page, render, services, ui_project
from capstan.ui.runs_view import DEFAULT_PAGE_SIZE

if TYPE_CHECKING:
    from capstan.pipelines.runner import PipelineRunner
    from capstan.pipelines.storage import RunRecord

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/views/pipelines", tags=["web UI views"])

PIPELINES = Crumb("Pipelines", "/ui/pipelines")
EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}}


def _page(request: Request, template: str, *, title: str, crumbs: list[Crumb], **context: Any) -> Response:
    """`render` in the pipelines area, with the duration helpers the templates use."""
    return render(request, template, title=title, area="pipelines", crumbs=crumbs, span_text=pv.span_text,
                  duration_text=pv.duration_text, **context)


def _runner(request: Request) -> PipelineRunner:
    return services(request).pipelines.get()


def _readable_run(request: Request, run_id: str) -> RunRecord:
    run = pv.find_run(_runner(request).store, run_id)
    require(request, "read", run.project, target=f"pipeline-run/{run.id}")
    return run


def pipeline_crumb(run: RunRecord) -> Crumb:
    """The breadcrumb of a run's pipeline: the runs list filtered to it."""
    return Crumb(run.name, f"/ui/pipelines?{urlencode({'project': run.project, 'pipeline': run.name})}")


# -- runs list -----------------------------------------------------------------------------------------------
@pages.get("/ui/pipelines")
@page("pipelines")
def runs_page(request: Request) -> Response:
    """The project's pipeline runs, newest first, filtered by pipeline and status, one page at a time."""
    project = ui_project(request)
    require(request, "read", project)
    query = pv.runs_query(project, request.query_params)
    listing = pv.runs_list(_runner(request).store, query)
    return _page(request, "pipelines.html", title="Pipeline runs", crumbs=[Crumb("Pipelines")],
                  listing=listing, query=query, statuses=pv.RUN_STATUSES)


@api.get("/runs", summary="One page of pipeline runs (web UI twin)")
def runs_json(request: Request, pipeline: Annotated[str, Query(max_length=256)] = "",
              status: Annotated[str, Query(description="pending, running, succeeded, failed or cancelled")] = "",
              max_results: Annotated[int, Query(ge=1, le=500)] = DEFAULT_PAGE_SIZE,
              page_token: str | None = None) -> Response:
    """What ``/ui/pipelines`` shows: runs of the project (``?project=`` or ``X-Capstan-Project``), newest first,
    with the token of the next page."""
    project = ui_project(request)
    require(request, "read", project)
    query = pv.runs_query(project, {"pipeline": pipeline, "status": status, "max_results": str(max_results),
                                    "page_token": page_token or ""})
    return render_json(pv.runs_list_json(pv.runs_list(_runner(request).store, query)))


# -- a run ---------------------------------------------------------------------------------------------------
@pages.get("/ui/pipelines/runs/{run_id}")
@page("pipelines")
def run_page(request: Request, run_id: str) -> Response:
    """A run: its facts, its DAG with live step states, and the step list (``page_token``: 100 rows a page)."""
    run = _readable_run(request, run_id)
    view = pv.run_graph(_runner(request).store, run)
    rows, next_rows = pv.list_page(view.nodes, request.query_params.get("page_token"), pv.STEP_LIST_PAGE)
    return _page(request, "pipeline_run.html", title=f"{run.name} run {run.id[:8]}",
                  crumbs=[PIPELINES, pipeline_crumb(run), Crumb(run.id[:8])],
                  view=view, run=run, counts=pv.state_counts(view.nodes), edge_path=pv.edge_path,
                  bar_segments=pv.bar_segments, state_order=pv.STATE_ORDER, rows=rows, next_rows=next_rows)


@api.get("/runs/{run_id}", summary="A pipeline run's DAG with states and layout (web UI twin)")
def run_json(request: Request, run_id: str) -> Response:
    """What ``/ui/pipelines/runs/{run_id}`` shows: the run, each node (fan-outs folded, with counts per state)
    with its box, and each edge with its points."""
    run = _readable_run(request, run_id)
    return render_json(pv.run_graph_json(pv.run_graph(_runner(request).store, run)))


@api.get("/runs/{run_id}/events", response_class=EventStream, responses=EVENT_STREAM,
         summary="A pipeline run's node states as server-sent events")
async def run_stream(request: Request, run_id: str,
                     step: Annotated[str, Query(max_length=300, description="Also follow this step")] = "") -> Response:
    """``state`` events with the nodes that changed (all of them first), ``end`` when the run has finished."""
    run = await run_in_threadpool(_readable_run, request, run_id)
    return EventStream(run_events(_runner(request), run.id, step))


# -- a step --------------------------------------------------------------------------------------------------
def _step(request: Request, run_id: str, step_id: str) -> pv.StepView:
    run = _readable_run(request, run_id)
    params = request.query_params
    attempt = params.get("attempt")
    if attempt is not None and not attempt.isdigit():
        raise InvalidParameterValue(f"attempt: must be a positive whole number, got {attempt[:20]!r}")
    return pv.step_view(_runner(request), run, step_id, attempt=int(attempt) if attempt else None,
                        page_token=params.get("page_token") or None)


@pages.get("/ui/pipelines/runs/{run_id}/steps/{step_id}")
@page("pipelines")
def step_page(request: Request, run_id: str, step_id: str) -> Response:
    """A step: its attempts (exit code, duration, peak memory, reason), the log of one, its fan-out instances."""
    view = _step(request, run_id, step_id)
    return _page(request, "pipeline_step.html", title=f"{step_id} of {view.run.name}",
                  crumbs=[PIPELINES, pipeline_crumb(view.run),
                          Crumb(view.run.id[:8], f"/ui/pipelines/runs/{view.run.id}"), Crumb(step_id)],
                  view=view, run=view.run, step=view.step)


@api.get("/runs/{run_id}/steps/{step_id}", summary="A pipeline step with its attempts (web UI twin)")
def step_json(request: Request, run_id: str, step_id: str,
              attempt: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
              page_token: str | None = None) -> Response:
    """What ``/ui/pipelines/runs/{run_id}/steps/{step_id}`` shows, without the log text (read it from
    ``/api/v1/pipelines/runs/{run_id}/steps/{step_id}/logs``)."""
    return render_json(pv.step_view_json(_step(request, run_id, step_id)))


@api.get("/runs/{run_id}/steps/{step_id}/log", response_class=EventStream, responses=EVENT_STREAM,
         summary="An attempt's log as server-sent events while it is written")
async def log_stream(request: Request, run_id: str, step_id: str,
                     attempt: Annotated[int | None, Query(ge=1, le=1_000_000)] = None) -> Response:
    """``log`` events with new text of the attempt (the latest unless ``attempt`` is given), ``end`` when it
    finished."""
    from capstan.pipelines.logs import pick_attempt

    run = await run_in_threadpool(_readable_run, request, run_id)
    runner = _runner(request)
    record = await run_in_threadpool(pick_attempt, runner, run.id, step_id, attempt)
    return EventStream(log_events(runner, record))
