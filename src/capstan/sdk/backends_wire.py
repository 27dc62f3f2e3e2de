"""JSON shapes of tracking and registry records on Capstan's ``/api/v1``, shared by the server and `HttpBackend`.

Field names equal the record attribute names. Non-finite metric values travel as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (JSON has no literal for them), as protobuf's JSON mapping does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from capstan.registry.records import ModelVersion, RegisteredModel
from capstan.sdk.backends import ArtifactInfo
from capstan.tracking.records import (
    DatasetInput,
    Experiment,
    LoggedModel,
    Metric,
    ModelOutput,
    Run,
    RunData,
    RunInfo,
)

JsonDict = dict[str, Any]


def encode_float(value: float) -> float | str:
    """``value`` as JSON: finite floats unchanged, NaN and infinities as strings."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def decode_float(value: float | int | str) -> float:
    """Inverse of `encode_float`."""
    return float(value)


# -- encoding ------------------------------------------------------------------------------------------
def experiment_to_json(exp: Experiment) -> JsonDict:
    return {"experiment_id": exp.experiment_id, "name": exp.name, "artifact_location": exp.artifact_location,
            "lifecycle_stage": exp.lifecycle_stage, "creation_time": exp.creation_time,
            "last_update_time": exp.last_update_time, "project": exp.project, "tags": dict(exp.tags)}


def metric_to_json(metric: Metric) -> JsonDict:
    return {"key": metric.key, "value": encode_float(metric.value), "timestamp": metric.timestamp,
            "step": metric.step}


def run_info_to_json(info: RunInfo) -> JsonDict:
    return {"run_id": info.run_id, "run_name": info.run_name, "experiment_id": info.experiment_id,
            "user_id": info.user_id, "status": info.status, "start_time": info.start_time,
            "end_time": info.end_time, "artifact_uri": info.artifact_uri, "lifecycle_stage": info.lifecycle_stage,
            "source": info.source, "git_commit": info.git_commit}


def run_to_json(run: Run) -> JsonDict:
    return {
        "info": run_info_to_json(run.info),
        "data": {"metrics": [metric_to_json(m) for m in run.data.metrics], "params": dict(run.data.params),
                 "tags": dict(run.data.tags)},
        "inputs": [{"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source,
                    "schema": d.schema, "profile": d.profile, "tags": dict(d.tags)} for d in run.inputs],
        "model_inputs": list(run.model_inputs),
        "outputs": [{"model_id": o.model_id, "step": o.step} for o in run.outputs],
    }


def logged_model_to_json(model: LoggedModel) -> JsonDict:
    return {"model_id": model.model_id, "experiment_id": model.experiment_id, "name": model.name,
            "artifact_location": model.artifact_location, "creation_timestamp": model.creation_timestamp,
            "last_updated_timestamp": model.last_updated_timestamp, "status": model.status,
            "status_message": model.status_message, "model_type": model.model_type,
            "source_run_id": model.source_run_id, "params": dict(model.params), "tags": dict(model.tags),
            "metrics": [metric_to_json(m) for m in model.metrics]}


def model_version_to_json(mv: ModelVersion) -> JsonDict:
    return {"name": mv.name, "version": mv.version, "creation_timestamp": mv.creation_timestamp,
            "last_updated_timestamp": mv.last_updated_timestamp, "source": mv.source,
            "storage_location": mv.storage_location, "run_id": mv.run_id, "run_link": mv.run_link,
            "model_id": mv.model_id, "description": mv.description, "user_id": mv.user_id, "status": mv.status,
            "status_message": mv.status_message, "current_stage": mv.current_stage, "tags": dict(mv.tags),
            "aliases": list(mv.aliases)}


def registered_model_to_json(rm: RegisteredModel) -> JsonDict:
    return {"name": rm.name, "creation_timestamp": rm.creation_timestamp,
            "last_updated_timestamp": rm.last_updated_timestamp, "project": rm.project,
            "description": rm.description, "tags": dict(rm.tags), "aliases": dict(rm.aliases),
            "latest_versions": [model_version_to_json(v) for v in rm.latest_versions]}


def artifact_info_to_json(info: ArtifactInfo) -> JsonDict:
    return {"path": info.path, "is_dir": info.is_dir, "size": info.size}


# -- decoding ------------------------------------------------------------------------------------------
def _tags(data: Mapping[str, Any], key: str = "tags") -> dict[str, str]:
    return {str(k): str(v) for k, v in (data.get(key) or {}).items()}


def experiment_from_json(d: Mapping[str, Any]) -> Experiment:
    return Experiment(experiment_id=str(d["experiment_id"]), name=d["name"],
                      artifact_location=d["artifact_location"], lifecycle_stage=d["lifecycle_stage"],
                      creation_time=int(d["creation_time"]), last_update_time=int(d["last_update_time"]),
                      project=d["project"], tags=_tags(d))


def metric_from_json(d: Mapping[str, Any]) -> Metric:
    return Metric(key=d["key"], value=decode_float(d["value"]), timestamp=int(d["timestamp"]),
                  step=int(d.get("step") or 0))


def run_info_from_json(d: Mapping[str, Any]) -> RunInfo:
    return RunInfo(run_id=d["run_id"], run_name=d["run_name"], experiment_id=str(d["experiment_id"]),
                   user_id=d.get("user_id") or "", status=d["status"], start_time=d.get("start_time"),
                   end_time=d.get("end_time"), artifact_uri=d["artifact_uri"],
                   lifecycle_stage=d["lifecycle_stage"], source=d.get("source") or "",
                   git_commit=d.get("git_commit") or "")


def run_from_json(d: Mapping[str, Any]) -> Run:
    data = d.get("data") or {}
    return Run(
        info=run_info_from_json(d["info"]),
        data=RunData(metrics=tuple(metric_from_json(m) for m in data.get("metrics") or ()),
                     params={str(k): str(v) for k, v in (data.get("params") or {}).items()},
                     tags=_tags(data)),
        inputs=tuple(DatasetInput(name=i["name"], digest=i["digest"], source_type=i.get("source_type", ""),
                                  source=i.get("source", ""), schema=i.get("schema", ""),
                                  profile=i.get("profile", ""), tags=_tags(i)) for i in d.get("inputs") or ()),
        model_inputs=tuple(d.get("model_inputs") or ()),
        outputs=tuple(ModelOutput(model_id=o["model_id"], step=int(o.get("step") or 0))
                      for o in d.get("outputs") or ()),
    )


def logged_model_from_json(d: Mapping[str, Any]) -> LoggedModel:
    return LoggedModel(model_id=d["model_id"], experiment_id=str(d["experiment_id"]), name=d["name"],
                       artifact_location=d["artifact_location"], creation_timestamp=int(d["creation_timestamp"]),
                       last_updated_timestamp=int(d["last_updated_timestamp"]), status=d["status"],
                       status_message=d.get("status_message") or "", model_type=d.get("model_type") or "",
                       source_run_id=d.get("source_run_id"), params=_tags(d, "params"), tags=_tags(d),
                       metrics=tuple(metric_from_json(m) for m in d.get("metrics") or ()))


def model_version_from_json(d: Mapping[str, Any]) -> ModelVersion:
    return ModelVersion(name=d["name"], version=int(d["version"]), creation_timestamp=int(d["creation_timestamp"]),
                        last_updated_timestamp=int(d["last_updated_timestamp"]), source=d["source"],
                        storage_location=d["storage_location"], run_id=d.get("run_id"),
                        run_link=d.get("run_link") or "", model_id=d.get("model_id"),
                        description=d.get("description") or "", user_id=d.get("user_id") or "",
                        status=d.get("status") or "READY", status_message=d.get("status_message") or "",
                        current_stage=d.get("current_stage") or "None", tags=_tags(d),
                        aliases=tuple(d.get("aliases") or ()))


def registered_model_from_json(d: Mapping[str, Any]) -> RegisteredModel:
    return RegisteredModel(name=d["name"], creation_timestamp=int(d["creation_timestamp"]),
                           last_updated_timestamp=int(d["last_updated_timestamp"]), project=d["project"],
                           description=d.get("description") or "", tags=_tags(d),
                           aliases={str(k): int(v) for k, v in (d.get("aliases") or {}).items()},
                           latest_versions=tuple(model_version_from_json(v)
                                                 for v in d.get("latest_versions") or ()))


def artifact_info_from_json(d: Mapping[str, Any]) -> ArtifactInfo:
    size = d.get("size")
    digest = d.get("digest")
    return ArtifactInfo(path=d["path"], is_dir=bool(d["is_dir"]), size=None if size is None else int(size),
                        digest=None if digest is None else str(digest))
