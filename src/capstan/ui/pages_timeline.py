"""The workload timeline page, ``/ui/timeline/KIND/ID``: for any run, pipeline run, step, training job, study
trial, queue workload or deployment, the diagnosis at the top, then state changes, events, queue decisions,
attempts, restarts and log excerpts on one time axis (SVG, laid out on the server by `capstan.ui.timeline_view`)
and in time order below, resource peaks as bars against their limits, the log tail and links to related
workloads' timelines.

Its JSON twin is the existing ``GET /api/v1/timeline/KIND/ID`` (the same reader, scope and query parameters
``tail`` and ``limit``). As there, the caller's project (``?project=``, else ``X-Capstan-Project``, else
``default``) is checked before anything is looked up, and a workload of another project answers 404 as if it did
not exist; an unknown kind or a malformed id is a 400 page naming it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from capstan.server.security import require
from capstan.troubleshoot.timeline import MAX_ITEMS
from capstan.ui import timeline_view as tv
from capstan.ui.render import NAV, Crumb, page, render, services, ui_project

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/views", tags=["web UI views"])

DEFAULT_TAIL = 40
MAX_TAIL = 1000
MAX_LIMIT = 5000
FAILED_CAUSES = frozenset({"OOMKilled", "CUDAOutOfMemory", "ImportError", "NonZeroExit", "Error", "Unschedulable",
                           "Timeout", "UpstreamFailed"})
"""Diagnoses drawn as failures; ``Preempted``, ``Pending`` and ``Cancelled`` are warnings, the rest neutral."""


def tone(cause: str) -> str:
    """The colour class of a diagnosis box: ``bad``, ``warn``, ``good`` or ``info``."""
    if cause in FAILED_CAUSES:
        return "bad"
    if cause in ("Preempted", "Pending", "Cancelled"):
        return "warn"
    if cause in ("Succeeded", "Pruned"):
        return "good"
    return "info"


@pages.get("/ui/timeline/{kind}/{ident:path}")
@page("jobs")
def timeline_page(request: Request, kind: str, ident: str) -> Response:
    """A workload's timeline and diagnosis (``?tail=`` log lines, ``?limit=`` items, as the twin takes them)."""
    from capstan.troubleshoot.reader import parse_ref
    from capstan.troubleshoot.sources import Scope

    project = ui_project(request)
    require(request, "read", project, target=f"{kind}/{ident}")
    params = request.query_params
    tail = tv.check_range(params.get("tail"), "tail", default=DEFAULT_TAIL, low=0, high=MAX_TAIL)
    limit = tv.check_range(params.get("limit"), "limit", default=MAX_ITEMS, low=1, high=MAX_LIMIT)
    name, ident = parse_ref(f"{kind}/{ident}")
    scope = Scope(project=project, only_project=project, tail=tail, limit=limit)
    found = services(request).timelines().timeline(name, ident, scope)
    own_page = tv.object_page(found.kind, found.id, project)
    area = _area(found.kind)
    nav = next(item for item in NAV if item.area == area)
    crumbs = [Crumb(nav.label, nav.href), Crumb(f"{found.kind}/{found.id}", own_page), Crumb("Timeline")]
    return render(request, "timeline.html", title=f"Timeline of {found.kind}/{found.id}", area=area,
                  crumbs=crumbs, timeline=found, diagnosis=found.diagnosis, chart=tv.chart(found),
                  peaks=tv.peak_bars(found.peaks), related=tv.related_links(found.related, project),
                  own_page=own_page, tone=tone(found.diagnosis.cause.value), project=project)


def _area(kind: str) -> str:
    """The navigation entry the timeline of ``kind`` belongs under."""
    return {"run": "experiments", "pipeline-run": "pipelines", "step": "pipelines", "job": "jobs",
            "trial": "studies", "workload": "queues", "deployment": "deployments"}.get(kind, "jobs")
