"""Read models of the model registry pages: what ``/ui/models/NAME`` and ``/ui/models/NAME/versions/V`` show.

- `model_detail`: a registered model (aliases, tags, description) and one page of its versions, newest first,
  each with its stage, aliases, tags and lineage;
- `version_detail`: one version with its lineage in full.

Lineage runs from a version back to the tracking run it was registered from (its ``run_id``, else the source run
of its logged model), and from that run to its experiment, training job, study trial and input datasets. A version
made by a pipeline step names it with the tags ``capstan.pipeline.run_id`` and ``capstan.pipeline.step`` (on the
version, else on its run). A run in a project the viewer may not read is shown by id only; one that no longer
exists says so.

The models list needs no read model of its own: it is one ``search_registered_models`` call, the same as its twin
``GET /api/v1/registered-models``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from capstan.errors import ResourceDoesNotExist
from capstan.registry.ports import RegistryStore
from capstan.registry.records import ModelVersion, RegisteredModel
from capstan.sdk import backends_wire as wire
from capstan.sdk.fluent import PIPELINE_RUN_TAG, PIPELINE_STEP_TAG
from capstan.tracking.ports import TrackingStore
from capstan.tracking.records import DatasetInput, Experiment, Run
from capstan.ui.paging import page_size

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
"""Each version row looks up its run, so a page holds at most this many."""
LIST_PAGE_SIZE = 50
MAX_LIST_PAGE_SIZE = 1000
MayRead = Callable[[str], bool]


def check_page_size(value: str | None, *, default: int, maximum: int) -> int:
    """A page size between 1 and ``maximum`` (``default`` when not given), naming ``max_results``."""
    return page_size(value, default=default, maximum=maximum)


def check_version(text: str) -> int:
    """A version number from a URL; `ResourceDoesNotExist` for anything else (no such version can exist)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) < 1:
        raise ResourceDoesNotExist(f"model version {text[:40]!r} does not exist: versions are numbered from 1")
    return int(text)


# -- lineage --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunSummary:
    """The run a version came from, as far as the viewer may see it."""

    run_id: str
    run_name: str
    status: str
    start_time: int | None
    experiment_id: str
    experiment_name: str
    project: str


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a version came from. ``run_state`` is ``none`` (no run recorded), ``shown``, ``hidden`` (a project the
    viewer may not read) or ``missing`` (deleted for good)."""

    run_id: str | None
    run_state: str
    run: RunSummary | None = None
    logged_model_id: str | None = None
    job_id: str | None = None
    study: str | None = None
    trial_number: str | None = None
    pipeline_run_id: str | None = None
    pipeline_step: str | None = None
    datasets: tuple[DatasetInput, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        run = self.run
        return {"run_id": self.run_id, "run_state": self.run_state,
                "run": None if run is None else {
                    "run_id": run.run_id, "run_name": run.run_name, "status": run.status,
                    "start_time": run.start_time, "experiment_id": run.experiment_id,
                    "experiment_name": run.experiment_name, "project": run.project},
                "logged_model_id": self.logged_model_id, "job_id": self.job_id, "study": self.study,
                "trial_number": self.trial_number, "pipeline_run_id": self.pipeline_run_id,
                "pipeline_step": self.pipeline_step,
                "datasets": [{"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source}
                             for d in self.datasets]}


class _Lookups:
    """Runs and experiments read once per page (several versions often share them)."""

    def __init__(self, tracking: TrackingStore, may_read: MayRead) -> None:
        self.tracking = tracking
        self.may_read = may_read
        self._runs: dict[str, Run | None] = {}
        self._experiments: dict[str, Experiment] = {}

    def run(self, run_id: str) -> Run | None:
        if run_id not in self._runs:
            try:
                self._runs[run_id] = self.tracking.get_run(run_id)
            except ResourceDoesNotExist:
                self._runs[run_id] = None
        return self._runs[run_id]

    def experiment(self, experiment_id: str) -> Experiment:
        if experiment_id not in self._experiments:
            self._experiments[experiment_id] = self.tracking.get_experiment(experiment_id)
        return self._experiments[experiment_id]

    def source_run_of(self, model_id: str) -> str | None:
        try:
            return self.tracking.get_logged_model(model_id).source_run_id
        except ResourceDoesNotExist:
            return None


def lineage_of(version: ModelVersion, lookups: _Lookups) -> Lineage:
    """The version's lineage: its run (or its logged model's source run) and what the run's tags record."""
    tags = version.tags
    run_id = version.run_id or (lookups.source_run_of(version.model_id) if version.model_id else None)
    pipeline = (tags.get(PIPELINE_RUN_TAG), tags.get(PIPELINE_STEP_TAG))
    if run_id is None:
        return Lineage(None, "none", logged_model_id=version.model_id, pipeline_run_id=pipeline[0],
                       pipeline_step=pipeline[1])
    run = lookups.run(run_id)
    if run is None:
        return Lineage(run_id, "missing", logged_model_id=version.model_id, pipeline_run_id=pipeline[0],
                       pipeline_step=pipeline[1])
    experiment = lookups.experiment(run.info.experiment_id)
    if not lookups.may_read(experiment.project):
        return Lineage(run_id, "hidden", logged_model_id=version.model_id, pipeline_run_id=pipeline[0],
                       pipeline_step=pipeline[1])
    info, run_tags = run.info, run.data.tags
    summary = RunSummary(info.run_id, info.run_name, info.status, info.start_time, info.experiment_id,
                         experiment.name, experiment.project)
    if pipeline[0] is None:
        pipeline = (run_tags.get(PIPELINE_RUN_TAG), run_tags.get(PIPELINE_STEP_TAG))
    return Lineage(run_id, "shown", summary, version.model_id, run_tags.get("capstan.job.id"),
                   run_tags.get("capstan.study"), run_tags.get("capstan.trial.number"), pipeline[0], pipeline[1],
                   run.inputs)


# -- a model --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VersionRow:
    """A version with its lineage."""

    version: ModelVersion
    lineage: Lineage

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the version as ``/api/v1`` writes it, plus ``lineage``."""
        return {**wire.model_version_to_json(self.version), "lineage": self.lineage.to_dict()}


@dataclass(frozen=True, slots=True)
class ModelDetail:
    """A registered model and one page of its versions, newest first."""

    model: RegisteredModel
    versions: tuple[VersionRow, ...]
    next_page_token: str | None

    @property
    def project(self) -> str:
        return self.model.project

    @property
    def latest_version(self) -> int | None:
        """The highest version number among the latest per stage."""
        return max((v.version for v in self.model.latest_versions), default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the twin ``GET /api/v1/views/models/NAME``)."""
        return {"registered_model": wire.registered_model_to_json(self.model),
                "versions": [row.to_dict() for row in self.versions], "next_page_token": self.next_page_token}


def versions_filter(name: str) -> str:
    """The registry filter selecting the versions of model ``name``."""
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"name = '{escaped}'"


def model_detail(registry: RegistryStore, tracking: TrackingStore, may_read: MayRead, name: str, *,
                 max_results: int = DEFAULT_PAGE_SIZE, page_token: str | None = None) -> ModelDetail:
    """The model page's data (`ResourceDoesNotExist` for an unknown model)."""
    model = registry.get_registered_model(name)
    if not may_read(model.project):  # no version lookups for a caller the page handler is about to refuse
        return ModelDetail(model, (), None)
    found = registry.search_model_versions(filter_string=versions_filter(name), max_results=max_results,
                                           order_by=("version_number DESC",), page_token=page_token,
                                           project=model.project)
    lookups = _Lookups(tracking, may_read)
    rows = tuple(VersionRow(v, lineage_of(v, lookups)) for v in found.items)
    return ModelDetail(model, rows, found.next_page_token)


# -- a version ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VersionDetail:
    """One version of a registered model, with the model and the version's lineage."""

    model: RegisteredModel
    row: VersionRow

    @property
    def project(self) -> str:
        return self.model.project

    @property
    def version(self) -> ModelVersion:
        return self.row.version

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the twin ``GET /api/v1/views/models/NAME/versions/V``)."""
        return {"registered_model": wire.registered_model_to_json(self.model), "version": self.row.to_dict()}


def version_detail(registry: RegistryStore, tracking: TrackingStore, may_read: MayRead, name: str,
                   version: int) -> VersionDetail:
    """The version page's data (`ResourceDoesNotExist` for an unknown model or version)."""
    model = registry.get_registered_model(name)
    found = registry.get_model_version(name, version)
    lineage = lineage_of(found, _Lookups(tracking, may_read)) if may_read(model.project) else Lineage(None, "none")
    return VersionDetail(model, VersionRow(found, lineage))
