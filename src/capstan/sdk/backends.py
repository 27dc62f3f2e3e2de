"""The SDK's transport port: how `capstan.Client` and the fluent API reach the stores.

`TrackingBackend` is one Protocol with two adapters:

- `capstan.sdk.backends_local.LocalBackend` writes to the local stores directly (`capstan.services.Services`);
  no server is needed. Used when ``Settings.url`` (``CAPSTAN_URL``) is unset.
- `capstan.sdk.backends_http.HttpBackend` talks to a Capstan server's ``/api/v1`` with ``httpx``.

Both pass the same contract suite (``tests/sdk/test_backend_contract.py``). `open_backend` picks one from settings.

Artifacts belong to an `ArtifactOwner`: a run (``kind="run"``), an MLflow 3 logged model (``kind="logged_model"``)
or a registered model version (``kind="model_version"``, id ``"NAME/VERSION"``, read-only). Artifact paths are
relative to the owner's artifact root.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from capstan.errors import InvalidParameterValue
from capstan.pages import Page
from capstan.registry.records import ModelVersion, RegisteredModel
from capstan.tracking.records import Experiment, LoggedModel, Metric, Param, Run, RunInfo, RunTag

if TYPE_CHECKING:
    from capstan.settings import Settings

OwnerKind = Literal["run", "logged_model", "model_version"]


@dataclass(frozen=True, slots=True)
class ArtifactOwner:
    """What an artifact path is relative to: a run, a logged model, or a registered model version."""

    kind: OwnerKind
    id: str

    @classmethod
    def run(cls, run_id: str) -> ArtifactOwner:
        """The artifact root of run ``run_id``."""
        return cls("run", run_id)

    @classmethod
    def logged_model(cls, model_id: str) -> ArtifactOwner:
        """The artifact root of MLflow 3 logged model ``model_id``."""
        return cls("logged_model", model_id)

    @classmethod
    def model_version(cls, name: str, version: int) -> ArtifactOwner:
        """The files of registered model ``name`` version ``version`` (read-only)."""
        return cls("model_version", f"{name}/{int(version)}")

    def split_version(self) -> tuple[str, int]:
        """``(name, version)`` of a ``model_version`` owner."""
        name, _, version = self.id.rpartition("/")
        return name, int(version)


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    """One row of an artifact listing; ``path`` is relative to the owner's artifact root. ``digest`` is the sha256
    the artifact store recorded for a file (``None`` for a folder, or from a server that does not send it)."""

    path: str
    is_dir: bool
    size: int | None = None
    digest: str | None = None


class TrackingBackend(Protocol):
    """Everything the SDK needs from a tracking server or the local stores.

    Errors are `capstan.errors.CapstanError` subclasses in both adapters (the HTTP adapter rebuilds them from the
    server's ``{"error_code", "message"}`` bodies).
    """

    @property
    def project(self) -> str:
        """The project (tenant) new experiments and registered models are created in."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    # -- experiments ----------------------------------------------------------------------------------
    def create_experiment(self, name: str, *, artifact_location: str | None = None,
                          tags: Mapping[str, str] | None = None) -> str: ...

    def get_experiment(self, experiment_id: str) -> Experiment: ...

    def get_experiment_by_name(self, name: str) -> Experiment | None: ...

    def search_experiments(self, *, view_type: str = "ACTIVE_ONLY", filter_string: str = "",
                           order_by: Sequence[str] = (), max_results: int = 1000,
                           page_token: str | None = None) -> Page[Experiment]: ...

    def rename_experiment(self, experiment_id: str, new_name: str) -> None: ...

    def delete_experiment(self, experiment_id: str) -> None: ...

    def restore_experiment(self, experiment_id: str) -> None: ...

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None: ...

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None: ...

    # -- runs -----------------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, *, run_name: str | None = None, tags: Sequence[RunTag] = (),
                   start_time: int | None = None, user_id: str = "", source: str = "",
                   git_commit: str = "") -> RunInfo: ...

    def get_run(self, run_id: str) -> Run: ...

    def update_run(self, run_id: str, *, status: str | None = None, end_time: int | None = None,
                   run_name: str | None = None) -> RunInfo: ...

    def delete_run(self, run_id: str) -> None: ...

    def restore_run(self, run_id: str) -> None: ...

    def search_runs(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                    view_type: str = "ACTIVE_ONLY", max_results: int = 1000, order_by: Sequence[str] = (),
                    page_token: str | None = None) -> Page[Run]: ...

    def log_batch(self, run_id: str, *, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
                  tags: Sequence[RunTag] = ()) -> None: ...

    def log_metrics_for_runs(self, batches: Mapping[str, Sequence[Metric]]) -> None:
        """Write metric points of several runs at once (the background metric writer's sink)."""
        ...

    def delete_tag(self, run_id: str, key: str) -> None: ...

    def get_metric_history(self, run_id: str, key: str, *, max_results: int | None = None,
                           page_token: str | None = None) -> Page[Metric]: ...

    def log_outputs(self, run_id: str, model_ids_and_steps: Sequence[tuple[str, int]]) -> None: ...

    # -- MLflow 3 logged models -----------------------------------------------------------------------
    def create_logged_model(self, experiment_id: str, *, name: str | None = None,
                            source_run_id: str | None = None, model_type: str = "",
                            params: Mapping[str, str] | None = None,
                            tags: Mapping[str, str] | None = None) -> LoggedModel: ...

    def get_logged_model(self, model_id: str) -> LoggedModel: ...

    def finalize_logged_model(self, model_id: str, status: str) -> LoggedModel: ...

    def search_logged_models(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                             max_results: int = 100, page_token: str | None = None) -> Page[LoggedModel]: ...

    # -- artifacts ------------------------------------------------------------------------------------
    def upload_artifact(self, owner: ArtifactOwner, path: str, local_file: str | os.PathLike[str]) -> None:
        """Store ``local_file`` at ``path`` below the owner's artifact root (streamed, never read whole)."""
        ...

    def list_artifacts(self, owner: ArtifactOwner, path: str = "", *,
                       recursive: bool = False) -> list[ArtifactInfo]: ...

    def download_artifacts(self, owner: ArtifactOwner, path: str, dest_dir: str | os.PathLike[str]) -> Path:
        """Copy the file at ``path`` (or every file below it) into ``dest_dir``; returns the local path."""
        ...

    # -- registry -------------------------------------------------------------------------------------
    def create_registered_model(self, name: str, *, description: str = "",
                                tags: Mapping[str, str] | None = None) -> RegisteredModel: ...

    def get_registered_model(self, name: str) -> RegisteredModel: ...

    def search_registered_models(self, *, filter_string: str = "", max_results: int = 100,
                                 order_by: Sequence[str] = (),
                                 page_token: str | None = None) -> Page[RegisteredModel]: ...

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel: ...

    def update_registered_model(self, name: str, *, description: str) -> RegisteredModel: ...

    def delete_registered_model(self, name: str) -> None: ...

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None: ...

    def delete_registered_model_tag(self, name: str, key: str) -> None: ...

    def create_model_version(self, name: str, *, source: str, run_id: str | None = None,
                             model_id: str | None = None, tags: Mapping[str, str] | None = None,
                             description: str = "") -> ModelVersion: ...

    def get_model_version(self, name: str, version: int) -> ModelVersion: ...

    def search_model_versions(self, *, filter_string: str = "", max_results: int = 10000,
                              order_by: Sequence[str] = (),
                              page_token: str | None = None) -> Page[ModelVersion]: ...

    def update_model_version(self, name: str, version: int, *, description: str) -> ModelVersion: ...

    def delete_model_version(self, name: str, version: int) -> None: ...

    def set_model_version_tag(self, name: str, version: int, key: str, value: str) -> None: ...

    def delete_model_version_tag(self, name: str, version: int, key: str) -> None: ...

    def set_alias(self, name: str, alias: str, version: int) -> None: ...

    def delete_alias(self, name: str, alias: str) -> None: ...

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion: ...


def open_backend(settings: Settings) -> TrackingBackend:
    """The HTTP adapter when ``settings.url`` is set, else the local one (stores opened on first use)."""
    if settings.url:
        from capstan.sdk.backends_http import HttpBackend

        return HttpBackend(settings)
    from capstan.sdk.backends_local import LocalBackend

    return LocalBackend(settings)


def iter_local_files(local_path: str | os.PathLike[str], artifact_path: str | None) -> Iterable[tuple[str, Path]]:
    """``(artifact path, local file)`` pairs for a file or every file below a folder, as `log_artifact(s)`
    lays them out: a file keeps its name under ``artifact_path``; a folder's contents keep their relative
    paths under ``artifact_path``."""
    base = Path(local_path)
    prefix = (artifact_path or "").strip("/")
    if base.is_file():
        yield (f"{prefix}/{base.name}" if prefix else base.name), base
        return
    if not base.is_dir():
        raise InvalidParameterValue(f"local_path: {str(base)!r} is neither a file nor a folder")
    for file in sorted(p for p in base.rglob("*") if p.is_file()):
        rel = file.relative_to(base).as_posix()
        yield (f"{prefix}/{rel}" if prefix else rel), file
