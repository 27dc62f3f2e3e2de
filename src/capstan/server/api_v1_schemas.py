"""Pydantic models of Capstan's ``/api/v1`` request and response bodies (they make the OpenAPI document useful).

Responses are rendered with orjson from the records (`capstan.tracking.backends_wire`); these models describe the
same shapes. Non-finite metric values travel as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_PAGE = 50_000


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- shared pieces ------------------------------------------------------------------------------------------
class KeyValue(_In):
    """A tag or parameter."""

    key: str = Field(min_length=1, max_length=250)
    value: str


class MetricIn(_In):
    """One metric point. ``value`` may be a number or ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""

    key: str = Field(min_length=1, max_length=250)
    value: float
    timestamp: int
    step: int = 0


class TagValue(_In):
    """The value of a tag set with PUT."""

    value: str


class MetricOut(BaseModel):
    key: str
    value: float | str
    timestamp: int
    step: int


# -- experiments --------------------------------------------------------------------------------------------
class ExperimentCreate(_In):
    name: str = Field(min_length=1, max_length=500)
    artifact_location: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class ExperimentUpdate(_In):
    name: str = Field(min_length=1, max_length=500)


class ExperimentCreated(BaseModel):
    experiment_id: str


class ExperimentOut(BaseModel):
    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str
    creation_time: int
    last_update_time: int
    project: str
    tags: dict[str, str]


class ExperimentList(BaseModel):
    experiments: list[ExperimentOut]
    next_page_token: str | None = None


# -- runs ---------------------------------------------------------------------------------------------------
class RunCreate(_In):
    experiment_id: str = Field(min_length=1)
    run_name: str | None = Field(default=None, max_length=250)
    tags: list[KeyValue] = Field(default_factory=list)
    start_time: int | None = None
    user_id: str = ""
    source: str = ""
    git_commit: str = ""


class RunUpdate(_In):
    status: str | None = None
    end_time: int | None = None
    run_name: str | None = Field(default=None, max_length=250)


class RunSearch(_In):
    experiment_ids: list[str] = Field(min_length=1)
    filter: str = ""
    view_type: str = "ACTIVE_ONLY"
    max_results: int = Field(default=1000, ge=1, le=MAX_PAGE)
    order_by: list[str] = Field(default_factory=list)
    page_token: str | None = None


class LogBatch(_In):
    metrics: list[MetricIn] = Field(default_factory=list)
    params: list[KeyValue] = Field(default_factory=list)
    tags: list[KeyValue] = Field(default_factory=list)


class MetricsBatch(_In):
    """Metric points of several runs, keyed by run id (what the SDK's background writer sends)."""

    runs: dict[str, list[MetricIn]]


class ModelOutputIn(_In):
    model_id: str = Field(min_length=1)
    step: int = 0


class RunOutputs(_In):
    models: list[ModelOutputIn] = Field(min_length=1)


class RunInfoOut(BaseModel):
    run_id: str
    run_name: str
    experiment_id: str
    user_id: str
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    lifecycle_stage: str
    source: str
    git_commit: str


class RunInfoEnvelope(BaseModel):
    info: RunInfoOut


class RunDataOut(BaseModel):
    metrics: list[MetricOut]
    params: dict[str, str]
    tags: dict[str, str]


class DatasetInputOut(BaseModel):
    name: str
    digest: str
    source_type: str
    source: str
    schema_: str = Field(alias="schema")
    profile: str
    tags: dict[str, str]


class ModelOutputOut(BaseModel):
    model_id: str
    step: int


class RunOut(BaseModel):
    info: RunInfoOut
    data: RunDataOut
    inputs: list[DatasetInputOut]
    model_inputs: list[str]
    outputs: list[ModelOutputOut]


class RunList(BaseModel):
    runs: list[RunOut]
    next_page_token: str | None = None


class MetricHistory(BaseModel):
    metrics: list[MetricOut]
    next_page_token: str | None = None


# -- logged models ------------------------------------------------------------------------------------------
class LoggedModelCreate(_In):
    experiment_id: str = Field(min_length=1)
    name: str | None = Field(default=None, max_length=256)
    source_run_id: str | None = None
    model_type: str = ""
    params: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)


class LoggedModelUpdate(_In):
    status: str = Field(description="READY or FAILED")


class LoggedModelSearch(_In):
    experiment_ids: list[str] = Field(min_length=1)
    filter: str = ""
    max_results: int = Field(default=100, ge=1, le=MAX_PAGE)
    page_token: str | None = None


class LoggedModelOut(BaseModel):
    model_id: str
    experiment_id: str
    name: str
    artifact_location: str
    creation_timestamp: int
    last_updated_timestamp: int
    status: str
    status_message: str
    model_type: str
    source_run_id: str | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: list[MetricOut]


class LoggedModelList(BaseModel):
    models: list[LoggedModelOut]
    next_page_token: str | None = None


# -- artifacts ----------------------------------------------------------------------------------------------
class ArtifactInfoOut(BaseModel):
    path: str
    is_dir: bool
    size: int | None


class ArtifactList(BaseModel):
    files: list[ArtifactInfoOut]


# -- registry -----------------------------------------------------------------------------------------------
class RegisteredModelCreate(_In):
    name: str = Field(min_length=1, max_length=256)
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class RegisteredModelUpdate(_In):
    name: str | None = Field(default=None, min_length=1, max_length=256, description="a new name")
    description: str | None = None


class ModelVersionCreate(_In):
    source: str = Field(min_length=1)
    run_id: str | None = None
    model_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    description: str = ""


class ModelVersionUpdate(_In):
    description: str


class AliasSet(_In):
    version: int = Field(ge=1)


class ModelVersionOut(BaseModel):
    name: str
    version: int
    creation_timestamp: int
    last_updated_timestamp: int
    source: str
    storage_location: str
    run_id: str | None
    run_link: str
    model_id: str | None
    description: str
    user_id: str
    status: str
    status_message: str
    current_stage: str
    tags: dict[str, str]
    aliases: list[str]


class ModelVersionList(BaseModel):
    model_versions: list[ModelVersionOut]
    next_page_token: str | None = None


class RegisteredModelOut(BaseModel):
    name: str
    creation_timestamp: int
    last_updated_timestamp: int
    project: str
    description: str
    tags: dict[str, str]
    aliases: dict[str, int]
    latest_versions: list[ModelVersionOut]


class RegisteredModelList(BaseModel):
    registered_models: list[RegisteredModelOut]
    next_page_token: str | None = None
