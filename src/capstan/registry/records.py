"""Immutable records of the model registry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MODEL_VERSION_STATUSES = ("PENDING_REGISTRATION", "FAILED_REGISTRATION", "READY")
STAGES = ("None", "Staging", "Production", "Archived")


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One version of a registered model, created from a run's (or logged model's) artifact path."""

    name: str
    version: int
    creation_timestamp: int
    last_updated_timestamp: int
    source: str
    storage_location: str
    run_id: str | None = None
    run_link: str = ""
    model_id: str | None = None
    description: str = ""
    user_id: str = ""
    status: str = "READY"
    status_message: str = ""
    current_stage: str = "None"
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A named model with versions and aliases (``champion``, ``challenger``, ...)."""

    name: str
    creation_timestamp: int
    last_updated_timestamp: int
    project: str
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, int] = field(default_factory=dict)
    latest_versions: tuple[ModelVersion, ...] = ()
