"""MLflow REST endpoints for experiments, runs and metrics (``/api/2.0/mlflow/experiments|runs|metrics/...``).

Authorisation: an experiment, and everything inside it, belongs to the experiment's project. New experiments go
into the project named by ``X-Capstan-Project`` or MLflow's workspace header (``default``); searching and lookups
by name act inside that project. ``runs/search`` names its experiments explicitly, so the caller must be allowed
to read every one of them (403 otherwise, rather than a silently shorter result).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.server.mlflow_common import (
    Call,
    Fields,
    drop_none,
    render_double,
    render_pairs,
)
from capstan.server.mlflow_routing import Route
from capstan.tracking.records import (
    RUN_STATUSES,
    VIEW_TYPES,
    DatasetInput,
    Experiment,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunTag,
)

# MLflow's own limits (mlflow/utils/validation.py); the store enforces the per-batch ones.
MAX_RUNS_PER_SEARCH = 50_000
MAX_EXPERIMENTS_PER_PAGE = 50_000


# -- rendering ------------------------------------------------------------------------------------------------
def render_experiment(experiment: Experiment) -> dict[str, Any]:
    """An Experiment message (its project is reported as MLflow's ``workspace``)."""
    return {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "artifact_location": experiment.artifact_location,
        "lifecycle_stage": experiment.lifecycle_stage,
        "last_update_time": experiment.last_update_time,
        "creation_time": experiment.creation_time,
        "tags": render_pairs(experiment.tags),
        "workspace": experiment.project,
    }


def render_metric(metric: Metric) -> dict[str, Any]:
    """A Metric message."""
    return {"key": metric.key, "value": render_double(metric.value), "timestamp": metric.timestamp,
            "step": metric.step}


def render_run_info(info: RunInfo) -> dict[str, Any]:
    """A RunInfo message (``run_uuid`` repeated for old clients)."""
    return drop_none({
        "run_id": info.run_id,
        "run_uuid": info.run_id,
        "run_name": info.run_name,
        "experiment_id": info.experiment_id,
        "user_id": info.user_id,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "artifact_uri": info.artifact_uri,
        "lifecycle_stage": info.lifecycle_stage,
    })


def render_dataset_input(item: DatasetInput) -> dict[str, Any]:
    """A DatasetInput message."""
    return {
        "tags": render_pairs(item.tags),
        "dataset": {"name": item.name, "digest": item.digest, "source_type": item.source_type,
                    "source": item.source, "schema": item.schema, "profile": item.profile},
    }


def render_run(run: Run) -> dict[str, Any]:
    """A Run message with data, inputs and outputs."""
    return {
        "info": render_run_info(run.info),
        "data": {
            "metrics": [render_metric(metric) for metric in run.data.metrics],
            "params": render_pairs(run.data.params),
            "tags": render_pairs(run.data.tags),
        },
        "inputs": {
            "dataset_inputs": [render_dataset_input(item) for item in run.inputs],
            "model_inputs": [{"model_id": model_id} for model_id in run.model_inputs],
        },
        "outputs": {"model_outputs": [{"model_id": out.model_id, "step": out.step} for out in run.outputs]},
    }


def _page(key: str, items: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
    return {key: items, "next_page_token": token} if token else {key: items}


# -- experiments --------------------------------------------------------------------------------------------
def create_experiment(call: Call) -> Mapping[str, Any]:
    """POST experiments/create."""
    fields = call.fields
    name = fields.string("name", required=True)
    location = fields.optional_string("artifact_location")
    if location is not None and location.startswith("mlflow-artifacts:"):
        raise InvalidParameterValue(
            "Invalid value for parameter 'artifact_location': mlflow-artifacts: locations are assigned by "
            "the server; leave it empty or use a storage URI such as s3://bucket/prefix")
    tags = fields.key_values("tags")
    project = call.project
    call.require("write", project, f"experiment/{name}")
    experiment_id = call.tracking.create_experiment(name, project=project, artifact_location=location,
                                                    tags=tags)
    call.owners.remember_experiment(experiment_id, project)
    return {"experiment_id": experiment_id}


def get_experiment(call: Call) -> Mapping[str, Any]:
    """GET experiments/get."""
    experiment = call.tracking.get_experiment(call.fields.string("experiment_id", required=True))
    call.require("read", experiment.project, f"experiment/{experiment.experiment_id}")
    return {"experiment": render_experiment(experiment)}


def get_experiment_by_name(call: Call) -> Mapping[str, Any]:
    """GET experiments/get-by-name (inside the request's project)."""
    name = call.fields.string("experiment_name", required=True)
    project = call.project
    call.require("read", project)
    experiment = call.tracking.get_experiment_by_name(name, project=project)
    if experiment is None:
        raise ResourceDoesNotExist(f"Could not find experiment with name '{name}'")
    return {"experiment": render_experiment(experiment)}


def search_experiments(call: Call) -> Mapping[str, Any]:
    """POST or GET experiments/search (inside the request's project)."""
    fields = call.fields
    max_results = fields.integer("max_results", default=1000, minimum=1, maximum=MAX_EXPERIMENTS_PER_PAGE)
    view_type = fields.enum("view_type", VIEW_TYPES, default="ACTIVE_ONLY")
    project = call.project
    call.require("read", project)
    page = call.tracking.search_experiments(
        project=project, view_type=view_type or "ACTIVE_ONLY", filter_string=fields.string("filter"),
        order_by=fields.strings("order_by"), max_results=max_results or 1000,
        page_token=fields.optional_string("page_token"))
    return _page("experiments", [render_experiment(e) for e in page.items], page.next_page_token)


def update_experiment(call: Call) -> Mapping[str, Any]:
    """POST experiments/update (rename)."""
    experiment_id = call.fields.string("experiment_id", required=True)
    new_name = call.fields.string("new_name", required=True)
    call.authorize_experiment(experiment_id, "write")
    call.tracking.rename_experiment(experiment_id, new_name)
    return {}


def delete_experiment(call: Call) -> Mapping[str, Any]:
    """POST experiments/delete (soft delete)."""
    experiment_id = call.fields.string("experiment_id", required=True)
    call.authorize_experiment(experiment_id, "write")
    call.tracking.delete_experiment(experiment_id)
    return {}


def restore_experiment(call: Call) -> Mapping[str, Any]:
    """POST experiments/restore."""
    experiment_id = call.fields.string("experiment_id", required=True)
    call.authorize_experiment(experiment_id, "write")
    call.tracking.restore_experiment(experiment_id)
    return {}


def set_experiment_tag(call: Call) -> Mapping[str, Any]:
    """POST experiments/set-experiment-tag."""
    fields = call.fields
    experiment_id = fields.string("experiment_id", required=True)
    key = fields.string("key", required=True)
    value = fields.string("value")
    call.authorize_experiment(experiment_id, "write")
    call.tracking.set_experiment_tag(experiment_id, key, value)
    return {}


def delete_experiment_tag(call: Call) -> Mapping[str, Any]:
    """POST experiments/delete-experiment-tag."""
    experiment_id = call.fields.string("experiment_id", required=True)
    key = call.fields.string("key", required=True)
    call.authorize_experiment(experiment_id, "write")
    call.tracking.delete_experiment_tag(experiment_id, key)
    return {}


# -- runs -----------------------------------------------------------------------------------------------
def _run_id(fields: Fields) -> str:
    return fields.string("run_id", "run_uuid", required=True)


def create_run(call: Call) -> Mapping[str, Any]:
    """POST runs/create."""
    fields = call.fields
    # MLflow clients send "0" (the "Default" experiment, in the default project) when none is set.
    experiment_id = fields.string("experiment_id", default="0") or "0"
    tags = [RunTag(key, value) for key, value in fields.key_values("tags").items()]
    start_time = fields.integer("start_time")
    run_name = fields.optional_string("run_name")
    user_id = fields.string("user_id")
    project = call.authorize_experiment(experiment_id, "write")
    info = call.tracking.create_run(experiment_id, user_id=user_id, start_time=start_time, run_name=run_name,
                                    tags=tags, source=_tag(tags, "mlflow.source.name"),
                                    git_commit=_tag(tags, "mlflow.source.git.commit"))
    call.owners.remember(call.owners.runs, info.run_id, project)
    # Render from what we know instead of re-reading the run: a new run has no metrics or params yet.
    run_tags = {tag.key: tag.value for tag in tags}
    run_tags.setdefault("mlflow.runName", info.run_name)
    return {"run": render_run(Run(info, RunData(tags=run_tags)))}


def _tag(tags: Sequence[RunTag], key: str) -> str:
    for tag in tags:
        if tag.key == key:
            return tag.value
    return ""


def get_run(call: Call) -> Mapping[str, Any]:
    """GET runs/get."""
    run = call.tracking.get_run(_run_id(call.fields))
    project = call.experiment_project(run.info.experiment_id)
    call.require("read", project, f"run/{run.info.run_id}")
    call.owners.remember(call.owners.runs, run.info.run_id, project)
    return {"run": render_run(run)}


def update_run(call: Call) -> Mapping[str, Any]:
    """POST runs/update: status, end time, name."""
    fields = call.fields
    run_id = _run_id(fields)
    status = fields.enum("status", RUN_STATUSES)
    end_time = fields.integer("end_time")
    run_name = fields.optional_string("run_name")
    call.authorize_run(run_id, "write")
    info = call.tracking.update_run(run_id, status=status, end_time=end_time, run_name=run_name)
    return {"run_info": render_run_info(info)}


def delete_run(call: Call) -> Mapping[str, Any]:
    """POST runs/delete (soft delete)."""
    run_id = _run_id(call.fields)
    call.authorize_run(run_id, "write")
    call.tracking.delete_run(run_id)
    return {}


def restore_run(call: Call) -> Mapping[str, Any]:
    """POST runs/restore."""
    run_id = _run_id(call.fields)
    call.authorize_run(run_id, "write")
    call.tracking.restore_run(run_id)
    return {}


def _fast_metric(data: Mapping[str, Any]) -> Metric | None:
    """The metric point if ``data`` has exactly the types MLflow's client sends, else ``None``."""
    key, value, timestamp, step = data.get("key"), data.get("value"), data.get("timestamp"), data.get("step", 0)
    if (type(key) is str and key and type(timestamp) is int and type(step) is int
            and (type(value) is float or type(value) is int)):
        return Metric(key, float(value), timestamp, step)
    return None


def _metric(fields: Fields) -> Metric:
    """One metric point; anything but the plain types is validated field by field, errors naming the field."""
    fast = _fast_metric(fields.data)
    if fast is not None:
        return fast
    return Metric(
        key=fields.string("key", required=True),
        value=fields.number("value"),
        timestamp=fields.integer("timestamp", required=True) or 0,
        step=fields.integer("step", default=0) or 0,
    )


def _metrics(fields: Fields) -> list[Metric]:
    """The ``metrics`` of a log-batch request (hot: up to 1000 points, so plain items skip `Fields`)."""
    raw = fields.data.get("metrics")
    if isinstance(raw, list):
        out = []
        for item in raw:
            fast = _fast_metric(item) if type(item) is dict else None
            if fast is None:
                return [_metric(item) for item in fields.objects("metrics")]
            out.append(fast)
        return out
    return [_metric(item) for item in fields.objects("metrics")]


def _single(prefix: str, write: Callable[[], None]) -> None:
    """Run a one-item batch write, naming fields as the single-item request does (``key``, not
    ``metrics[0].key``)."""
    try:
        write()
    except InvalidParameterValue as exc:
        if exc.message.startswith(prefix):
            raise InvalidParameterValue(exc.message[len(prefix):]) from None
        raise


def log_metric(call: Call) -> Mapping[str, Any]:
    """POST runs/log-metric."""
    run_id = _run_id(call.fields)
    metric = _metric(call.fields)
    call.authorize_run(run_id, "write")
    _single("metrics[0].", lambda: call.tracking.log_batch(run_id, metrics=[metric]))
    _link_to_logged_models(call, run_id, [(call.fields, metric)])
    return {}


def _link_to_logged_models(call: Call, run_id: str, items: Sequence[tuple[Fields, Metric]]) -> None:
    """Points sent with a ``model_id`` (MLflow 3) also become metrics of that logged model, which the caller
    must be allowed to write."""
    points = []
    for fields, metric in items:
        model_id = fields.optional_string("model_id")
        if model_id is not None:
            points.append((model_id, metric, fields.string("dataset_name"), fields.string("dataset_digest")))
    for model_id in dict.fromkeys(point[0] for point in points):
        call.authorize_logged_model(model_id, "write")
    if points:
        call.tracking.log_logged_model_metrics(run_id, points)


def log_param(call: Call) -> Mapping[str, Any]:
    """POST runs/log-parameter."""
    fields = call.fields
    run_id = _run_id(fields)
    param = Param(fields.string("key", required=True), fields.string("value"))
    call.authorize_run(run_id, "write")
    _single("params[0].", lambda: call.tracking.log_batch(run_id, params=[param]))
    return {}


def set_tag(call: Call) -> Mapping[str, Any]:
    """POST runs/set-tag."""
    fields = call.fields
    run_id = _run_id(fields)
    tag = RunTag(fields.string("key", required=True), fields.string("value"))
    call.authorize_run(run_id, "write")
    _single("tags[0].", lambda: call.tracking.log_batch(run_id, tags=[tag]))
    return {}


def delete_tag(call: Call) -> Mapping[str, Any]:
    """POST runs/delete-tag."""
    run_id = _run_id(call.fields)
    key = call.fields.string("key", required=True)
    call.authorize_run(run_id, "write")
    call.tracking.delete_tag(run_id, key)
    return {}


def log_batch(call: Call) -> Mapping[str, Any]:
    """POST runs/log-batch: metrics, params and tags in one atomic write (MLflow's limits: 1000 metrics,
    100 params, 100 tags, 1000 items in all; checked by the store)."""
    fields = call.fields
    run_id = _run_id(fields)
    metrics = _metrics(fields)
    params = [Param(item.string("key", required=True), item.string("value")) for item in fields.objects("params")]
    tags = [RunTag(item.string("key", required=True), item.string("value")) for item in fields.objects("tags")]
    call.authorize_run(run_id, "write")
    if metrics or params or tags:
        call.tracking.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    raw = fields.data.get("metrics")
    if isinstance(raw, list) and any(type(item) is dict and item.get("model_id") for item in raw):
        _link_to_logged_models(call, run_id, list(zip(fields.objects("metrics"), metrics, strict=True)))
    return {}


def log_inputs(call: Call) -> Mapping[str, Any]:
    """POST runs/log-inputs: datasets and logged models a run consumed."""
    fields = call.fields
    run_id = _run_id(fields)
    datasets = []
    for item in fields.objects("datasets"):
        dataset = item.object("dataset")
        datasets.append(DatasetInput(
            name=dataset.string("name", required=True), digest=dataset.string("digest", required=True),
            source_type=dataset.string("source_type"), source=dataset.string("source"),
            schema=dataset.string("schema"), profile=dataset.string("profile"),
            tags=item.key_values("tags")))
    model_ids = [item.string("model_id", required=True) for item in fields.objects("models")]
    call.authorize_run(run_id, "write")
    call.tracking.log_inputs(run_id, datasets=datasets, model_ids=model_ids)
    return {}


def log_outputs(call: Call) -> Mapping[str, Any]:
    """POST runs/outputs: logged models a run produced (MLflow 3)."""
    fields = call.fields
    run_id = _run_id(fields)
    outputs = [(item.string("model_id", required=True), item.integer("step", default=0) or 0)
               for item in fields.objects("models")]
    project = call.authorize_run(run_id, "write")
    for model_id, _step in outputs:  # as /api/v1: a run's outputs stay inside its project
        if call.experiment_project(call.tracking.get_logged_model(model_id).experiment_id) != project:
            raise InvalidParameterValue(f"Invalid value for parameter 'models': logged model {model_id} "
                                        "belongs to another project")
    call.tracking.log_outputs(run_id, outputs)
    return {}


def search_runs(call: Call) -> Mapping[str, Any]:
    """POST runs/search: filter string, order_by, pagination over the named experiments."""
    fields = call.fields
    view_type = fields.enum("run_view_type", VIEW_TYPES, default="ACTIVE_ONLY") or "ACTIVE_ONLY"
    max_results = fields.integer("max_results", default=1000, minimum=1, maximum=MAX_RUNS_PER_SEARCH) or 1000
    experiment_ids = fields.strings("experiment_ids")
    for experiment_id in dict.fromkeys(experiment_ids):
        call.authorize_experiment(experiment_id, "read")
    if not experiment_ids:
        return {"runs": []}
    page = call.tracking.search_runs(
        experiment_ids, filter_string=fields.string("filter"), view_type=view_type, max_results=max_results,
        order_by=fields.strings("order_by"), page_token=fields.optional_string("page_token"))
    return _page("runs", [render_run(run) for run in page.items], page.next_page_token)


def get_metric_history(call: Call) -> Mapping[str, Any]:
    """GET metrics/get-history: every point of one metric of one run."""
    fields = call.fields
    run_id = _run_id(fields)
    key = fields.string("metric_key", required=True)
    max_results = fields.integer("max_results", minimum=1)
    call.authorize_run(run_id, "read")
    page = call.tracking.get_metric_history(run_id, key, max_results=max_results,
                                            page_token=fields.optional_string("page_token"))
    return _page("metrics", [render_metric(metric) for metric in page.items], page.next_page_token)


ROUTES = (
    Route("POST", "/experiments/create", create_experiment),
    Route("GET", "/experiments/get", get_experiment),
    Route("GET", "/experiments/get-by-name", get_experiment_by_name),
    Route("POST", "/experiments/search", search_experiments),
    Route("GET", "/experiments/search", search_experiments),
    Route("POST", "/experiments/update", update_experiment),
    Route("POST", "/experiments/delete", delete_experiment),
    Route("POST", "/experiments/restore", restore_experiment),
    Route("POST", "/experiments/set-experiment-tag", set_experiment_tag),
    Route("POST", "/experiments/delete-experiment-tag", delete_experiment_tag),
    Route("POST", "/runs/create", create_run),
    Route("GET", "/runs/get", get_run),
    Route("POST", "/runs/update", update_run),
    Route("POST", "/runs/delete", delete_run),
    Route("POST", "/runs/restore", restore_run),
    Route("POST", "/runs/log-metric", log_metric),
    Route("POST", "/runs/log-parameter", log_param),
    Route("POST", "/runs/set-tag", set_tag),
    Route("POST", "/runs/delete-tag", delete_tag),
    Route("POST", "/runs/log-batch", log_batch),
    Route("POST", "/runs/log-inputs", log_inputs),
    Route("POST", "/runs/outputs", log_outputs),
    Route("POST", "/runs/search", search_runs),
    Route("GET", "/metrics/get-history", get_metric_history),
)
