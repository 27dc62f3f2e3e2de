"""Capstan's native REST API, mounted under ``/api/v1`` (OpenAPI document at ``/api/v1/openapi.json``).

This module serves experiments and runs and assembles `router` from the sub-routers: logged models and the model
registry (`capstan.server.api_v1_models`) and artifacts (`capstan.server.api_v1_artifacts`). `HttpBackend`
(`capstan.sdk.backends_http`) is its client. Bodies are described by `capstan.server.api_v1_schemas`;
responses are rendered with orjson. Errors are ``{"error_code", "message"}`` with the error's HTTP status.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from capstan.errors import InvalidParameterValue
from capstan.sdk import backends_wire as wire
from capstan.server import api_v1_artifacts, api_v1_models
from capstan.server.api_v1_common import (
    authorize_experiment,
    authorize_project,
    authorize_run,
    check_view_type,
    experiment_project,
    logged_model_project,
    no_content,
    render,
    run_project,
    services,
)
from capstan.server.api_v1_schemas import (
    MAX_HISTORY_PAGE,
    MAX_PAGE,
    ExperimentCreate,
    ExperimentCreated,
    ExperimentList,
    ExperimentOut,
    ExperimentUpdate,
    LogBatch,
    MetricHistory,
    MetricsBatch,
    RunCreate,
    RunInfoEnvelope,
    RunList,
    RunOut,
    RunOutputs,
    RunSearch,
    RunUpdate,
    TagValue,
)
from capstan.server.errors import NAMES_AN_OBJECT
from capstan.server.security import require
from capstan.tracking.records import RUN_STATUSES, Metric, Param, RunTag

experiments = APIRouter(prefix="/experiments", tags=["experiments"])
runs = APIRouter(tags=["runs"])


# -- experiments ----------------------------------------------------------------------------------------
@experiments.post("", response_model=ExperimentCreated, status_code=201, summary="Create an experiment")
def create_experiment(request: Request, body: ExperimentCreate) -> Response:
    """Create an experiment in the request's project (``X-Capstan-Project``)."""
    project, _ = authorize_project(request, "write")
    experiment_id = services(request).tracking.create_experiment(
        body.name, project=project, artifact_location=body.artifact_location, tags=body.tags)
    return render({"experiment_id": experiment_id}, 201)


@experiments.get("", response_model=ExperimentList, summary="List or search experiments")
def list_experiments(request: Request, name: str | None = None, filter: str = "",
                     view_type: str = "ACTIVE_ONLY", order_by: Annotated[list[str] | None, Query()] = None,
                     max_results: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
                     page_token: str | None = None) -> Response:
    """Experiments of the request's project. ``name`` looks one up by exact name (any lifecycle stage);
    ``filter`` takes MLflow syntax such as ``name LIKE 'fraud%'``."""
    project, _ = authorize_project(request, "read")
    tracking = services(request).tracking
    if name is not None:
        exp = tracking.get_experiment_by_name(name, project=project)
        return render({"experiments": [wire.experiment_to_json(exp)] if exp else [], "next_page_token": None})
    page = tracking.search_experiments(project=project, view_type=check_view_type(view_type),
                                       filter_string=filter, order_by=order_by or (), max_results=max_results,
                                       page_token=page_token)
    return render({"experiments": [wire.experiment_to_json(e) for e in page.items],
                   "next_page_token": page.next_page_token})


@experiments.get("/{experiment_id}", response_model=ExperimentOut, summary="Get an experiment")
def get_experiment(request: Request, experiment_id: str) -> Response:
    exp = services(request).tracking.get_experiment(experiment_id)
    require(request, "read", exp.project, target=f"experiment/{experiment_id}")
    return render(wire.experiment_to_json(exp))


@experiments.patch("/{experiment_id}", response_model=ExperimentOut, summary="Rename an experiment")
def update_experiment(request: Request, experiment_id: str, body: ExperimentUpdate) -> Response:
    authorize_experiment(request, experiment_id, "write")
    tracking = services(request).tracking
    tracking.rename_experiment(experiment_id, body.name)
    return render(wire.experiment_to_json(tracking.get_experiment(experiment_id)))


@experiments.delete("/{experiment_id}", status_code=204, response_class=Response,
                    summary="Delete an experiment (restorable)")
def delete_experiment(request: Request, experiment_id: str) -> Response:
    authorize_experiment(request, experiment_id, "write")
    services(request).tracking.delete_experiment(experiment_id)
    return no_content()


@experiments.post("/{experiment_id}/restore", status_code=204, response_class=Response,
                  summary="Restore a deleted experiment")
def restore_experiment(request: Request, experiment_id: str) -> Response:
    authorize_experiment(request, experiment_id, "write")
    services(request).tracking.restore_experiment(experiment_id)
    return no_content()


@experiments.put("/{experiment_id}/tags/{key:path}", status_code=204, response_class=Response,
                 summary="Set an experiment tag")
def set_experiment_tag(request: Request, experiment_id: str, key: str, body: TagValue) -> Response:
    authorize_experiment(request, experiment_id, "write")
    services(request).tracking.set_experiment_tag(experiment_id, key, body.value)
    return no_content()


@experiments.delete("/{experiment_id}/tags/{key:path}", status_code=204, response_class=Response,
                    summary="Delete an experiment tag")
def delete_experiment_tag(request: Request, experiment_id: str, key: str) -> Response:
    authorize_experiment(request, experiment_id, "write")
    services(request).tracking.delete_experiment_tag(experiment_id, key)
    return no_content()


# -- runs -----------------------------------------------------------------------------------------------
@runs.post("/runs", response_model=RunInfoEnvelope, status_code=201, responses=NAMES_AN_OBJECT,
           summary="Create a run")
def create_run(request: Request, body: RunCreate) -> Response:
    """Create a RUNNING run. Its ``user_id`` is the authenticated user (the body's value in single-user mode)."""
    principal = authorize_experiment(request, body.experiment_id, "write")
    # With authentication on, the run belongs to the caller whatever the body claims.
    user_id = (body.user_id or principal.name) if principal.single_user else principal.name
    info = services(request).tracking.create_run(
        body.experiment_id, user_id=user_id, start_time=body.start_time,
        run_name=body.run_name, tags=[RunTag(t.key, t.value) for t in body.tags], source=body.source,
        git_commit=body.git_commit)
    return render({"info": wire.run_info_to_json(info)}, 201)


@runs.post("/runs/search", response_model=RunList, responses=NAMES_AN_OBJECT, summary="Search runs")
def search_runs(request: Request, body: RunSearch) -> Response:
    """MLflow filter syntax (``metrics.acc > 0.9 AND params.model = 'rf'``) and ``order_by``
    (``["metrics.acc DESC"]``) over the given experiments."""
    for experiment_id in dict.fromkeys(body.experiment_ids):
        authorize_experiment(request, experiment_id, "read")
    page = services(request).tracking.search_runs(
        body.experiment_ids, filter_string=body.filter, view_type=check_view_type(body.view_type),
        max_results=body.max_results, order_by=body.order_by, page_token=body.page_token)
    return render({"runs": [wire.run_to_json(r) for r in page.items], "next_page_token": page.next_page_token})


@runs.post("/metrics/batch", status_code=204, response_class=Response, responses=NAMES_AN_OBJECT,
           summary="Log metric points of several runs at once")
def log_metrics_for_runs(request: Request, body: MetricsBatch) -> Response:
    """What the SDK's background metric writer sends: ``{"runs": {"<run id>": [metric, ...]}}``."""
    for run_id in body.runs:
        authorize_run(request, run_id, "write")
    batches = {run_id: [Metric(m.key, m.number(), m.timestamp, m.step) for m in points]
               for run_id, points in body.runs.items()}
    services(request).tracking.log_metrics_for_runs(batches)
    return no_content()


@runs.get("/runs/{run_id}", response_model=RunOut, summary="Get a run")
def get_run(request: Request, run_id: str) -> Response:
    run = services(request).tracking.get_run(run_id)
    require(request, "read", experiment_project(request, run.info.experiment_id), target=f"run/{run_id}")
    return render(wire.run_to_json(run))


@runs.patch("/runs/{run_id}", response_model=RunInfoEnvelope, summary="Update a run's status, end time or name")
def update_run(request: Request, run_id: str, body: RunUpdate) -> Response:
    if body.status is not None and body.status not in RUN_STATUSES:
        raise InvalidParameterValue(f"status: must be one of {', '.join(RUN_STATUSES)}, got {body.status!r}")
    authorize_run(request, run_id, "write")
    info = services(request).tracking.update_run(run_id, status=body.status, end_time=body.end_time,
                                                 run_name=body.run_name)
    return render({"info": wire.run_info_to_json(info)})


@runs.delete("/runs/{run_id}", status_code=204, response_class=Response, summary="Delete a run (restorable)")
def delete_run(request: Request, run_id: str) -> Response:
    authorize_run(request, run_id, "write")
    services(request).tracking.delete_run(run_id)
    return no_content()


@runs.post("/runs/{run_id}/restore", status_code=204, response_class=Response, summary="Restore a deleted run")
def restore_run(request: Request, run_id: str) -> Response:
    authorize_run(request, run_id, "write")
    services(request).tracking.restore_run(run_id)
    return no_content()


@runs.post("/runs/{run_id}/batch", status_code=204, response_class=Response,
           summary="Log metrics, params and tags atomically")
def log_batch(request: Request, run_id: str, body: LogBatch) -> Response:
    """Re-logging a param with a different value is rejected (400), as in MLflow."""
    authorize_run(request, run_id, "write")
    services(request).tracking.log_batch(
        run_id, metrics=[Metric(m.key, m.number(), m.timestamp, m.step) for m in body.metrics],
        params=[Param(p.key, p.value) for p in body.params], tags=[RunTag(t.key, t.value) for t in body.tags])
    return no_content()


@runs.get("/runs/{run_id}/metrics/{key:path}", response_model=MetricHistory, summary="Metric history")
def get_metric_history(request: Request, run_id: str, key: str,
                       max_results: Annotated[int | None, Query(ge=1, le=MAX_HISTORY_PAGE)] = None,
                       page_token: str | None = None) -> Response:
    """Every point of metric ``key`` ordered by step, then timestamp."""
    authorize_run(request, run_id, "read")
    page = services(request).tracking.get_metric_history(run_id, key, max_results=max_results,
                                                         page_token=page_token)
    return render({"metrics": [wire.metric_to_json(m) for m in page.items],
                   "next_page_token": page.next_page_token})


@runs.delete("/runs/{run_id}/tags/{key:path}", status_code=204, response_class=Response, summary="Delete a run tag")
def delete_tag(request: Request, run_id: str, key: str) -> Response:
    authorize_run(request, run_id, "write")
    services(request).tracking.delete_tag(run_id, key)
    return no_content()


@runs.post("/runs/{run_id}/outputs", status_code=204, response_class=Response,
           summary="Record logged models a run produced")
def log_outputs(request: Request, run_id: str, body: RunOutputs) -> Response:
    authorize_run(request, run_id, "write")
    project = run_project(request, run_id)
    for output in body.models:
        if logged_model_project(request, output.model_id) != project:
            raise InvalidParameterValue(f"models: logged model {output.model_id} belongs to another project")
    services(request).tracking.log_outputs(run_id, [(m.model_id, m.step) for m in body.models])
    return no_content()


router = APIRouter()
"""Everything under ``/api/v1`` (``create_app`` includes it with that prefix)."""
router.include_router(experiments)
router.include_router(runs)
router.include_router(api_v1_models.router)
router.include_router(api_v1_artifacts.router)
