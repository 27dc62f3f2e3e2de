"""``/api/v1`` routes for MLflow 3 logged models and the model registry (models, versions, tags, aliases)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from capstan.errors import InvalidParameterValue
from capstan.sdk import backends_wire as wire
from capstan.server.api_v1_common import (
    authorize_experiment,
    authorize_logged_model,
    authorize_project,
    authorize_registered_model,
    authorize_run,
    experiment_project,
    no_content,
    render,
    run_project,
    services,
)
from capstan.server.api_v1_schemas import (
    MAX_MODELS_PAGE,
    MAX_VERSIONS_PAGE,
    AliasSet,
    LoggedModelCreate,
    LoggedModelList,
    LoggedModelOut,
    LoggedModelSearch,
    LoggedModelUpdate,
    ModelVersionCreate,
    ModelVersionList,
    ModelVersionOut,
    ModelVersionUpdate,
    RegisteredModelCreate,
    RegisteredModelList,
    RegisteredModelOut,
    RegisteredModelUpdate,
    TagValue,
    VersionPath,
)
from capstan.server.errors import NAMES_AN_OBJECT
from capstan.server.model_sources import authorize_source, record_version_on_logged_model
from capstan.server.security import require

logged_models = APIRouter(prefix="/logged-models", tags=["logged models"])
registry = APIRouter(tags=["model registry"])

LOGGED_MODEL_FINAL_STATUSES = ("READY", "FAILED")


# -- logged models --------------------------------------------------------------------------------------
@logged_models.post("", response_model=LoggedModelOut, status_code=201, responses=NAMES_AN_OBJECT,
                    summary="Create a logged model")
def create_logged_model(request: Request, body: LoggedModelCreate) -> Response:
    """A PENDING model with its own artifact folder ``<experiment location>/models/<model_id>/artifacts``;
    upload its files, then PATCH its status to READY."""
    authorize_experiment(request, body.experiment_id, "write")
    if body.source_run_id is not None:
        if run_project(request, body.source_run_id) != experiment_project(request, body.experiment_id):
            raise InvalidParameterValue("source_run_id: the run belongs to another project")
        authorize_run(request, body.source_run_id, "write")
    model = services(request).tracking.create_logged_model(
        body.experiment_id, name=body.name, source_run_id=body.source_run_id, model_type=body.model_type,
        params=body.params, tags=body.tags)
    return render(wire.logged_model_to_json(model), 201)


@logged_models.post("/search", response_model=LoggedModelList, responses=NAMES_AN_OBJECT,
                    summary="Search logged models")
def search_logged_models(request: Request, body: LoggedModelSearch) -> Response:
    for experiment_id in dict.fromkeys(body.experiment_ids):
        authorize_experiment(request, experiment_id, "read")
    page = services(request).tracking.search_logged_models(
        body.experiment_ids, filter_string=body.filter, max_results=body.max_results, page_token=body.page_token)
    return render({"models": [wire.logged_model_to_json(m) for m in page.items],
                   "next_page_token": page.next_page_token})


@logged_models.get("/{model_id}", response_model=LoggedModelOut, summary="Get a logged model")
def get_logged_model(request: Request, model_id: str) -> Response:
    authorize_logged_model(request, model_id, "read")
    return render(wire.logged_model_to_json(services(request).tracking.get_logged_model(model_id)))


@logged_models.patch("/{model_id}", response_model=LoggedModelOut, summary="Finalize a logged model")
def finalize_logged_model(request: Request, model_id: str, body: LoggedModelUpdate) -> Response:
    if body.status not in LOGGED_MODEL_FINAL_STATUSES:
        raise InvalidParameterValue(f"status: must be READY or FAILED, got {body.status!r}")
    authorize_logged_model(request, model_id, "write")
    return render(wire.logged_model_to_json(services(request).tracking.finalize_logged_model(model_id, body.status)))


# -- registered models ----------------------------------------------------------------------------------
@registry.post("/registered-models", response_model=RegisteredModelOut, status_code=201,
               summary="Create a registered model")
def create_registered_model(request: Request, body: RegisteredModelCreate) -> Response:
    project, _ = authorize_project(request, "write")
    model = services(request).registry.create_registered_model(body.name, project=project,
                                                               description=body.description, tags=body.tags)
    return render(wire.registered_model_to_json(model), 201)


@registry.get("/registered-models", response_model=RegisteredModelList, summary="Search registered models")
def search_registered_models(request: Request, filter: str = "",
                             order_by: Annotated[list[str] | None, Query()] = None,
                             max_results: Annotated[int, Query(ge=1, le=MAX_MODELS_PAGE)] = 100,
                             page_token: str | None = None) -> Response:
    """Registered models of the request's project; ``filter`` like ``name LIKE 'fraud%'``."""
    project, _ = authorize_project(request, "read")
    page = services(request).registry.search_registered_models(
        filter_string=filter, max_results=max_results, order_by=order_by or (), page_token=page_token,
        project=project)
    return render({"registered_models": [wire.registered_model_to_json(m) for m in page.items],
                   "next_page_token": page.next_page_token})


@registry.get("/registered-models/{name}", response_model=RegisteredModelOut, summary="Get a registered model")
def get_registered_model(request: Request, name: str) -> Response:
    model = services(request).registry.get_registered_model(name)
    require(request, "read", model.project, target=f"model/{name}")
    return render(wire.registered_model_to_json(model))


@registry.patch("/registered-models/{name}", response_model=RegisteredModelOut,
                summary="Rename a registered model or change its description")
def update_registered_model(request: Request, name: str, body: RegisteredModelUpdate) -> Response:
    if body.name is None and body.description is None:
        raise InvalidParameterValue("request body: give 'name' (a new name) and/or 'description'")
    authorize_registered_model(request, name, "write")
    store = services(request).registry
    model = None
    if body.description is not None:
        model = store.update_registered_model(name, description=body.description)
    if body.name is not None and body.name != name:
        model = store.rename_registered_model(name, body.name)
    return render(wire.registered_model_to_json(model or store.get_registered_model(name)))


@registry.delete("/registered-models/{name}", status_code=204, response_class=Response,
                 summary="Delete a registered model and its versions")
def delete_registered_model(request: Request, name: str) -> Response:
    authorize_registered_model(request, name, "write")
    services(request).registry.delete_registered_model(name)
    return no_content()


@registry.put("/registered-models/{name}/tags/{key:path}", status_code=204, response_class=Response,
              summary="Set a registered model tag")
def set_registered_model_tag(request: Request, name: str, key: str, body: TagValue) -> Response:
    authorize_registered_model(request, name, "write")
    services(request).registry.set_registered_model_tag(name, key, body.value)
    return no_content()


@registry.delete("/registered-models/{name}/tags/{key:path}", status_code=204, response_class=Response,
                 summary="Delete a registered model tag")
def delete_registered_model_tag(request: Request, name: str, key: str) -> Response:
    authorize_registered_model(request, name, "write")
    services(request).registry.delete_registered_model_tag(name, key)
    return no_content()


# -- versions -------------------------------------------------------------------------------------------
@registry.post("/registered-models/{name}/versions", response_model=ModelVersionOut, status_code=201,
               summary="Create a model version")
def create_model_version(request: Request, name: str, body: ModelVersionCreate) -> Response:
    """The next version of ``name`` from ``source``: ``models:/<logged model id>``, ``runs:/<run>/<path>`` or an
    ``mlflow-artifacts:`` URI. Lineage (run, logged model) is recorded."""
    # A version exposes its source's files to readers of the model, so the caller must be able to read them.
    authorize_source(request, body.source, run_id=body.run_id, model_id=body.model_id)
    principal = authorize_registered_model(request, name, "write")
    version = services(request).registry.create_model_version(
        name, source=body.source, run_id=body.run_id, tags=body.tags, description=body.description,
        model_id=body.model_id, user_id=principal.name)
    record_version_on_logged_model(services(request), version)
    return render(wire.model_version_to_json(version), 201)


@registry.get("/model-versions", response_model=ModelVersionList, summary="Search model versions")
def search_model_versions(request: Request, filter: str = "",
                          order_by: Annotated[list[str] | None, Query()] = None,
                          max_results: Annotated[int, Query(ge=1, le=MAX_VERSIONS_PAGE)] = 10_000,
                          page_token: str | None = None) -> Response:
    """Versions of the request project's models; ``filter`` like ``name = 'fraud' AND run_id = '...'``."""
    project, _ = authorize_project(request, "read")
    store = services(request).registry
    page = store.search_model_versions(filter_string=filter, max_results=max_results, order_by=order_by or (),
                                       page_token=page_token)
    projects: dict[str, str] = {}
    visible = []
    for version in page.items:
        if version.name not in projects:
            projects[version.name] = store.get_registered_model(version.name).project
        if projects[version.name] == project:
            visible.append(wire.model_version_to_json(version))
    return render({"model_versions": visible, "next_page_token": page.next_page_token})


@registry.get("/registered-models/{name}/versions/{version}", response_model=ModelVersionOut,
              summary="Get a model version")
def get_model_version(request: Request, name: str, version: VersionPath) -> Response:
    authorize_registered_model(request, name, "read")
    return render(wire.model_version_to_json(services(request).registry.get_model_version(name, version)))


@registry.patch("/registered-models/{name}/versions/{version}", response_model=ModelVersionOut,
                summary="Change a model version's description")
def update_model_version(request: Request, name: str, version: VersionPath, body: ModelVersionUpdate) -> Response:
    authorize_registered_model(request, name, "write")
    updated = services(request).registry.update_model_version(name, version, description=body.description)
    return render(wire.model_version_to_json(updated))


@registry.delete("/registered-models/{name}/versions/{version}", status_code=204, response_class=Response,
                 summary="Delete a model version")
def delete_model_version(request: Request, name: str, version: VersionPath) -> Response:
    authorize_registered_model(request, name, "write")
    services(request).registry.delete_model_version(name, version)
    return no_content()


@registry.put("/registered-models/{name}/versions/{version}/tags/{key:path}", status_code=204,
              response_class=Response, summary="Set a model version tag")
def set_model_version_tag(request: Request, name: str, version: VersionPath, key: str, body: TagValue) -> Response:
    authorize_registered_model(request, name, "write")
    services(request).registry.set_model_version_tag(name, version, key, body.value)
    return no_content()


@registry.delete("/registered-models/{name}/versions/{version}/tags/{key:path}", status_code=204,
                 response_class=Response, summary="Delete a model version tag")
def delete_model_version_tag(request: Request, name: str, version: VersionPath, key: str) -> Response:
    authorize_registered_model(request, name, "write")
    services(request).registry.delete_model_version_tag(name, version, key)
    return no_content()


# -- aliases --------------------------------------------------------------------------------------------
@registry.put("/registered-models/{name}/aliases/{alias}", status_code=204, response_class=Response,
              summary="Point an alias at a version")
def set_alias(request: Request, name: str, alias: str, body: AliasSet) -> Response:
    authorize_registered_model(request, name, "write")
    services(request).registry.set_alias(name, alias, body.version)
    return no_content()


@registry.delete("/registered-models/{name}/aliases/{alias}", status_code=204, response_class=Response,
                 summary="Delete an alias")
def delete_alias(request: Request, name: str, alias: str) -> Response:
    authorize_registered_model(request, name, "write")
    services(request).registry.delete_alias(name, alias)
    return no_content()


@registry.get("/registered-models/{name}/aliases/{alias}", response_model=ModelVersionOut,
              summary="The version an alias points at")
def get_version_by_alias(request: Request, name: str, alias: str) -> Response:
    authorize_registered_model(request, name, "read")
    return render(wire.model_version_to_json(services(request).registry.get_version_by_alias(name, alias)))


router = APIRouter()
router.include_router(logged_models)
router.include_router(registry)
