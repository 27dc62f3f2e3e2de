"""`LocalBackend`: the SDK writing straight into the local stores (no server), through `capstan.services.Services`."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from capstan.errors import InvalidParameterValue, InvalidState, ResourceDoesNotExist
from capstan.pages import Page
from capstan.registry.records import ModelVersion, RegisteredModel
from capstan.sdk.backends import ArtifactInfo, ArtifactOwner
from capstan.settings import Settings
from capstan.tracking.records import DELETED, Experiment, LoggedModel, Metric, Param, Run, RunInfo, RunTag

if TYPE_CHECKING:
    from capstan.services import Services

ARTIFACT_SCHEME = "mlflow-artifacts:"


def artifact_path_from_uri(uri: str) -> str:
    """The `ArtifactStore` path of an ``mlflow-artifacts:`` URI (``InvalidState`` for any other scheme)."""
    from capstan.artifacts.paths import path_from_uri

    if not uri.startswith(ARTIFACT_SCHEME):
        raise InvalidState(f"artifact location {uri!r} is not in Capstan's artifact store")
    return path_from_uri(uri)


def join_path(root: str, path: str) -> str:
    """``root/path`` with ``path`` normalised (``..`` and absolute paths are rejected)."""
    from capstan.artifacts.paths import join

    return join(root, path)


class LocalBackend:
    """`TrackingBackend` over the local metadata and artifact stores; they are opened on first use."""

    def __init__(self, settings: Settings, *, services: Services | None = None) -> None:
        self._settings = settings
        self._services = services
        self._owns_services = services is None
        self._lock = threading.Lock()
        self._roots: dict[ArtifactOwner, str] = {}

    @property
    def project(self) -> str:
        return self._settings.project

    @property
    def services(self) -> Services:
        """The opened stores."""
        if self._services is None:
            with self._lock:
                if self._services is None:
                    from capstan.services import Services

                    self._services = Services.open(self._settings)
        return self._services

    def close(self) -> None:
        if self._services is not None and self._owns_services:
            self._services.close()
            self._services = None

    # -- experiments ----------------------------------------------------------------------------------
    def create_experiment(self, name: str, *, artifact_location: str | None = None,
                          tags: Mapping[str, str] | None = None) -> str:
        return self.services.tracking.create_experiment(name, project=self.project,
                                                        artifact_location=artifact_location, tags=tags)

    def get_experiment(self, experiment_id: str) -> Experiment:
        return self.services.tracking.get_experiment(experiment_id)

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        return self.services.tracking.get_experiment_by_name(name, project=self.project)

    def search_experiments(self, *, view_type: str = "ACTIVE_ONLY", filter_string: str = "",
                           order_by: Sequence[str] = (), max_results: int = 1000,
                           page_token: str | None = None) -> Page[Experiment]:
        return self.services.tracking.search_experiments(
            project=self.project, view_type=view_type, filter_string=filter_string, order_by=order_by,
            max_results=max_results, page_token=page_token)

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        self.services.tracking.rename_experiment(experiment_id, new_name)

    def delete_experiment(self, experiment_id: str) -> None:
        self.services.tracking.delete_experiment(experiment_id)

    def restore_experiment(self, experiment_id: str) -> None:
        self.services.tracking.restore_experiment(experiment_id)

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self.services.tracking.set_experiment_tag(experiment_id, key, value)

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        self.services.tracking.delete_experiment_tag(experiment_id, key)

    # -- runs -----------------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, *, run_name: str | None = None, tags: Sequence[RunTag] = (),
                   start_time: int | None = None, user_id: str = "", source: str = "",
                   git_commit: str = "") -> RunInfo:
        return self.services.tracking.create_run(experiment_id, user_id=user_id, start_time=start_time,
                                                 run_name=run_name, tags=tags, source=source,
                                                 git_commit=git_commit)

    def get_run(self, run_id: str) -> Run:
        return self.services.tracking.get_run(run_id)

    def update_run(self, run_id: str, *, status: str | None = None, end_time: int | None = None,
                   run_name: str | None = None) -> RunInfo:
        return self.services.tracking.update_run(run_id, status=status, end_time=end_time, run_name=run_name)

    def delete_run(self, run_id: str) -> None:
        self.services.tracking.delete_run(run_id)

    def restore_run(self, run_id: str) -> None:
        self.services.tracking.restore_run(run_id)

    def search_runs(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                    view_type: str = "ACTIVE_ONLY", max_results: int = 1000, order_by: Sequence[str] = (),
                    page_token: str | None = None) -> Page[Run]:
        return self.services.tracking.search_runs(experiment_ids, filter_string=filter_string,
                                                  view_type=view_type, max_results=max_results,
                                                  order_by=order_by, page_token=page_token)

    def log_batch(self, run_id: str, *, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
                  tags: Sequence[RunTag] = ()) -> None:
        self.services.tracking.log_batch(run_id, metrics=metrics, params=params, tags=tags)

    def log_metrics_for_runs(self, batches: Mapping[str, Sequence[Metric]]) -> None:
        self.services.tracking.log_metrics_for_runs(batches)

    def delete_tag(self, run_id: str, key: str) -> None:
        self.services.tracking.delete_tag(run_id, key)

    def get_metric_history(self, run_id: str, key: str, *, max_results: int | None = None,
                           page_token: str | None = None) -> Page[Metric]:
        return self.services.tracking.get_metric_history(run_id, key, max_results=max_results,
                                                         page_token=page_token)

    def log_outputs(self, run_id: str, model_ids_and_steps: Sequence[tuple[str, int]]) -> None:
        self.services.tracking.log_outputs(run_id, model_ids_and_steps)

    # -- logged models --------------------------------------------------------------------------------
    def create_logged_model(self, experiment_id: str, *, name: str | None = None,
                            source_run_id: str | None = None, model_type: str = "",
                            params: Mapping[str, str] | None = None,
                            tags: Mapping[str, str] | None = None) -> LoggedModel:
        return self.services.tracking.create_logged_model(experiment_id, name=name, source_run_id=source_run_id,
                                                          model_type=model_type, params=params, tags=tags)

    def get_logged_model(self, model_id: str) -> LoggedModel:
        return self.services.tracking.get_logged_model(model_id)

    def finalize_logged_model(self, model_id: str, status: str) -> LoggedModel:
        return self.services.tracking.finalize_logged_model(model_id, status)

    def search_logged_models(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                             max_results: int = 100, page_token: str | None = None) -> Page[LoggedModel]:
        return self.services.tracking.search_logged_models(experiment_ids, filter_string=filter_string,
                                                           max_results=max_results, page_token=page_token)

    # -- artifacts ------------------------------------------------------------------------------------
    def artifact_root(self, owner: ArtifactOwner, *, for_write: bool = False) -> str:
        """The `ArtifactStore` path prefix of ``owner``."""
        if owner.kind == "model_version" and for_write:
            raise InvalidParameterValue("model version files are read-only; log to a run or logged model")
        if not for_write and owner in self._roots:
            return self._roots[owner]
        root = resolve_artifact_root(self.services, owner, for_write=for_write)
        if owner.kind != "model_version":  # a version number can be reused after a delete; runs and models not
            self._roots[owner] = root
        return root

    def upload_artifact(self, owner: ArtifactOwner, path: str, local_file: str | os.PathLike[str]) -> None:
        target = join_path(self.artifact_root(owner, for_write=True), path)
        if target == self.artifact_root(owner):
            raise InvalidParameterValue("path: must name a file below the artifact root")
        self.services.artifacts.put_file(target, local_file)

    def list_artifacts(self, owner: ArtifactOwner, path: str = "", *,
                       recursive: bool = False) -> list[ArtifactInfo]:
        root = self.artifact_root(owner)
        listing = self.services.artifacts.list(join_path(root, path), recursive=recursive)
        start = len(root) + 1
        return [ArtifactInfo(item.path[start:], item.is_dir, item.size, item.digest) for item in listing]

    def download_artifacts(self, owner: ArtifactOwner, path: str, dest_dir: str | os.PathLike[str]) -> Path:
        root = self.artifact_root(owner)
        return self.services.artifacts.download(join_path(root, path), dest_dir)

    # -- registry -------------------------------------------------------------------------------------
    def create_registered_model(self, name: str, *, description: str = "",
                                tags: Mapping[str, str] | None = None) -> RegisteredModel:
        return self.services.registry.create_registered_model(name, project=self.project,
                                                              description=description, tags=tags)

    def get_registered_model(self, name: str) -> RegisteredModel:
        return self.services.registry.get_registered_model(name)

    def search_registered_models(self, *, filter_string: str = "", max_results: int = 100,
                                 order_by: Sequence[str] = (),
                                 page_token: str | None = None) -> Page[RegisteredModel]:
        return self.services.registry.search_registered_models(
            filter_string=filter_string, max_results=max_results, order_by=order_by, page_token=page_token,
            project=self.project)

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel:
        return self.services.registry.rename_registered_model(name, new_name)

    def update_registered_model(self, name: str, *, description: str) -> RegisteredModel:
        return self.services.registry.update_registered_model(name, description=description)

    def delete_registered_model(self, name: str) -> None:
        self.services.registry.delete_registered_model(name)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self.services.registry.set_registered_model_tag(name, key, value)

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        self.services.registry.delete_registered_model_tag(name, key)

    def create_model_version(self, name: str, *, source: str, run_id: str | None = None,
                             model_id: str | None = None, tags: Mapping[str, str] | None = None,
                             description: str = "") -> ModelVersion:
        return self.services.registry.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                                           description=description, model_id=model_id)

    def get_model_version(self, name: str, version: int) -> ModelVersion:
        return self.services.registry.get_model_version(name, version)

    def search_model_versions(self, *, filter_string: str = "", max_results: int = 10000,
                              order_by: Sequence[str] = (),
                              page_token: str | None = None) -> Page[ModelVersion]:
        return self.services.registry.search_model_versions(filter_string=filter_string, max_results=max_results,
                                                            order_by=order_by, page_token=page_token)

    def update_model_version(self, name: str, version: int, *, description: str) -> ModelVersion:
        return self.services.registry.update_model_version(name, version, description=description)

    def delete_model_version(self, name: str, version: int) -> None:
        self.services.registry.delete_model_version(name, version)

    def set_model_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        self.services.registry.set_model_version_tag(name, version, key, value)

    def delete_model_version_tag(self, name: str, version: int, key: str) -> None:
        self.services.registry.delete_model_version_tag(name, version, key)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.services.registry.set_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        self.services.registry.delete_alias(name, alias)

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        return self.services.registry.get_version_by_alias(name, alias)


def resolve_artifact_root(services: Services, owner: ArtifactOwner, *, for_write: bool = False) -> str:
    """The `ArtifactStore` path prefix of a run, logged model or model version (shared with the server)."""
    if owner.kind == "run":
        info = services.tracking.get_run(owner.id).info
        if for_write and info.lifecycle_stage == DELETED:
            raise InvalidState(f"run {owner.id} is deleted; restore it before logging artifacts with "
                               f"`capstan runs restore {owner.id}`")
        return artifact_path_from_uri(info.artifact_uri)
    if owner.kind == "logged_model":
        return artifact_path_from_uri(services.tracking.get_logged_model(owner.id).artifact_location)
    name, version = owner.split_version()
    return resolve_model_uri_root(services, services.registry.get_download_uri(name, version))


def resolve_model_uri_root(services: Services, uri: str) -> str:
    """`ArtifactStore` path of a model version's files given its storage URI: ``mlflow-artifacts:/...``,
    ``models:/<logged model id>`` or ``runs:/<run id>/<path>``."""
    if uri.startswith("models:/"):
        model_id = uri[len("models:/"):].strip("/")
        return artifact_path_from_uri(services.tracking.get_logged_model(model_id).artifact_location)
    if uri.startswith("runs:/"):
        run_id, _, rel = uri[len("runs:/"):].strip("/").partition("/")
        return join_path(artifact_path_from_uri(services.tracking.get_run(run_id).info.artifact_uri), rel)
    if uri.startswith(ARTIFACT_SCHEME):
        return artifact_path_from_uri(uri)
    raise ResourceDoesNotExist(f"model files at {uri!r} are not in Capstan's artifact store")
