"""MLflow model-registry endpoints (``/api/2.0/mlflow/registered-models/...``, ``model-versions/...``).

A registered model belongs to a project: new models go into the project named by ``X-Capstan-Project`` or
MLflow's workspace header (``default``), every other call is authorised against the model's own project, and
searches list only the request's project.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.registry.records import STAGES, ModelVersion, RegisteredModel
from capstan.server.mlflow_common import Call, Fields, drop_none, render_pairs
from capstan.server.mlflow_routing import Route
from capstan.server.model_sources import authorize_source, download_uri, record_version_on_logged_model

MAX_MODELS_PER_PAGE = 1000
MAX_VERSIONS_PER_PAGE = 200_000


def render_model_version(version: ModelVersion) -> dict[str, Any]:
    """A ModelVersion message (``version`` is a string on the wire)."""
    return drop_none({
        "name": version.name,
        "version": str(version.version),
        "creation_timestamp": version.creation_timestamp,
        "last_updated_timestamp": version.last_updated_timestamp,
        "user_id": version.user_id,
        "current_stage": version.current_stage,
        "description": version.description,
        "source": version.source,
        "run_id": version.run_id or None,
        "status": version.status,
        "status_message": version.status_message or None,
        "tags": render_pairs(version.tags),
        "run_link": version.run_link,
        "aliases": list(version.aliases),
        "model_id": version.model_id or None,
    })


def render_registered_model(model: RegisteredModel) -> dict[str, Any]:
    """A RegisteredModel message with its latest versions, tags and aliases."""
    return {
        "name": model.name,
        "creation_timestamp": model.creation_timestamp,
        "last_updated_timestamp": model.last_updated_timestamp,
        "description": model.description,
        "latest_versions": [render_model_version(v) for v in model.latest_versions],
        "tags": render_pairs(model.tags),
        "aliases": [{"alias": alias, "version": str(number)} for alias, number in model.aliases.items()],
    }


def _name(fields: Fields) -> str:
    return fields.string("name", required=True)


def _version(fields: Fields) -> int:
    number = fields.integer("version", required=True)
    if number is None or number < 1:
        raise InvalidParameterValue(f"Invalid value {number!r} for parameter '{fields.name('version')}' "
                                    "supplied: expected a version number such as 1")
    return number


# -- registered models ----------------------------------------------------------------------------------
def create_registered_model(call: Call) -> Mapping[str, Any]:
    """POST registered-models/create."""
    fields = call.fields
    name = _name(fields)
    tags = fields.key_values("tags")
    description = fields.string("description")
    project = call.project
    call.require("write", project, f"model/{name}")
    model = call.registry.create_registered_model(name, project=project, description=description, tags=tags)
    return {"registered_model": render_registered_model(model)}


def get_registered_model(call: Call) -> Mapping[str, Any]:
    """GET registered-models/get."""
    model = call.registry.get_registered_model(_name(call.fields))
    call.require("read", model.project, f"model/{model.name}")
    return {"registered_model": render_registered_model(model)}


def rename_registered_model(call: Call) -> Mapping[str, Any]:
    """POST registered-models/rename."""
    name = _name(call.fields)
    new_name = call.fields.string("new_name", required=True)
    call.authorize_registered_model(name, "write")
    model = call.registry.rename_registered_model(name, new_name)
    return {"registered_model": render_registered_model(model)}


def update_registered_model(call: Call) -> Mapping[str, Any]:
    """PATCH registered-models/update (description)."""
    name = _name(call.fields)
    description = call.fields.string("description")
    call.authorize_registered_model(name, "write")
    model = call.registry.update_registered_model(name, description=description)
    return {"registered_model": render_registered_model(model)}


def delete_registered_model(call: Call) -> Mapping[str, Any]:
    """DELETE registered-models/delete (the model and all its versions)."""
    name = _name(call.fields)
    call.authorize_registered_model(name, "write")
    call.registry.delete_registered_model(name)
    return {}


def split_prompt_clause(filter_string: str) -> tuple[str, bool]:
    """Remove the prompt clause MLflow's client appends to every registered-model search.

    The client adds ``AND tag.`mlflow.prompt.is_prompt` != 'true'`` (or ``= 'true'`` to list prompts). MLflow's
    server reads a model *without* that tag as "not a prompt", which a plain tag comparison cannot express, so
    the clause is taken out of the filter and applied to the results. Returns (filter, want_prompts).
    """
    match = _PROMPT_CLAUSE.search(filter_string)
    if match is None:
        return filter_string, False
    operator, value = match.group(1), match.group(2).lower()
    return filter_string[:match.start()].strip(), (operator == "=") == (value == "true")


_PROMPT_CLAUSE = re.compile(
    r"(?:^|\s+AND\s+)tags?\.`?mlflow\.prompt\.is_prompt`?\s*(!=|=)\s*'(true|false)'\s*$", re.IGNORECASE)
PROMPT_TAG = "mlflow.prompt.is_prompt"


def search_registered_models(call: Call) -> Mapping[str, Any]:
    """GET registered-models/search inside the request's project (prompts left out unless asked for)."""
    fields = call.fields
    max_results = fields.integer("max_results", default=100, minimum=1, maximum=MAX_MODELS_PER_PAGE) or 100
    filter_string, want_prompts = split_prompt_clause(fields.string("filter"))
    project = call.project
    call.require("read", project)
    page = call.registry.search_registered_models(
        filter_string=filter_string, max_results=max_results, order_by=fields.strings("order_by"),
        page_token=fields.optional_string("page_token"), project=project)
    models = [m for m in page.items if (m.tags.get(PROMPT_TAG, "").lower() == "true") == want_prompts]
    result: dict[str, Any] = {"registered_models": [render_registered_model(m) for m in models]}
    if page.next_page_token:
        result["next_page_token"] = page.next_page_token
    return result


def get_latest_versions(call: Call) -> Mapping[str, Any]:
    """POST or GET registered-models/get-latest-versions (newest version per stage)."""
    name = _name(call.fields)
    stages = call.fields.strings("stages")
    call.authorize_registered_model(name, "read")
    versions = call.registry.get_latest_versions(name, stages)
    return {"model_versions": [render_model_version(v) for v in versions]}


def set_registered_model_tag(call: Call) -> Mapping[str, Any]:
    """POST registered-models/set-tag."""
    fields = call.fields
    name = _name(fields)
    key = fields.string("key", required=True)
    value = fields.string("value")
    call.authorize_registered_model(name, "write")
    call.registry.set_registered_model_tag(name, key, value)
    return {}


def delete_registered_model_tag(call: Call) -> Mapping[str, Any]:
    """DELETE registered-models/delete-tag."""
    name = _name(call.fields)
    key = call.fields.string("key", required=True)
    call.authorize_registered_model(name, "write")
    call.registry.delete_registered_model_tag(name, key)
    return {}


def set_alias(call: Call) -> Mapping[str, Any]:
    """POST registered-models/alias: point an alias at a version."""
    fields = call.fields
    name = _name(fields)
    alias = fields.string("alias", required=True)
    version = _version(fields)
    call.authorize_registered_model(name, "write")
    call.registry.set_alias(name, alias, version)
    return {}


def delete_alias(call: Call) -> Mapping[str, Any]:
    """DELETE registered-models/alias."""
    name = _name(call.fields)
    alias = call.fields.string("alias", required=True)
    call.authorize_registered_model(name, "write")
    call.registry.delete_alias(name, alias)
    return {}


def get_version_by_alias(call: Call) -> Mapping[str, Any]:
    """GET registered-models/alias: the version an alias points at (``models:/NAME@ALIAS``)."""
    name = _name(call.fields)
    alias = call.fields.string("alias", required=True)
    call.authorize_registered_model(name, "read")
    return {"model_version": render_model_version(call.registry.get_version_by_alias(name, alias))}


# -- model versions ---------------------------------------------------------------------------------------
def create_model_version(call: Call) -> Mapping[str, Any]:
    """POST model-versions/create from a run's artifacts, a logged model or any storage URI."""
    fields = call.fields
    name = _name(fields)
    source = fields.string("source", required=True)
    run_id = fields.optional_string("run_id")
    model_id = fields.optional_string("model_id")
    tags = fields.key_values("tags")
    run_link = fields.string("run_link")
    description = fields.string("description")
    # The new version exposes its source's files, so the caller must be able to read them, in whatever project.
    authorize_source(call.request, source, run_id=run_id, model_id=model_id)
    call.authorize_registered_model(name, "write")
    version = call.registry.create_model_version(name, source=source, run_id=run_id, tags=tags, run_link=run_link,
                                                 description=description, model_id=model_id)
    record_version_on_logged_model(call.request.app.state.services, version)
    return {"model_version": render_model_version(version)}


def get_model_version(call: Call) -> Mapping[str, Any]:
    """GET model-versions/get."""
    name = _name(call.fields)
    version = _version(call.fields)
    call.authorize_registered_model(name, "read")
    return {"model_version": render_model_version(call.registry.get_model_version(name, version))}


def update_model_version(call: Call) -> Mapping[str, Any]:
    """PATCH model-versions/update (description)."""
    name = _name(call.fields)
    version = _version(call.fields)
    description = call.fields.string("description")
    call.authorize_registered_model(name, "write")
    updated = call.registry.update_model_version(name, version, description=description)
    return {"model_version": render_model_version(updated)}


def delete_model_version(call: Call) -> Mapping[str, Any]:
    """DELETE model-versions/delete."""
    name = _name(call.fields)
    version = _version(call.fields)
    call.authorize_registered_model(name, "write")
    call.registry.delete_model_version(name, version)
    return {}


def search_model_versions(call: Call) -> Mapping[str, Any]:
    """GET model-versions/search within the request's project."""
    fields = call.fields
    max_results = fields.integer("max_results", default=10_000, minimum=1,
                                 maximum=MAX_VERSIONS_PER_PAGE) or 10_000
    project = call.project
    call.require("read", project)
    page = call.registry.search_model_versions(
        filter_string=fields.string("filter"), max_results=max_results, order_by=fields.strings("order_by"),
        page_token=fields.optional_string("page_token"), project=project)
    result: dict[str, Any] = {"model_versions": [render_model_version(v) for v in page.items]}
    if page.next_page_token:
        result["next_page_token"] = page.next_page_token
    return result


def get_download_uri(call: Call) -> Mapping[str, Any]:
    """GET model-versions/get-download-uri: where the version's files are (read rights on the model and on the
    project that owns those files are both checked)."""
    name = _name(call.fields)
    version = _version(call.fields)
    call.authorize_registered_model(name, "read")
    return {"artifact_uri": download_uri(call.request, name, version)}


def transition_stage(call: Call) -> Mapping[str, Any]:
    """POST model-versions/transition-stage (legacy stages None/Staging/Production/Archived)."""
    fields = call.fields
    name = _name(fields)
    version = _version(fields)
    stage = fields.string("stage", required=True)
    canonical = {s.lower(): s for s in STAGES}.get(stage.lower())
    if canonical is None:
        raise InvalidParameterValue(f"Invalid value {stage!r} for parameter 'stage' supplied: expected one of "
                                    + ", ".join(STAGES))
    archive = fields.boolean("archive_existing_versions")
    call.authorize_registered_model(name, "write")
    updated = call.registry.transition_model_version_stage(name, version, canonical, archive)
    return {"model_version": render_model_version(updated)}


def set_model_version_tag(call: Call) -> Mapping[str, Any]:
    """POST model-versions/set-tag."""
    fields = call.fields
    name = _name(fields)
    version = _version(fields)
    key = fields.string("key", required=True)
    value = fields.string("value")
    call.authorize_registered_model(name, "write")
    call.registry.set_model_version_tag(name, version, key, value)
    return {}


def delete_model_version_tag(call: Call) -> Mapping[str, Any]:
    """DELETE model-versions/delete-tag."""
    name = _name(call.fields)
    version = _version(call.fields)
    key = call.fields.string("key", required=True)
    call.authorize_registered_model(name, "write")
    call.registry.delete_model_version_tag(name, version, key)
    return {}


ROUTES = (
    Route("POST", "/registered-models/create", create_registered_model),
    Route("GET", "/registered-models/get", get_registered_model),
    Route("POST", "/registered-models/rename", rename_registered_model),
    Route("PATCH", "/registered-models/update", update_registered_model),
    Route("DELETE", "/registered-models/delete", delete_registered_model),
    Route("GET", "/registered-models/search", search_registered_models),
    Route("POST", "/registered-models/get-latest-versions", get_latest_versions),
    Route("GET", "/registered-models/get-latest-versions", get_latest_versions),
    Route("POST", "/registered-models/set-tag", set_registered_model_tag),
    Route("DELETE", "/registered-models/delete-tag", delete_registered_model_tag),
    Route("POST", "/registered-models/alias", set_alias),
    Route("DELETE", "/registered-models/alias", delete_alias),
    Route("GET", "/registered-models/alias", get_version_by_alias),
    Route("POST", "/model-versions/create", create_model_version),
    Route("GET", "/model-versions/get", get_model_version),
    Route("PATCH", "/model-versions/update", update_model_version),
    Route("DELETE", "/model-versions/delete", delete_model_version),
    Route("GET", "/model-versions/search", search_model_versions),
    Route("GET", "/model-versions/get-download-uri", get_download_uri),
    Route("POST", "/model-versions/transition-stage", transition_stage),
    Route("POST", "/model-versions/set-tag", set_model_version_tag),
    Route("DELETE", "/model-versions/delete-tag", delete_model_version_tag),
)
