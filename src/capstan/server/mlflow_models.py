"""MLflow 3 logged-model endpoints (``/api/2.0/mlflow/logged-models...``) and ``/api/3.0/mlflow/server-info``.

``mlflow.<flavor>.log_model`` creates a logged model (PENDING), uploads its files through the proxied artifact
endpoints to ``mlflow-artifacts:/<experiment>/models/<model id>/artifacts``, records it as a run output
(``runs/outputs``) and finalizes it (READY, or FAILED when the upload broke).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.server.mlflow_artifacts import list_files
from capstan.server.mlflow_common import Call, drop_none, proxied_path, render_pairs
from capstan.server.mlflow_routing import Route
from capstan.server.mlflow_tracking import render_metric
from capstan.tracking.records import LoggedModel
from capstan.tracking.search_filter import DatasetFilter, LoggedModelOrder

# LoggedModelStatus proto names (in proto order, so a numeric enum maps by position) and the store's names.
STATUS_NAMES = ("LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED")
_TO_STORE = {"LOGGED_MODEL_PENDING": "PENDING", "LOGGED_MODEL_READY": "READY",
             "LOGGED_MODEL_UPLOAD_FAILED": "FAILED"}
_FROM_STORE = {"PENDING": "LOGGED_MODEL_PENDING", "READY": "LOGGED_MODEL_READY", "FAILED": "LOGGED_MODEL_UPLOAD_FAILED",
               "UPLOAD_FAILED": "LOGGED_MODEL_UPLOAD_FAILED"}
MAX_SEARCH_RESULTS = 1000


def render_logged_model(model: LoggedModel) -> dict[str, Any]:
    """A LoggedModel message (``info`` + ``data``)."""
    status = model.status.upper()
    info = drop_none({
        "model_id": model.model_id,
        "experiment_id": model.experiment_id,
        "name": model.name,
        "creation_timestamp_ms": model.creation_timestamp,
        "last_updated_timestamp_ms": model.last_updated_timestamp,
        "artifact_uri": model.artifact_location,
        "status": _FROM_STORE.get(status, status),
        "model_type": model.model_type,
        "source_run_id": model.source_run_id,
        "status_message": model.status_message,
        "tags": render_pairs(model.tags),
    })
    return {"info": info, "data": {"params": render_pairs(model.params),
                                   "metrics": [render_metric(metric) for metric in model.metrics]}}


def _model_id(call: Call) -> str:
    return call.path.get("model_id") or call.fields.string("model_id", required=True)


def create_logged_model(call: Call) -> Mapping[str, Any]:
    """POST logged-models: a new PENDING logged model in an experiment."""
    fields = call.fields
    experiment_id = fields.string("experiment_id", required=True)
    params = fields.key_values("params")
    tags = fields.key_values("tags")
    name = fields.optional_string("name")
    source_run_id = fields.optional_string("source_run_id")
    model_type = fields.string("model_type")
    project = call.authorize_experiment(experiment_id, "write")
    if source_run_id is not None and call.run_project(source_run_id) != project:
        raise InvalidParameterValue(
            f"Invalid value for parameter 'source_run_id': run '{source_run_id}' is not in the project of "
            f"experiment '{experiment_id}'")
    model = call.tracking.create_logged_model(experiment_id, name=name, source_run_id=source_run_id,
                                              model_type=model_type, params=params, tags=tags)
    call.owners.remember(call.owners.models, model.model_id, project)
    return {"model": render_logged_model(model)}


def get_logged_model(call: Call) -> Mapping[str, Any]:
    """GET logged-models/{model_id}."""
    model = call.tracking.get_logged_model(_model_id(call))
    project = call.experiment_project(model.experiment_id)
    call.require("read", project, f"logged-model/{model.model_id}")
    call.owners.remember(call.owners.models, model.model_id, project)
    return {"model": render_logged_model(model)}


def finalize_logged_model(call: Call) -> Mapping[str, Any]:
    """PATCH logged-models/{model_id}: set the final status (READY or UPLOAD_FAILED)."""
    model_id = _model_id(call)
    status = call.fields.enum("status", STATUS_NAMES)
    if status is None:
        raise InvalidParameterValue("Missing value for required parameter 'status'.")
    call.authorize_logged_model(model_id, "write")
    model = call.tracking.finalize_logged_model(model_id, _TO_STORE[status])
    return {"model": render_logged_model(model)}


def delete_logged_model(call: Call) -> Mapping[str, Any]:
    """DELETE logged-models/{model_id}."""
    model_id = _model_id(call)
    call.authorize_logged_model(model_id, "write")
    call.tracking.delete_logged_model(model_id)
    return {}


def set_logged_model_tags(call: Call) -> Mapping[str, Any]:
    """PATCH logged-models/{model_id}/tags."""
    model_id = _model_id(call)
    tags = call.fields.key_values("tags")
    call.authorize_logged_model(model_id, "write")
    call.tracking.set_logged_model_tags(model_id, tags)
    return {"model": render_logged_model(call.tracking.get_logged_model(model_id))}


def log_logged_model_params(call: Call) -> Mapping[str, Any]:
    """POST logged-models/{model_id}/params: the client sends params past the first 100 in batches."""
    model_id = _model_id(call)
    params = call.fields.key_values("params")
    call.authorize_logged_model(model_id, "write")
    call.tracking.log_logged_model_params(model_id, params)
    return {}


def delete_logged_model_tag(call: Call) -> Mapping[str, Any]:
    """DELETE logged-models/{model_id}/tags/{tag_key}."""
    model_id = _model_id(call)
    key = call.path.get("tag_key") or call.fields.string("tag_key", required=True)
    call.authorize_logged_model(model_id, "write")
    call.tracking.delete_logged_model_tag(model_id, key)
    return {}


def search_logged_models(call: Call) -> Mapping[str, Any]:
    """POST logged-models/search over the named experiments (read access to each is required)."""
    fields = call.fields
    experiment_ids = fields.strings("experiment_ids")
    max_results = fields.integer("max_results", default=100, minimum=1, maximum=MAX_SEARCH_RESULTS) or 100
    order_by = [LoggedModelOrder(item.string("field_name", required=True), item.boolean("ascending", default=True),
                                 item.string("dataset_name"), item.string("dataset_digest"))
                for item in fields.objects("order_by")]
    datasets = [DatasetFilter(item.string("dataset_name", required=True), item.string("dataset_digest"))
                for item in fields.objects("datasets")]
    for experiment_id in dict.fromkeys(experiment_ids):
        call.authorize_experiment(experiment_id, "read")
    if not experiment_ids:
        return {"models": []}
    page = call.tracking.search_logged_models(experiment_ids, filter_string=fields.string("filter"),
                                              max_results=max_results, order_by=order_by, datasets=datasets,
                                              page_token=fields.optional_string("page_token"))
    result: dict[str, Any] = {"models": [render_logged_model(model) for model in page.items]}
    if page.next_page_token:
        result["next_page_token"] = page.next_page_token
    return result


def list_logged_model_artifacts(call: Call) -> Mapping[str, Any]:
    """GET logged-models/{model_id}/artifacts/directories: files directly below a folder of the model."""
    model = call.tracking.get_logged_model(_model_id(call))
    call.authorize_experiment(model.experiment_id, "read")
    root = proxied_path(model.artifact_location)
    if root is None:
        raise InvalidParameterValue(f"logged model '{model.model_id}' keeps its files outside this server "
                                    f"({model.artifact_location})")
    sub = call.fields.string("artifact_directory_path")
    return {"root_uri": model.artifact_location, "files": list_files(call, root, sub)}


def server_info(call: Call) -> Mapping[str, Any]:
    """GET /api/3.0/mlflow/server-info: how the server is set up (checked by the client before downloads).

    Multipart uploads/downloads are off: artifacts stream through single PUT/GET requests. Workspaces are on:
    an MLflow workspace (``MLFLOW_WORKSPACE``) selects the Capstan project a client acts in.
    """
    call.require("read", call.project)
    return {
        "store_type": "SqlStore",
        "workspaces_enabled": True,
        "trace_archival_enabled": False,
        "multipart_uploads_enabled": False,
        "multipart_downloads_enabled": False,
        "presigned_upload_run_id_supported": False,
        "presigned_upload_model_id_supported": False,
        "features_enabled": {"gateway": False},
    }


ROUTES = (
    Route("POST", "/logged-models", create_logged_model),
    Route("POST", "/logged-models/search", search_logged_models),
    Route("GET", "/logged-models/{model_id}", get_logged_model),
    Route("PATCH", "/logged-models/{model_id}", finalize_logged_model),
    Route("DELETE", "/logged-models/{model_id}", delete_logged_model),
    Route("PATCH", "/logged-models/{model_id}/tags", set_logged_model_tags),
    Route("POST", "/logged-models/{model_id}/params", log_logged_model_params),
    Route("DELETE", "/logged-models/{model_id}/tags/{tag_key:path}", delete_logged_model_tag),
    Route("GET", "/logged-models/{model_id}/artifacts/directories", list_logged_model_artifacts),
)

V3_ROUTES = (Route("GET", "/server-info", server_info),)
