"""`capstan.Client`: explicit queries and registry operations (no active-run state).

``Client()`` shares the process's backend (settings from `capstan.configure` or ``Settings.from_env()``);
``Client(settings=...)`` opens its own, which `Client.close` (or ``with Client(...) as c:``) releases.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.pages import Page
from capstan.registry.records import ModelVersion, RegisteredModel
from capstan.sdk.backends import ArtifactInfo, ArtifactOwner, TrackingBackend, open_backend
from capstan.sdk.fluent_models import ModelInfo
from capstan.settings import Settings
from capstan.tracking.records import TERMINAL_STATUSES, Experiment, LoggedModel, Metric, Param, Run, RunTag


def _now_ms() -> int:
    from capstan.clock import system_clock

    return system_clock()


def _paged(fetch: Any, max_results: int, page_size: int = 1000) -> list[Any]:
    """Collect up to ``max_results`` items from a ``fetch(page_token, limit) -> Page`` function."""
    items: list[Any] = []
    token: str | None = None
    while len(items) < max_results:
        page = fetch(token, min(page_size, max_results - len(items)))
        items.extend(page.items)
        token = page.next_page_token
        if not token or not page.items:
            break
    return items[:max_results]


class Client:
    """Query and manage experiments, runs, artifacts, logged models and the model registry."""

    def __init__(self, settings: Settings | None = None, *, backend: TrackingBackend | None = None) -> None:
        self._owns_backend = False
        if backend is not None:
            self._backend = backend
        elif settings is not None:
            self._backend = open_backend(settings)
            self._owns_backend = True
        else:
            from capstan.sdk import fluent as sdk

            self._backend = sdk.process_backend()
        self._settings = settings

    @property
    def backend(self) -> TrackingBackend:
        """The transport this client uses (local stores or HTTP)."""
        return self._backend

    def close(self) -> None:
        """Release the connections this client opened (the shared process backend stays open)."""
        if self._owns_backend:
            self._backend.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- experiments ----------------------------------------------------------------------------------
    def create_experiment(self, name: str, *, artifact_location: str | None = None,
                          tags: Mapping[str, str] | None = None) -> str:
        """Create an experiment; returns its id."""
        return self._backend.create_experiment(name, artifact_location=artifact_location, tags=tags)

    def get_experiment(self, experiment_id: str) -> Experiment:
        """The experiment with id ``experiment_id`` (`ResourceDoesNotExist` if unknown)."""
        return self._backend.get_experiment(str(experiment_id))

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        """The experiment called ``name`` in this project, or ``None``."""
        return self._backend.get_experiment_by_name(name)

    def search_experiments(self, filter_string: str = "", *, view_type: str = "ACTIVE_ONLY",
                           order_by: Sequence[str] = (), max_results: int = 1000) -> list[Experiment]:
        """Experiments of this project matching an MLflow filter such as ``"name LIKE 'fraud%'"``."""
        return _paged(lambda token, limit: self._backend.search_experiments(
            view_type=view_type, filter_string=filter_string, order_by=order_by, max_results=limit,
            page_token=token), max_results)

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Rename an experiment."""
        self._backend.rename_experiment(str(experiment_id), new_name)

    def delete_experiment(self, experiment_id: str) -> None:
        """Soft-delete an experiment and its runs (restorable)."""
        self._backend.delete_experiment(str(experiment_id))

    def restore_experiment(self, experiment_id: str) -> None:
        """Undo `delete_experiment`."""
        self._backend.restore_experiment(str(experiment_id))

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Set a tag on an experiment."""
        self._backend.set_experiment_tag(str(experiment_id), key, str(value))

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Remove a tag from an experiment."""
        self._backend.delete_experiment_tag(str(experiment_id), key)

    # -- runs -----------------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, *, run_name: str | None = None,
                   tags: Mapping[str, str] | None = None, start_time: int | None = None) -> Run:
        """Create a RUNNING run (without making it the active run of the fluent API)."""
        info = self._backend.create_run(str(experiment_id), run_name=run_name,
                                        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
                                        start_time=start_time)
        return self._backend.get_run(info.run_id)

    def get_run(self, run_id: str) -> Run:
        """The run with its latest metrics, params, tags and outputs."""
        return self._backend.get_run(run_id)

    def set_terminated(self, run_id: str, status: str = "FINISHED", end_time: int | None = None) -> None:
        """End a run with ``status`` (FINISHED, FAILED or KILLED)."""
        if status not in TERMINAL_STATUSES:
            raise InvalidParameterValue(f"status: {status!r} is not one of {', '.join(TERMINAL_STATUSES)}")
        self._backend.update_run(run_id, status=status, end_time=end_time or _now_ms())

    def rename_run(self, run_id: str, run_name: str) -> None:
        """Change a run's name."""
        self._backend.update_run(run_id, run_name=run_name)

    def delete_run(self, run_id: str) -> None:
        """Soft-delete a run (restorable)."""
        self._backend.delete_run(run_id)

    def restore_run(self, run_id: str) -> None:
        """Undo `delete_run`."""
        self._backend.restore_run(run_id)

    def search_runs(self, experiment_ids: Sequence[str] | str | None = None, filter_string: str = "", *,
                    experiment_names: Sequence[str] | None = None, order_by: Sequence[str] = (),
                    max_results: int = 1000, view_type: str = "ACTIVE_ONLY") -> list[Run]:
        """Runs matching an MLflow filter string (``"metrics.acc > 0.9 AND params.model = 'rf'"``), ordered by
        ``order_by`` (``["metrics.acc DESC"]``). Without experiment ids or names, every experiment of the project
        that ``view_type`` covers is searched: the active ones for ``ACTIVE_ONLY``, deleted ones too for
        ``DELETED_ONLY`` and ``ALL`` (deleting an experiment deletes its runs, so they show up there)."""
        ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids or ())
        for name in experiment_names or ():
            exp = self._backend.get_experiment_by_name(name)
            if exp is None:
                raise ResourceDoesNotExist(f"experiment {name!r} does not exist")
            ids.append(exp.experiment_id)
        if experiment_ids is None and not experiment_names:
            experiments_view = "ACTIVE_ONLY" if view_type == "ACTIVE_ONLY" else "ALL"
            ids = [e.experiment_id for e in self.search_experiments(view_type=experiments_view,
                                                                    max_results=100_000)]
            if not ids:
                return []
        return _paged(lambda token, limit: self._backend.search_runs(
            ids, filter_string=filter_string, view_type=view_type, max_results=limit, order_by=order_by,
            page_token=token), max_results)

    def log_param(self, run_id: str, key: str, value: Any) -> None:
        """Log one parameter (immutable once logged)."""
        self._backend.log_batch(run_id, params=[Param(key, str(value))])

    def log_metric(self, run_id: str, key: str, value: float, *, step: int = 0,
                   timestamp: int | None = None) -> None:
        """Log one metric point synchronously."""
        from capstan.sdk.fluent import check_metric

        self._backend.log_batch(run_id, metrics=[check_metric(key, value, step, timestamp or _now_ms())])

    def log_batch(self, run_id: str, *, metrics: Sequence[Metric] = (), params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None) -> None:
        """Log metrics, params and tags in one atomic call."""
        self._backend.log_batch(run_id, metrics=list(metrics),
                                params=[Param(k, str(v)) for k, v in (params or {}).items()],
                                tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        """Set a run tag."""
        self._backend.log_batch(run_id, tags=[RunTag(key, str(value))])

    def delete_tag(self, run_id: str, key: str) -> None:
        """Remove a run tag."""
        self._backend.delete_tag(run_id, key)

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        """Every point of metric ``key``, ordered by step then timestamp."""
        return _paged(lambda token, limit: self._backend.get_metric_history(
            run_id, key, max_results=limit, page_token=token), 10**9, page_size=25_000)

    # -- artifacts ------------------------------------------------------------------------------------
    def log_artifact(self, run_id: str, local_path: str | os.PathLike[str],
                     artifact_path: str | None = None) -> None:
        """Upload a file (or a folder, kept as a folder) into the run's artifacts below ``artifact_path``."""
        from capstan.sdk.fluent import artifact_files

        for rel, file in artifact_files(local_path, artifact_path, keep_folder=True):
            self._backend.upload_artifact(ArtifactOwner.run(run_id), rel, file)

    def log_artifacts(self, run_id: str, local_dir: str | os.PathLike[str],
                      artifact_path: str | None = None) -> None:
        """Upload the contents of ``local_dir`` into the run's artifacts below ``artifact_path``."""
        from capstan.sdk.fluent import artifact_files

        for rel, file in artifact_files(local_dir, artifact_path, keep_folder=False):
            self._backend.upload_artifact(ArtifactOwner.run(run_id), rel, file)

    def list_artifacts(self, run_id: str, path: str = "", *, recursive: bool = False) -> list[ArtifactInfo]:
        """Files and folders in the run's artifacts below ``path``."""
        return self._backend.list_artifacts(ArtifactOwner.run(run_id), path, recursive=recursive)

    def download_artifacts(self, run_id: str, path: str = "", dst_path: str | os.PathLike[str] | None = None) -> Path:
        """Copy a run artifact file or folder to ``dst_path`` (a new temporary folder by default)."""
        import tempfile

        dest = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="capstan-artifacts-"))
        dest.mkdir(parents=True, exist_ok=True)
        return self._backend.download_artifacts(ArtifactOwner.run(run_id), path, dest)

    def read_artifact_text(self, run_id: str, path: str) -> str:
        """The content of a small text artifact."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return self._backend.download_artifacts(ArtifactOwner.run(run_id), path, tmp).read_text()

    # -- logged models --------------------------------------------------------------------------------
    def get_logged_model(self, model_id: str) -> LoggedModel:
        """An MLflow 3 logged model by id."""
        return self._backend.get_logged_model(model_id)

    def search_logged_models(self, experiment_ids: Sequence[str], filter_string: str = "", *,
                             max_results: int = 100) -> list[LoggedModel]:
        """Logged models of the given experiments."""
        return _paged(lambda token, limit: self._backend.search_logged_models(
            list(experiment_ids), filter_string=filter_string, max_results=limit, page_token=token),
            max_results, page_size=100)

    def log_model(self, run_id: str, model: Any, name: str, *, input_example: Any = None, signature: Any = None,
                  registered_model_name: str | None = None, serialization_format: str | None = None,
                  reference_data: Any = None, tokenizer: Any = None) -> ModelInfo:
        """Log ``model`` as an output of run ``run_id`` (see `capstan.log_model`)."""
        from capstan.sdk import fluent_models as sdk_models

        run = self._backend.get_run(run_id)
        return sdk_models.log_model(self._backend, model, name, experiment_id=run.info.experiment_id,
                                    run_id=run_id, input_example=input_example, signature=signature,
                                    registered_model_name=registered_model_name,
                                    serialization_format=serialization_format, reference_data=reference_data,
                                    tokenizer=tokenizer)

    def load_model(self, model_uri: str, *, as_pyfunc: bool = False,
                   dst_path: str | os.PathLike[str] | None = None) -> Any:
        """Load a model from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN/PATH`` or a folder."""
        from capstan.sdk import fluent_models as sdk_models

        return sdk_models.load_model(self._backend, model_uri, as_pyfunc=as_pyfunc,
                                     dst_path=None if dst_path is None else Path(dst_path))

    def download_model(self, model_uri: str, dst_path: str | os.PathLike[str]) -> Path:
        """Copy a model folder to ``dst_path``; returns the folder holding ``MLmodel``."""
        from capstan.sdk import fluent_models as sdk_models

        return sdk_models.download_model(self._backend, model_uri, Path(dst_path))

    # -- registry -------------------------------------------------------------------------------------
    def create_registered_model(self, name: str, *, description: str = "",
                                tags: Mapping[str, str] | None = None) -> RegisteredModel:
        """Create a registered model in this project."""
        return self._backend.create_registered_model(name, description=description, tags=tags)

    def get_registered_model(self, name: str) -> RegisteredModel:
        """A registered model with its aliases and latest versions."""
        return self._backend.get_registered_model(name)

    def search_registered_models(self, filter_string: str = "", *, order_by: Sequence[str] = (),
                                 max_results: int = 1000) -> list[RegisteredModel]:
        """Registered models of this project matching a filter such as ``"name LIKE 'fraud%'"``."""
        return _paged(lambda token, limit: self._backend.search_registered_models(
            filter_string=filter_string, max_results=limit, order_by=order_by, page_token=token),
            max_results, page_size=1000)

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel:
        """Rename a registered model."""
        return self._backend.rename_registered_model(name, new_name)

    def update_registered_model(self, name: str, *, description: str) -> RegisteredModel:
        """Change a registered model's description."""
        return self._backend.update_registered_model(name, description=description)

    def delete_registered_model(self, name: str) -> None:
        """Delete a registered model and its versions."""
        self._backend.delete_registered_model(name)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        """Set a tag on a registered model."""
        self._backend.set_registered_model_tag(name, key, str(value))

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        """Remove a tag from a registered model."""
        self._backend.delete_registered_model_tag(name, key)

    def register_model(self, model_uri: str, name: str, *, tags: Mapping[str, str] | None = None,
                       description: str = "") -> ModelVersion:
        """Create a new version of ``name`` (created if needed) from ``runs:/RUN/PATH`` or ``models:/MODEL_ID``."""
        from capstan.sdk import fluent_models as sdk_models

        result: ModelVersion = sdk_models.register_model(self._backend, model_uri, name, tags=tags,
                                                          description=description)
        return result

    def create_model_version(self, name: str, source: str, *, run_id: str | None = None,
                             model_id: str | None = None, tags: Mapping[str, str] | None = None,
                             description: str = "") -> ModelVersion:
        """Create the next version of ``name`` pointing at ``source``."""
        return self._backend.create_model_version(name, source=source, run_id=run_id, model_id=model_id,
                                                  tags=tags, description=description)

    def get_model_version(self, name: str, version: int | str) -> ModelVersion:
        """One version of a registered model."""
        return self._backend.get_model_version(name, int(version))

    def search_model_versions(self, filter_string: str = "", *, order_by: Sequence[str] = (),
                              max_results: int = 10000) -> list[ModelVersion]:
        """Model versions matching a filter such as ``"name = 'quickstart'"``."""
        return _paged(lambda token, limit: self._backend.search_model_versions(
            filter_string=filter_string, max_results=limit, order_by=order_by, page_token=token),
            max_results, page_size=10000)

    def update_model_version(self, name: str, version: int | str, *, description: str) -> ModelVersion:
        """Change a version's description."""
        return self._backend.update_model_version(name, int(version), description=description)

    def delete_model_version(self, name: str, version: int | str) -> None:
        """Delete one version."""
        self._backend.delete_model_version(name, int(version))

    def set_model_version_tag(self, name: str, version: int | str, key: str, value: str) -> None:
        """Set a tag on a model version."""
        self._backend.set_model_version_tag(name, int(version), key, str(value))

    def delete_model_version_tag(self, name: str, version: int | str, key: str) -> None:
        """Remove a tag from a model version."""
        self._backend.delete_model_version_tag(name, int(version), key)

    def set_registered_model_alias(self, name: str, alias: str, version: int | str) -> None:
        """Point ``alias`` (e.g. ``champion``) at ``version``."""
        self._backend.set_alias(name, alias, int(version))

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        """Remove an alias."""
        self._backend.delete_alias(name, alias)

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        """The version ``alias`` points at."""
        return self._backend.get_version_by_alias(name, alias)

    def list_model_version_artifacts(self, name: str, version: int | str, path: str = "") -> list[ArtifactInfo]:
        """Files of a model version."""
        return self._backend.list_artifacts(ArtifactOwner.model_version(name, int(version)), path)

    def download_model_version(self, name: str, version: int | str, dst_path: str | os.PathLike[str]) -> Path:
        """Copy a model version's files to ``dst_path``."""
        dest = Path(dst_path)
        dest.mkdir(parents=True, exist_ok=True)
        return self._backend.download_artifacts(ArtifactOwner.model_version(name, int(version)), "", dest)

    def iter_runs(self, experiment_ids: Sequence[str], filter_string: str = "", *,
                  order_by: Sequence[str] = (), page_size: int = 1000) -> Iterator[Run]:
        """Every matching run, fetched page by page."""
        token: str | None = None
        while True:
            page: Page[Run] = self._backend.search_runs(list(experiment_ids), filter_string=filter_string,
                                                        max_results=page_size, order_by=order_by,
                                                        page_token=token)
            yield from page.items
            token = page.next_page_token
            if not token or not page.items:
                return
