"""Training jobs over HTTP; `router` is mounted under ``/api/v1`` (so ``POST /api/v1/jobs``).

Jobs belong to the request's project (``X-Capstan-Project``): the permission is checked there first (``write`` to
submit or cancel, ``read`` for the rest), and a job of another project answers 404 as if it did not exist. A submit
only validates the spec, refuses a gang the queue can never hold (with the queue's reason) and stores the job as
``Pending``; the job controller of the server's leader process runs it. Entry points and working directories name
files on the server's machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Body, Query, Request
from starlette.responses import Response

from capstan.errors import CapstanError, InvalidParameterValue, ResourceDoesNotExist
from capstan.server.security import request_project, require

if TYPE_CHECKING:
    from capstan.auth.policy import Permission
    from capstan.services import Services
    from capstan.training.ports import JobAttempt, JobRecord

router = APIRouter(prefix="/jobs", tags=["jobs"])

JOB_STATES = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Cancelled")
MAX_PAGE = 1000


def _render(payload: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]  # app.state is untyped


def _wake(request: Request) -> None:
    """Tell this process's job controller (when it runs here) to look at the store now."""
    controller = getattr(request.app.state, "jobs", None)
    if controller is not None:
        controller.wake()


def _job(request: Request, job_id: str, permission: Permission) -> JobRecord:
    """The job ``job_id`` of the request's project, once the caller holds ``permission`` there."""
    project = request_project(request)
    require(request, permission, project, target=f"job/{job_id}")
    record = _services(request).jobs.get(job_id)
    if record is None or record.project != project:
        raise ResourceDoesNotExist(f"job {job_id!r} does not exist in project {project!r}")
    return record


def _attempts(request: Request, record: JobRecord) -> list[JobAttempt]:
    return _services(request).jobs.attempts(record.id)


@router.post("", status_code=201, summary="Submit a training job")
def submit_job(request: Request, spec: Annotated[dict[str, Any], Body()]) -> Response:
    """Submit a job from its spec (the fields of `capstan.training.spec.TrainingJobSpec`, as JSON): 201 with the
    ``Pending`` job. A bad field answers 400 naming it (``job.workers``); a gang that can never fit the queue, 400
    with the queue's reason."""
    from capstan.training.job_views import job_json
    from capstan.training.spec import parse_job_spec

    project = request_project(request)
    principal = require(request, "write", project, target=f"job/{spec.get('name', '')}")
    parsed = parse_job_spec(spec)
    record = _services(request).job_runner().submit(parsed, project=project, user=principal.name)
    _wake(request)
    return _render({"job": job_json(record)}, 201)


@router.get("", summary="List training jobs")
def list_jobs(request: Request,
              state: Annotated[list[str] | None, Query(description="only jobs in these states (repeatable)")] = None,
              max_results: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
              page_token: str | None = None) -> Response:
    """The project's jobs, newest first, optionally in some states; ``next_page_token`` asks for the next page."""
    from capstan.tracking.search_syntax import decode_page_token, encode_page_token
    from capstan.training.job_views import job_json

    project = request_project(request)
    require(request, "read", project)
    states = tuple(state or ())
    for name in states:
        if name not in JOB_STATES:
            raise InvalidParameterValue(f"state: must be one of {', '.join(JOB_STATES)}, got {name!r}")
    offset = decode_page_token(page_token)
    found = _services(request).jobs.list(project=project, states=states, limit=max_results + 1, offset=offset)
    page = found[:max_results]
    more = len(found) > max_results
    return _render({"jobs": [job_json(r) for r in page],
                    "next_page_token": encode_page_token(offset + max_results) if more else None})


@router.get("/{job_id}", summary="Show a training job")
def show_job(request: Request, job_id: str) -> Response:
    """The job (spec, state, reason, restarts, run id) and its attempts, first first."""
    from capstan.training.job_views import attempt_json, job_json

    record = _job(request, job_id, "read")
    return _render({"job": job_json(record), "attempts": [attempt_json(a) for a in _attempts(request, record)]})


@router.post("/{job_id}/cancel", summary="Cancel a training job")
def cancel_job(request: Request, job_id: str) -> Response:
    """Ask the job's runner to stop it (a pending job no runner holds is cancelled at once). Cancelling a job that
    has ended changes nothing."""
    from capstan.training.job_views import job_json

    record = _job(request, job_id, "write")
    changed = _services(request).jobs.request_cancel(record.id) or record
    _wake(request)
    return _render({"job": job_json(changed)})


@router.get("/{job_id}/logs", summary="Output of a worker of a training job")
def job_logs(request: Request, job_id: str,
             worker: Annotated[int, Query(ge=0, description="the worker (pod) index")] = 0,
             attempt: Annotated[int | None, Query(ge=1, description="the attempt (default: the latest)")] = None,
             rank: Annotated[int | None, Query(ge=0, description="only this rank of the worker")] = None,
             cursor: Annotated[str | None, Query(max_length=10_000,
                                                 description="X-Capstan-Log-Cursor of the last answer")] = None,
             prefix: Annotated[bool | None, Query(description="lead each line with its rank (default: when the "
                                                               "answer covers several ranks)")] = None,
             ) -> Response:
    """The captured stdout and stderr of one worker in one attempt, as text: each rank's standard output, then its
    standard error (lines led by ``[rank R]`` when the worker runs several processes, or as ``prefix`` says). To
    follow a log, pass the ``X-Capstan-Log-Cursor`` of each answer to the next request: only lines written since
    come back, and after a restart the next attempt's. ``X-Capstan-Attempt`` names the attempt (0 before the first
    one) and ``X-Capstan-Job-State`` the job's state: once it has ended, an answer holds everything that was left."""
    from capstan.training.job_logs import check_worker, read_since, render_lines

    record = _job(request, job_id, "read")
    check_worker(record.id, record.spec, worker, rank)
    read = read_since(_services(request).settings.home, record.id, worker=worker, attempt=attempt, rank=rank,
                      cursor=cursor, final=record.done)
    shown = render_lines(read.lines, prefix=read.ranks > 1 if prefix is None else prefix)
    return Response(shown, media_type="text/plain; charset=utf-8",
                    headers={"X-Capstan-Attempt": str(read.attempt), "X-Capstan-Log-Cursor": read.cursor,
                             "X-Capstan-Job-State": record.state})


@router.get("/{job_id}/why", summary="Why a training job is in its state")
def why_job(request: Request, job_id: str) -> Response:
    """What ``capstan why JOB`` prints, as JSON: state, reason, message, restarts, every attempt with how it ended
    (``WorkerFailed`` with rank and exit code, ``OOMKilled``, ``Preempted``, ``NodeLost``) and, while the job is
    pending, the queue's explanation of its workload, or in Kueue mode what Kueue said (``kueue``). ``text`` is the
    same rendered for one screen."""
    from capstan.training.job_views import attempt_json, explain_job, job_json

    record = _job(request, job_id, "read")
    queue, queue_text = _queue_why(request, record)
    kueue = None
    if record.state == "Pending":  # Kueue mode: why Kueue keeps its Job suspended
        from capstan.troubleshoot.sources import recorded_kueue

        kueue = recorded_kueue(_services(request).events, "job", record.id)
    return _render(explain_job(job_json(record), [attempt_json(a) for a in _attempts(request, record)],
                               queue=queue, queue_text=queue_text,
                               kueue=kueue.to_dict() if kueue is not None else None))


def _queue_why(request: Request, record: JobRecord) -> tuple[dict[str, Any] | None, str | None]:
    """The queue's explanation of a pending job's workload (None when it has none or the queue lost it)."""
    if record.state != "Pending" or not record.workload:
        return None, None
    queue = getattr(request.app.state, "queue", None)
    if queue is None:
        return None, None
    try:
        with queue.session() as mgr:
            explanation = mgr.why(record.workload)
    except CapstanError:  # the workload has left the queue (the job is moving on): explain the job alone
        return None, None
    return explanation.to_dict(), explanation.render()
