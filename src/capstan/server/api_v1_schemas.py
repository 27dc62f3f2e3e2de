"""Pydantic models of Capstan's ``/api/v1`` request and response bodies (they make the OpenAPI document useful).

Responses are rendered with orjson from the records (`capstan.sdk.backends_wire`); these models describe the
same shapes. Non-finite metric values travel as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``.

Request bodies are strict (``true`` is a boolean, ``0.0`` is not; ``"5"`` is not an integer) and their limits are
the stores' own constants, so the document promises exactly what the stores accept. Every integer is bounded to
a signed 64-bit value (or the store's tighter limit): the database never sees a number it cannot hold.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from capstan.names import NAME_PATTERN
from capstan.store import registry_checks as registry_limits
from capstan.store.tracking_validation import (
    MAX_EXPERIMENT_TAG_VALUE_LENGTH,
    MAX_INT32,
    MAX_INT64,
    MAX_KEY_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    MAX_RUN_NAME_LENGTH,
    MAX_SEARCH_RESULTS,
    MAX_TAG_VALUE_LENGTH,
)

MAX_PAGE = MAX_SEARCH_RESULTS
MAX_MODELS_PAGE = registry_limits.MAX_MODELS_PER_PAGE
MAX_VERSIONS_PAGE = registry_limits.MAX_VERSIONS_PER_PAGE
MAX_HISTORY_PAGE = MAX_INT32



def _integral(value: object) -> object:
    """JSON Schema counts ``5.0`` as an integer, so a strict integer field accepts it too (but not ``5.5``,
    ``"5"`` or ``true``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


INTEGRAL = BeforeValidator(_integral)
"""Put last in ``Annotated[int, Field(...), INTEGRAL]`` (after the bounds, or they leave the JSON schema)."""
# 64-bit bounds are written as exclusive powers of two: FastAPI's document holds bounds as floats, and 2**63 is
# one exactly (2**63 - 1 is not; `capstan.server.errors.document_errors` turns them back into integers).
INT64_END = MAX_INT64 + 1
Timestamp = Annotated[int, Field(ge=0, lt=INT64_END, description="milliseconds since the Unix epoch"), INTEGRAL]
Step = Annotated[int, Field(gt=-INT64_END, lt=INT64_END), INTEGRAL]
VersionNumber = Annotated[int, Field(ge=1, lt=INT64_END), INTEGRAL]
VersionPath = Annotated[int, Path(ge=1, lt=INT64_END, description="a model version number")]
"""A ``{version}`` path parameter: a positive 64-bit integer."""
Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_LENGTH)]
TagKey = Annotated[str, Field(min_length=1, max_length=registry_limits.MAX_TAG_KEY_LENGTH)]
RunTagValue = Annotated[str, Field(max_length=MAX_TAG_VALUE_LENGTH)]
ExperimentTagValue = Annotated[str, Field(max_length=MAX_EXPERIMENT_TAG_VALUE_LENGTH)]
RegistryTagValue = Annotated[str, Field(max_length=registry_limits.MAX_TAG_VALUE_LENGTH)]
ExperimentName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)]
RunName = Annotated[str, Field(max_length=MAX_RUN_NAME_LENGTH, pattern=NAME_PATTERN)]
ModelName = Annotated[str, Field(min_length=1, max_length=registry_limits.MAX_NAME_LENGTH, pattern=NAME_PATTERN)]
MetricValue = float | Literal["NaN", "Infinity", "-Infinity"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- shared pieces ------------------------------------------------------------------------------------------
class KeyValue(_In):
    """A run tag (a value of at most 8,000 characters)."""

    key: Key
    value: RunTagValue


class ParamIn(_In):
    """A parameter (a value of at most 6,000 characters)."""

    key: Key
    value: Annotated[str, Field(max_length=MAX_PARAM_VALUE_LENGTH)]


class MetricIn(_In):
    """One metric point. ``value`` may be a number or ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""

    key: Key
    value: MetricValue
    timestamp: Timestamp
    step: Step = 0

    def number(self) -> float:
        """The value as a float (``"NaN"`` and the infinities included)."""
        return float(self.value)


class TagValue(_In):
    """The value of a tag set with PUT (the store of the tagged object checks its length)."""

    value: str


class MetricOut(BaseModel):
    key: str
    value: float | str
    timestamp: int
    step: int


# -- experiments --------------------------------------------------------------------------------------------
class ExperimentCreate(_In):
    name: ExperimentName
    artifact_location: str | None = None
    tags: dict[Key, ExperimentTagValue] = Field(default_factory=dict)


class ExperimentUpdate(_In):
    name: ExperimentName


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
    run_name: RunName | None = None
    tags: list[KeyValue] = Field(default_factory=list)
    start_time: Timestamp | None = None
    user_id: str = Field(default="", max_length=MAX_NAME_LENGTH)
    source: str = ""
    git_commit: str = Field(default="", max_length=64)


class RunUpdate(_In):
    status: Literal["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"] | None = None
    end_time: Timestamp | None = None
    run_name: RunName | None = None


class RunSearch(_In):
    experiment_ids: list[str] = Field(min_length=1)
    filter: str = ""
    view_type: str = "ACTIVE_ONLY"
    max_results: Annotated[int, Field(ge=1, le=MAX_PAGE), INTEGRAL] = 1000
    order_by: list[str] = Field(default_factory=list)
    page_token: str | None = None


class LogBatch(_In):
    metrics: list[MetricIn] = Field(default_factory=list)
    params: list[ParamIn] = Field(default_factory=list)
    tags: list[KeyValue] = Field(default_factory=list)


class MetricsBatch(_In):
    """Metric points of several runs, keyed by run id (what the SDK's background writer sends)."""

    runs: dict[str, list[MetricIn]]


class ModelOutputIn(_In):
    model_id: str = Field(min_length=1)
    step: Step = 0


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
    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)] | None = None
    source_run_id: str | None = None
    model_type: str = Field(default="", max_length=256)
    params: dict[Key, Annotated[str, Field(max_length=MAX_PARAM_VALUE_LENGTH)]] = Field(default_factory=dict)
    tags: dict[Key, RunTagValue] = Field(default_factory=dict)


class LoggedModelUpdate(_In):
    status: Literal["READY", "FAILED"]


class LoggedModelSearch(_In):
    experiment_ids: list[str] = Field(min_length=1)
    filter: str = ""
    max_results: Annotated[int, Field(ge=1, le=MAX_PAGE), INTEGRAL] = 100
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
    digest: str | None = Field(default=None, description="sha256 of a file's content, with ?digests=true")


class ArtifactList(BaseModel):
    files: list[ArtifactInfoOut]


# -- registry -----------------------------------------------------------------------------------------------
class RegisteredModelCreate(_In):
    name: ModelName
    description: str = ""
    tags: dict[TagKey, RegistryTagValue] = Field(default_factory=dict)


class RegisteredModelUpdate(_In):
    name: ModelName | None = Field(default=None, description="a new name")
    description: str | None = None


class ModelVersionCreate(_In):
    source: str = Field(min_length=1)
    run_id: str | None = Field(default=None, max_length=32)
    model_id: str | None = Field(default=None, max_length=64)
    tags: dict[TagKey, RegistryTagValue] = Field(default_factory=dict)
    description: str = ""


class ModelVersionUpdate(_In):
    description: str


class AliasSet(_In):
    version: VersionNumber


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
