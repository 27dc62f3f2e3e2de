"""Immutable records of experiment tracking, shared by the stores, the SDK and the servers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
ACTIVE = "active"
DELETED = "deleted"
VIEW_TYPES = ("ACTIVE_ONLY", "DELETED_ONLY", "ALL")


@dataclass(frozen=True, slots=True)
class Experiment:
    """An experiment: a named group of runs inside a project."""

    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str
    creation_time: int
    last_update_time: int
    project: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric point. ``timestamp`` is milliseconds since the epoch."""

    key: str
    value: float
    timestamp: int
    step: int = 0


@dataclass(frozen=True, slots=True)
class Param:
    """A run parameter; immutable once logged."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class RunTag:
    """A mutable key/value label on a run or experiment."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Run metadata. ``run_id`` is a 32-character hex uuid, as in MLflow."""

    run_id: str
    run_name: str
    experiment_id: str
    user_id: str
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    lifecycle_stage: str
    source: str = ""
    git_commit: str = ""


@dataclass(frozen=True, slots=True)
class RunData:
    """A run's latest metric values, params and tags."""

    metrics: tuple[Metric, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """A logged model a run produced (MLflow 3 ``runs/outputs``)."""

    model_id: str
    step: int = 0


@dataclass(frozen=True, slots=True)
class DatasetInput:
    """A dataset a run consumed (MLflow ``log-inputs``)."""

    name: str
    digest: str
    source_type: str = ""
    source: str = ""
    schema: str = ""
    profile: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Run:
    """A run with its data, inputs and outputs."""

    info: RunInfo
    data: RunData
    inputs: tuple[DatasetInput, ...] = ()
    model_inputs: tuple[str, ...] = ()
    outputs: tuple[ModelOutput, ...] = ()


@dataclass(frozen=True, slots=True)
class LoggedModel:
    """An MLflow 3 logged model: a model artifact folder with its own id, tied to an experiment and maybe a run."""

    model_id: str
    experiment_id: str
    name: str
    artifact_location: str
    creation_timestamp: int
    last_updated_timestamp: int
    status: str
    status_message: str = ""
    model_type: str = ""
    source_run_id: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: tuple[Metric, ...] = ()


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What `TrackingStore.purge_deleted` removed."""

    experiments: int
    runs: int
    artifact_prefixes: tuple[str, ...] = ()
