"""The model folder format: an ``MLmodel`` YAML file next to the serialised model, requirements and an example.

The layout follows MLflow's (``flavors.python_function`` + a native flavor, ``signature``,
``saved_input_example_info``, ``requirements.txt``, ``python_env.yaml``, ``conda.yaml``), so MLflow's
``mlflow.pyfunc.load_model`` reads models Capstan saved and `load_model_dir` reads models MLflow saved.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.models import sklearn as sklearn_flavor
from capstan.models import transformers_flavor
from capstan.models.pyfunc import PyFuncModel
from capstan.models.signature import infer_signature, normalize_signature, serialize_example

MLMODEL_FILE = "MLmodel"


def _capstan_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("capstan")
    except PackageNotFoundError:
        return "0+unknown"


def save_model(model: Any, path: str | Path, *, input_example: Any = None, signature: Any = None,
               serialization_format: str | None = None, model_id: str | None = None, run_id: str | None = None,
               artifact_path: str | None = None, metadata: Mapping[str, Any] | None = None, tokenizer: Any = None,
               base_model_uri: str | None = None) -> dict[str, Any]:
    """Write ``model`` into the empty (or new) folder ``path``; returns the ``MLmodel`` content.

    ``signature``: ``None`` infers it from ``input_example`` (and the model's predictions on it), ``False``
    stores none, or pass an MLmodel-style mapping / an ``mlflow.models.ModelSignature``. ``tokenizer`` and
    ``base_model_uri`` are for language models (`capstan.models.transformers_flavor`).
    """
    import yaml

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise InvalidParameterValue(f"path: model folder {str(folder)!r} is not empty")
    if transformers_flavor.accepts(model):
        saved = transformers_flavor.save(model, folder, tokenizer=tokenizer, base_model_uri=base_model_uri)
        flavors = {transformers_flavor.FLAVOR_NAME: saved.flavor_conf}
    elif sklearn_flavor.accepts(model):
        saved = sklearn_flavor.save(model, folder, serialization_format=serialization_format)
        flavors = {"python_function": saved.pyfunc_conf, sklearn_flavor.FLAVOR_NAME: saved.flavor_conf}
    else:
        raise InvalidParameterValue(
            f"model: {type(model).__name__} is not a supported model type (supported: scikit-learn estimators, "
            "transformers models with their tokenizer, sentence-transformers models, peft LoRA adapters)")
    mlmodel: dict[str, Any] = {
        "artifact_path": artifact_path or str(folder),
        "flavors": flavors,
        "capstan_version": _capstan_version(),
        "is_signature_from_type_hint": False,
        "model_id": model_id,
        "model_uuid": model_id,
        "run_id": run_id,
        "utc_time_created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
    }
    if input_example is not None:
        example = serialize_example(input_example)
        (folder / example.info["artifact_path"]).write_text(example.example_json)
        (folder / example.info["serving_input_path"]).write_text(example.serving_json)
        mlmodel["saved_input_example_info"] = example.info
    if signature is None and input_example is not None:
        predict = getattr(model, str(saved.pyfunc_conf.get("predict_fn", "predict")), None)
        outputs = None
        if predict is not None:
            try:
                outputs = predict(input_example)
            except Exception:  # noqa: BLE001  # an example the model rejects still yields an input schema
                outputs = None
        mlmodel["signature"] = infer_signature(input_example, outputs)
    elif signature is not None and signature is not False:
        mlmodel["signature"] = normalize_signature(signature)
    if metadata:
        mlmodel["metadata"] = dict(metadata)
    _write_environment(folder, saved.requirements)
    mlmodel["model_size_bytes"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    (folder / MLMODEL_FILE).write_text(yaml.safe_dump(mlmodel, sort_keys=True, default_flow_style=False))
    return mlmodel


def _write_environment(folder: Path, requirements: tuple[str, ...]) -> None:
    import yaml

    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    python = platform.python_version()
    (folder / "python_env.yaml").write_text(yaml.safe_dump(
        {"python": python, "build_dependencies": ["pip", "setuptools", "wheel"],
         "dependencies": ["-r requirements.txt"]}, sort_keys=False))
    (folder / "conda.yaml").write_text(yaml.safe_dump(
        {"channels": ["conda-forge"], "dependencies": [f"python={python}", "pip", {"pip": list(requirements)}],
         "name": "capstan-env"}, sort_keys=False))


def read_mlmodel(path: str | Path) -> dict[str, Any]:
    """The parsed ``MLmodel`` file of the model folder ``path``."""
    import yaml

    file = Path(path) / MLMODEL_FILE
    if not file.is_file():
        raise InvalidParameterValue(f"{str(path)!r} is not a model folder: it has no MLmodel file")
    data = yaml.safe_load(file.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict):
        raise InvalidParameterValue(f"{str(file)!r} is not a valid MLmodel file (no flavors)")
    return data


def load_model_dir(path: str | Path, *, as_pyfunc: bool = False) -> Any:
    """Load the model in folder ``path``: the native object (e.g. a scikit-learn estimator; a transformers pipeline
    or a SentenceTransformer for the ``transformers`` flavor), or a `PyFuncModel` wrapper when ``as_pyfunc`` is true
    or no native flavor Capstan knows is present."""
    folder = Path(path)
    mlmodel = read_mlmodel(folder)
    flavors: dict[str, Any] = mlmodel["flavors"]
    pyfunc_conf = flavors.get("python_function") or {}
    predict_fn = str(pyfunc_conf.get("predict_fn") or "predict")
    if transformers_flavor.FLAVOR_NAME in flavors and not pyfunc_conf:
        if as_pyfunc:
            raise InvalidParameterValue("as_pyfunc: a language model has no pyfunc form; load it without as_pyfunc "
                                        "(a transformers pipeline) or serve it (capstan serve)")
        return transformers_flavor.load(folder, flavors[transformers_flavor.FLAVOR_NAME])
    if sklearn_flavor.FLAVOR_NAME in flavors:
        native = sklearn_flavor.load(folder, flavors[sklearn_flavor.FLAVOR_NAME])
    elif pyfunc_conf.get("loader_module") == "mlflow.sklearn":
        native = sklearn_flavor.load(folder, pyfunc_conf)
    else:
        return _load_with_mlflow(folder, flavors)
    if as_pyfunc:
        return PyFuncModel(native, mlmodel, path=folder, predict_fn=predict_fn)
    return native


def _load_with_mlflow(folder: Path, flavors: Mapping[str, Any]) -> Any:
    """Models of flavors Capstan does not implement load through MLflow's pyfunc loader when it is installed."""
    import importlib.util

    if "python_function" not in flavors or importlib.util.find_spec("mlflow") is None:
        raise InvalidParameterValue(
            f"cannot load a model with flavors {sorted(flavors)}: Capstan loads scikit-learn models; "
            "other python_function models need: pip install mlflow")
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(folder))
