"""Logging and loading models through a `TrackingBackend` (shared by the fluent API and `capstan.Client`).

Logging follows MLflow 3: a *logged model* with its own id gets an artifact folder
``mlflow-artifacts:/<experiment>/models/<model_id>/artifacts``, the run records it as an output, and with
``registered_model_name`` a registry version is created from it (lineage run -> version).

Model URIs: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/NAME/latest``, ``models:/<logged model
id>``, ``runs:/<run id>/<path>`` (a run artifact folder, or the run's logged model of that name), or a local folder.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capstan.errors import CapstanError, InvalidParameterValue, ResourceDoesNotExist
from capstan.sdk.backends import ArtifactOwner, TrackingBackend


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What `log_model` stored."""

    model_id: str
    name: str
    model_uri: str
    artifact_location: str
    run_id: str | None
    experiment_id: str
    flavors: tuple[str, ...]
    signature: Mapping[str, Any] | None = None
    registered_model_name: str | None = None
    registered_model_version: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def log_model(backend: TrackingBackend, model: Any, name: str, *, experiment_id: str, run_id: str | None,
              input_example: Any = None, signature: Any = None, registered_model_name: str | None = None,
              serialization_format: str | None = None, params: Mapping[str, str] | None = None,
              tags: Mapping[str, str] | None = None, step: int = 0, reference_data: Any = None,
              tokenizer: Any = None, base_model_uri: str | None = None) -> ModelInfo:
    """Save ``model`` as a logged model of ``experiment_id`` (output of ``run_id``) and optionally register it.

    A transformers model is logged with its ``tokenizer``; a peft LoRA adapter names its ``base_model_uri`` (see
    `capstan.models.transformers_flavor`).

    ``reference_data`` (the training data, or the input example: a DataFrame, a 2-D array or a mapping of columns)
    is profiled into ``reference_profile.json`` in the model folder, the reference that serving measures drift
    against (`capstan.serving.drift_monitor`).
    """
    from capstan.models import transformers_flavor
    from capstan.models.format import save_model

    if not name or "/" in name:
        raise InvalidParameterValue(f"name: {name!r} must be a non-empty model name without '/'")
    reference = None
    if reference_data is not None:
        from capstan.serving.drift_monitor import reference_from_data

        reference = reference_from_data(reference_data)
    model_type = transformers_flavor.FLAVOR_NAME if transformers_flavor.accepts(model) else "sklearn"
    logged = backend.create_logged_model(experiment_id, name=name, source_run_id=run_id, model_type=model_type,
                                         params=params, tags=tags)
    owner = ArtifactOwner.logged_model(logged.model_id)
    try:
        with tempfile.TemporaryDirectory(prefix="capstan-model-") as tmp:
            folder = Path(tmp) / "model"
            mlmodel = save_model(model, folder, input_example=input_example, signature=signature,
                                 serialization_format=serialization_format, model_id=logged.model_id,
                                 run_id=run_id, artifact_path=logged.artifact_location, tokenizer=tokenizer,
                                 base_model_uri=base_model_uri)
            if reference is not None:
                from capstan.serving.drift_monitor import write_reference

                write_reference(folder, reference)
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                backend.upload_artifact(owner, file.relative_to(folder).as_posix(), file)
    except BaseException:
        with contextlib.suppress(CapstanError):  # the original error is the one worth reporting
            backend.finalize_logged_model(logged.model_id, "FAILED")
        raise
    backend.finalize_logged_model(logged.model_id, "READY")
    if run_id is not None:
        backend.log_outputs(run_id, [(logged.model_id, step)])
    version: int | None = None
    if registered_model_name:
        version = register_model(backend, f"models:/{logged.model_id}", registered_model_name,
                                 run_id=run_id, model_id=logged.model_id).version
    return ModelInfo(model_id=logged.model_id, name=name, model_uri=f"models:/{logged.model_id}",
                     artifact_location=logged.artifact_location, run_id=run_id, experiment_id=experiment_id,
                     flavors=tuple(mlmodel["flavors"]), signature=mlmodel.get("signature"),
                     registered_model_name=registered_model_name or None, registered_model_version=version,
                     metadata=mlmodel)


def register_model(backend: TrackingBackend, source: str, name: str, *, run_id: str | None = None,
                   model_id: str | None = None, tags: Mapping[str, str] | None = None,
                   description: str = "") -> Any:
    """Create the registered model ``name`` if needed, then a new version from ``source``."""
    if source.startswith("runs:/") and run_id is None:
        run_id = source[len("runs:/"):].strip("/").split("/", 1)[0]
    if source.startswith("models:/") and model_id is None:
        candidate = source[len("models:/"):].strip("/")
        if "/" not in candidate and "@" not in candidate:
            model_id = candidate
    try:
        backend.get_registered_model(name)
    except ResourceDoesNotExist:
        try:
            backend.create_registered_model(name)
        except CapstanError as exc:
            if exc.code != "RESOURCE_ALREADY_EXISTS":  # a concurrent writer created it first: fine
                raise
    return backend.create_model_version(name, source=source, run_id=run_id, model_id=model_id, tags=tags,
                                        description=description)


def resolve_model_uri(backend: TrackingBackend, uri: str) -> tuple[ArtifactOwner, str]:
    """Where the files of the model at ``uri`` are: an artifact owner and a path below its root."""
    if uri.startswith("models:/"):
        rest = uri[len("models:/"):].strip("/")
        if "@" in rest:
            name, _, alias = rest.rpartition("@")
            if not name or not alias:
                raise InvalidParameterValue(f"model uri: {uri!r} is not models:/NAME@ALIAS")
            return ArtifactOwner.model_version(name, backend.get_version_by_alias(name, alias).version), ""
        if "/" in rest:
            name, _, version = rest.rpartition("/")
            if version.lower() == "latest":
                return ArtifactOwner.model_version(name, latest_version(backend, name)), ""
            if not version.isdigit():
                raise InvalidParameterValue(f"model uri: {uri!r} is not models:/NAME/VERSION (version a number)")
            return ArtifactOwner.model_version(name, int(version)), ""
        if not rest:
            raise InvalidParameterValue(f"model uri: {uri!r} names no model")
        return ArtifactOwner.logged_model(rest), ""
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
        if not run_id:
            raise InvalidParameterValue(f"model uri: {uri!r} is not runs:/RUN_ID/PATH")
        owner = ArtifactOwner.run(run_id)
        if path and backend.list_artifacts(owner, path):
            return owner, path
        # MLflow 3 keeps models outside the run's artifacts: runs:/RUN/NAME means the run's logged model NAME.
        run = backend.get_run(run_id)
        for output in reversed(run.outputs):
            logged = backend.get_logged_model(output.model_id)
            if not path or logged.name == path:
                return ArtifactOwner.logged_model(logged.model_id), ""
        if path:
            return owner, path
        raise ResourceDoesNotExist(f"run {run_id} has no logged model")
    raise InvalidParameterValue(
        f"model uri: {uri!r} is not models:/NAME@ALIAS, models:/NAME/VERSION, models:/MODEL_ID or runs:/RUN/PATH")


def latest_version(backend: TrackingBackend, name: str) -> int:
    """The highest version number of registered model ``name``."""
    escaped = name.replace("'", "\\'")
    versions = backend.search_model_versions(filter_string=f"name = '{escaped}'").items
    if not versions:
        backend.get_registered_model(name)  # raises ResourceDoesNotExist for an unknown name
        raise ResourceDoesNotExist(f"registered model {name!r} has no versions")
    return max(v.version for v in versions)


def download_model(backend: TrackingBackend, uri: str, dst_path: str | Path) -> Path:
    """Copy the model folder at ``uri`` into ``dst_path``; returns the folder holding ``MLmodel``."""
    owner, path = resolve_model_uri(backend, uri)
    dest = Path(dst_path)
    dest.mkdir(parents=True, exist_ok=True)
    local = backend.download_artifacts(owner, path, dest)
    if not (local / "MLmodel").is_file():
        raise InvalidParameterValue(f"model uri: {uri!r} does not point at a model folder (no MLmodel file)")
    return local


def load_model(backend: TrackingBackend, uri: str, *, as_pyfunc: bool = False,
               dst_path: str | Path | None = None) -> Any:
    """Download and load the model at ``uri`` (or a local model folder)."""
    from capstan.models.format import load_model_dir
    from capstan.models.pyfunc import PyFuncModel

    if not uri.startswith(("models:/", "runs:/")):
        local = Path(uri.removeprefix("file://"))
        if local.is_dir():
            return load_model_dir(local, as_pyfunc=as_pyfunc)
        raise InvalidParameterValue(
            f"model uri: {uri!r} is not models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH or a folder")
    if dst_path is not None:
        return load_model_dir(download_model(backend, uri, dst_path), as_pyfunc=as_pyfunc)
    tmp = tempfile.mkdtemp(prefix="capstan-load-")
    try:
        model = load_model_dir(download_model(backend, uri, tmp), as_pyfunc=as_pyfunc)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if isinstance(model, PyFuncModel):
        # The wrapper can still read the input example from its folder; remove the folder with the wrapper.
        weakref.finalize(model, shutil.rmtree, tmp, True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return model
