"""Training jobs pages: ``/ui/jobs`` (a project's jobs, filtered by state, server pages) and ``/ui/jobs/ID`` (spec,
state, restarts, attempts with how each ended, per-worker logs followed live, cancel for editors).

Their JSON twins are the existing ``GET /api/v1/jobs`` and ``GET /api/v1/jobs/ID`` (the same store calls and
parameters; `capstan.ui.jobs_view`), so ``api`` adds no route. As there, the caller's project (``?project=``, else
``X-Capstan-Project``, else ``default``) is checked before a job is looked up, and a job of another project is a
404. The job page's script (``static/jobs.js``) reads the logs from ``GET /api/v1/jobs/ID/logs`` with its cursor,
and cancels through ``POST /api/v1/jobs/ID/cancel``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from capstan.server.security import require
from capstan.ui import jobs_view as jv
from capstan.ui.render import Crumb, page, render, services, ui_project

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/views", tags=["web UI views"])


@pages.get("/ui/jobs")
@page("jobs")
def jobs_list_page(request: Request) -> Response:
    """The project's training jobs, newest first (``?state=`` repeated filters them; ``page_token`` pages)."""
    project = ui_project(request)
    require(request, "read", project)
    params = request.query_params
    query = jv.parse_jobs_query(params.getlist("state"), params.get("max_results"), params.get("page_token"))
    listing = jv.jobs_page(services(request).jobs, project, query)
    return render(request, "jobs.html", title="Training jobs", area="jobs", crumbs=[Crumb("Jobs")],
                  listing=listing, project=project, states=jv.JOB_STATES,
                  suffix=jv.project_suffix(project))


@pages.get("/ui/jobs/{job_id}")
@page("jobs")
def job_page(request: Request, job_id: str) -> Response:
    """A training job: spec summary, state and reason, restarts, attempts, per-worker logs, links to its run and
    timeline; a Cancel button for editors while it may still change."""
    project = ui_project(request)
    require(request, "read", project, target=f"job/{job_id}")
    detail = jv.job_detail(services(request).jobs, project, job_id)
    suffix = jv.project_suffix(project)
    return render(request, "job.html", title=f"Job {job_id}", area="jobs",
                  crumbs=[Crumb("Jobs", f"/ui/jobs{suffix}"), Crumb(job_id)], detail=detail, job=detail.job,
                  spec=detail.job.spec, suffix=suffix)
