"""Pipeline runs and schedules over HTTP; `router` is mounted under ``/api/v1`` (so ``POST /api/v1/pipelines/runs``).

Handlers use the `capstan.pipelines.service.PipelineService` at ``request.app.state.pipelines``, which orchestrates
submitted and scheduled runs in the server process. Pipeline references name files on the server's machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from capstan.errors import InvalidParameterValue, StoreUnavailable
from capstan.server.security import request_project, require

if TYPE_CHECKING:
    from capstan.auth.policy import Permission
    from capstan.pipelines.service import PipelineService
    from capstan.pipelines.storage import RunRecord

# How long a request made right after start-up waits for the pipeline service to finish starting.
SERVICE_START_WAIT_S = 60.0

router = APIRouter(prefix="/pipelines", tags=["pipelines"])

RUN_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")


class RunSubmit(BaseModel):
    """A run to start: ``pipeline`` is ``FILE[:FUNC]`` (or ``module:func``) on the server."""

    model_config = ConfigDict(strict=True)  # a boolean is true or false, not 0.0

    pipeline: str = Field(min_length=1, max_length=4096)
    params: dict[str, Any] = Field(default_factory=dict)
    no_cache: bool = False


class ScheduleCreate(BaseModel):
    """A cron schedule of a pipeline."""

    model_config = ConfigDict(strict=True)  # a boolean is true or false, not 0.0

    name: str = Field(min_length=1, max_length=256)
    pipeline: str = Field(min_length=1, max_length=4096)
    cron: str = Field(min_length=1, max_length=256)
    params: dict[str, Any] = Field(default_factory=dict)
    catchup: bool = True


class Backfill(BaseModel):
    """Start the slots of a schedule between two ISO times (inclusive)."""

    model_config = ConfigDict(strict=True)  # a boolean is true or false, not 0.0

    start: str = Field(alias="from", min_length=1)
    end: str = Field(alias="to", min_length=1)


def _render(payload: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def _service(request: Request) -> PipelineService:
    ready = getattr(request.app.state, "pipelines_ready", None)
    if ready is not None and not ready.wait(SERVICE_START_WAIT_S):
        raise StoreUnavailable("the pipeline service is still starting; try again shortly")
    service = getattr(request.app.state, "pipelines", None)
    if service is None:
        raise StoreUnavailable("pipelines are not enabled on this server")
    return service  # type: ignore[no-any-return]  # app.state is untyped


def _run_of(request: Request, service: PipelineService, run_id: str, permission: Permission) -> RunRecord:
    full = service.runner.store.resolve_run_id(run_id)
    run = service.runner.store.get_run(full)
    require(request, permission, run.project, target=f"pipeline-run/{run.id}")
    return run


@router.post("/runs", status_code=201, summary="Start a pipeline run")
def submit_run(request: Request, body: RunSubmit) -> Response:
    """Validate the pipeline and its parameters, store the run and orchestrate it in the server."""
    project = request_project(request)
    require(request, "write", project)
    run = _service(request).create(body.pipeline, body.params, no_cache=body.no_cache, project=project)
    return _render({"run": run.to_json()}, 201)


@router.get("/runs", summary="List pipeline runs")
def list_runs(request: Request, status: Annotated[str | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Response:
    """Newest first, in the request's project."""
    project = request_project(request)
    require(request, "read", project)
    if status is not None and status not in RUN_STATUSES:
        raise InvalidParameterValue(f"status: must be one of {', '.join(RUN_STATUSES)}")
    runs = _service(request).runner.store.list_runs(status=status, project=project, limit=limit)
    return _render({"runs": [r.to_json() for r in runs]})


@router.get("/runs/{run_id}", summary="Show a pipeline run with its steps")
def show_run(request: Request, run_id: str) -> Response:
    """The run, its steps (DAG with states), attempts and lineage."""
    service = _service(request)
    run = _run_of(request, service, run_id, "read")
    store = service.runner.store
    deps = {n["id"]: n.get("deps", []) for n in run.graph.get("nodes", [])}
    steps = [{**s.to_json(), "needs": deps.get(s.step_id, [])} for s in store.steps(run.id, run.project)]
    attempts: dict[str, list[dict[str, Any]]] = {}
    for a in store.attempts(run.id):
        attempts.setdefault(a.step_id, []).append(a.to_json())
    for step in steps:
        step["attempts"] = attempts.get(step["step"], [])
    return _render({"run": run.to_json(), "steps": steps, "inputs": store.inputs(run.id)})


@router.post("/runs/{run_id}/cancel", summary="Cancel a pipeline run")
def cancel_run(request: Request, run_id: str) -> Response:
    """Stop running steps (terminate, then kill) and record the run as cancelled."""
    service = _service(request)
    run = _run_of(request, service, run_id, "write")
    return _render({"run": service.runner.cancel(run.id, wait_s=15).to_json()})


@router.post("/runs/{run_id}/retry", summary="Retry a failed pipeline run")
def retry_run(request: Request, run_id: str) -> Response:
    """Reset failed, skipped and cancelled steps and orchestrate the run again (successful steps are reused)."""
    service = _service(request)
    run = _run_of(request, service, run_id, "write")
    service.runner.prepare_retry(run.id)
    service.submit(run.id)
    return _render({"run": service.runner.store.get_run(run.id).to_json()})


@router.post("/runs/{run_id}/resume", summary="Resume an interrupted pipeline run")
def resume_run(request: Request, run_id: str) -> Response:
    """Continue a run whose orchestrator stopped."""
    service = _service(request)
    run = _run_of(request, service, run_id, "write")
    if run.status not in ("pending", "running"):
        raise InvalidParameterValue(f"run {run.id} has already {run.status}; retry it instead")
    if service.runner.orchestrator_alive(run):
        raise InvalidParameterValue(f"run {run.id} is being orchestrated by {run.orchestrator}")
    service.submit(run.id)
    return _render({"run": run.to_json()})


@router.get("/runs/{run_id}/steps/{step_id}/logs", summary="Output of a step attempt")
def step_logs(request: Request, run_id: str, step_id: str,
              attempt: Annotated[int | None, Query(ge=1)] = None) -> Response:
    """The captured stdout/stderr of one attempt (the latest unless ``attempt`` is given), as text."""
    from capstan.pipelines.logs import pick_attempt, read_log

    service = _service(request)
    run = _run_of(request, service, run_id, "read")
    record = pick_attempt(service.runner, run.id, step_id, attempt)
    return Response(read_log(service.runner, record), media_type="text/plain; charset=utf-8",
                    headers={"X-Capstan-Attempt": str(record.attempt)})


@router.get("/lineage/{key}", summary="Who produced and who consumed an output")
def lineage(request: Request, key: str) -> Response:
    """``key`` is an output digest or artifact path."""
    require(request, "read", request_project(request))
    return _render(_service(request).runner.store.artifact_lineage(key))


@router.get("/schedules", summary="List schedules")
def list_schedules(request: Request) -> Response:
    """Every schedule in the request's project."""
    project = request_project(request)
    require(request, "read", project)
    records = [s for s in _service(request).runner.store.schedules() if s.project == project]
    return _render({"schedules": [s.to_json() for s in records]})


@router.post("/schedules", status_code=201, summary="Create a schedule")
def create_schedule(request: Request, body: ScheduleCreate) -> Response:
    """Run a pipeline on a cron schedule (UTC) in this server."""
    from capstan.pipelines.schedules import create_schedule as create

    project = request_project(request)
    require(request, "write", project)
    record = create(_service(request).runner, body.name, body.pipeline, body.cron, body.params,
                    catchup=body.catchup, project=project)
    return _render({"schedule": record.to_json()}, 201)


@router.delete("/schedules/{name}", status_code=204, summary="Delete a schedule")
def delete_schedule(request: Request, name: str) -> Response:
    """Runs it started stay."""
    service = _service(request)
    record = service.runner.store.get_schedule(name)
    require(request, "write", record.project)
    service.runner.store.delete_schedule(name)
    return Response(status_code=204)


@router.post("/schedules/{name}/backfill", summary="Backfill a schedule")
def backfill(request: Request, name: str, body: Backfill) -> Response:
    """Start every not-yet-started slot between ``from`` and ``to``."""
    from capstan.pipelines.schedules import iso, parse_time

    service = _service(request)
    record = service.runner.store.get_schedule(name)
    require(request, "write", record.project)
    slots = service.scheduler.backfill(name, parse_time(body.start, field="from"), parse_time(body.end, field="to"))
    return _render({"slots": [{"slot": iso(s), "run_id": r} for s, r in slots]})
