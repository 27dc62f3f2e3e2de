"""Which project owns the files a model-version source (or any artifact-store path) points at, and the checks
that keep one project from reading another's files through a model version.

A registered model lives in one project, but its versions point at files that may belong to another: a run
(``runs:/<run>/<path>``), an experiment's artifact tree (``mlflow-artifacts:/<experiment>/...``), a logged model
(``models:/m-...`` or ``model_id``) or another registered model (``models:/<name>/<version>``,
``models:/<name>@<alias>``). Anyone who can read the version can read those files, so creating a version needs
read rights on every project its source and lineage belong to, and every route that reads files through a
version checks the owner of its storage location again (rights can change after the version was made).

`source_owners` is the one resolver; `authorize_source` and `authorize_store_path` apply it to a request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from capstan.artifacts.paths import experiment_segment, is_local_uri, path_from_uri, uri_scheme
from capstan.errors import InvalidParameterValue
from capstan.store.registry_checks import model_version_source

if TYPE_CHECKING:
    from starlette.requests import Request

    from capstan.auth.policy import Permission
    from capstan.registry.records import ModelVersion
    from capstan.services import Services

OwnerKind = Literal["run", "experiment", "logged_model", "registered_model"]
MODEL_VERSIONS_TAG = "mlflow.modelVersions"
_TARGET_PREFIX = {"run": "run", "experiment": "experiment", "logged_model": "logged-model",
                  "registered_model": "model"}


@dataclass(frozen=True, slots=True)
class SourceOwner:
    """An object whose files a source exposes: its kind, id (model name for registered models) and project."""

    kind: OwnerKind
    id: str
    project: str

    @property
    def target(self) -> str:
        """The audit-log target naming the object (``run/<id>``, ``experiment/<id>``, ``model/<name>``...)."""
        return f"{_TARGET_PREFIX[self.kind]}/{self.id}"


def _run_owner(services: Services, run_id: str) -> SourceOwner:
    experiment_id = services.tracking.get_run(run_id).info.experiment_id
    return SourceOwner("run", run_id, services.tracking.get_experiment(experiment_id).project)


def _logged_model_owner(services: Services, model_id: str) -> SourceOwner:
    experiment_id = services.tracking.get_logged_model(model_id).experiment_id
    return SourceOwner("logged_model", model_id, services.tracking.get_experiment(experiment_id).project)


def _experiment_owner(services: Services, path: str, field_name: str) -> SourceOwner:
    experiment_id = experiment_segment(path, field_name=field_name)
    return SourceOwner("experiment", experiment_id, services.tracking.get_experiment(experiment_id).project)


def _models_uri_owner(services: Services, source: str) -> SourceOwner:
    if source.startswith("models://"):
        raise InvalidParameterValue(f"Invalid model version source: '{source}'. Registered model sources must use "
                                    "the active model registry (models:/<name>/<version>)")
    parts = source[len("models:"):].lstrip("/").rstrip("/").split("/")
    if not parts[0] or len(parts) > 2:
        raise InvalidParameterValue(f"source: {source!r} is not a models:/<model_id>, models:/<name>/<version> or "
                                    "models:/<name>@<alias> URI")
    if len(parts) == 1 and "@" not in parts[0]:
        return _logged_model_owner(services, parts[0])
    name = parts[0].rpartition("@")[0] if len(parts) == 1 else parts[0]
    return SourceOwner("registered_model", name, services.registry.get_registered_model(name).project)


def source_owners(services: Services, source: str, *, run_id: str | None = None,
                  model_id: str | None = None, field_name: str = "source") -> tuple[SourceOwner, ...]:
    """Every object inside this server whose files ``source`` (plus the lineage ``run_id``/``model_id``) exposes,
    with the project each belongs to; empty for storage outside the server (``s3://...``).

    ``source`` may also be a version's storage location or any ``mlflow-artifacts:`` URI. Raises
    `InvalidParameterValue` for a malformed source and `ResourceDoesNotExist` when it names a missing object.
    """
    owners: list[SourceOwner] = []
    if run_id:
        owners.append(_run_owner(services, run_id))
    if model_id:
        owners.append(_logged_model_owner(services, model_id))
    scheme = uri_scheme(source)
    if scheme == "runs":
        source_run = source[len("runs:"):].lstrip("/").split("/", 1)[0]
        if not source_run:
            raise InvalidParameterValue(f"{field_name}: {source!r} is not a runs:/<run_id>/<path> URI")
        owners.append(_run_owner(services, source_run))
    elif scheme == "models":
        owners.append(_models_uri_owner(services, source))
    elif scheme == "mlflow-artifacts":
        path = path_from_uri(source, field_name=field_name)
        owners.append(_experiment_owner(services, path, field_name))
    return tuple(dict.fromkeys(owners))


def authorize_source(request: Request, source: str, *, run_id: str | None = None, model_id: str | None = None,
                     permission: Permission = "read") -> tuple[SourceOwner, ...]:
    """Require ``permission`` (read) on the project of everything ``source`` and its lineage expose; returns them.

    The source is first checked as a model-version source (no local paths, traversal or NUL)."""
    from capstan.server.security import require

    model_version_source(source)
    owners = source_owners(request.app.state.services, source, run_id=run_id, model_id=model_id)
    for owner in owners:
        require(request, permission, owner.project, target=owner.target)
    return owners


def authorize_store_path(request: Request, path: str, permission: Permission) -> str:
    """Require ``permission`` on the project of the experiment whose folder the store path ``path`` is in."""
    from capstan.server.security import require

    owner = _experiment_owner(request.app.state.services, path, "path")
    require(request, permission, owner.project, target=owner.target)
    return owner.project


def download_uri(request: Request, name: str, version: int) -> str:
    """A version's storage location for ``get-download-uri``, after re-checking read rights on its owner.

    Local paths are never handed out (older versions may still hold one)."""
    uri = str(request.app.state.services.registry.get_download_uri(name, version))
    if is_local_uri(uri):
        raise InvalidParameterValue(f"Model Version (name={name}, version={version}) has the local source "
                                    f"{uri!r}, which this server does not hand out; register the model again "
                                    "from a run or logged model")
    authorize_source(request, uri)
    return uri


def record_version_on_logged_model(services: Services, version: ModelVersion) -> None:
    """Add ``{"name", "version"}`` to the ``mlflow.modelVersions`` tag of the version's logged model, as MLflow's
    server does when a version is created from a logged model."""
    if not version.model_id:
        return
    model = services.tracking.get_logged_model(version.model_id)
    entry = {"name": version.name, "version": version.version}
    try:
        existing = json.loads(model.tags.get(MODEL_VERSIONS_TAG, "[]"))
    except ValueError:
        existing = []
    entries = existing if isinstance(existing, list) else []
    if entry not in entries:
        entries.append(entry)
    services.tracking.set_logged_model_tags(version.model_id, {MODEL_VERSIONS_TAG: json.dumps(entries)})
