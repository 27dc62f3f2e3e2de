"""The ``capstan_python`` flavor: a model that is your own Python class with ``load()`` and ``predict()``.

A model folder of this flavor holds::

    MLmodel        flavors: {capstan_python: {class: "my_model:MyModel", code: code, data: data}}
    code/          the Python files (modules or packages) that define the class; put first on sys.path to load
    data/          optional files the class reads in load() (weights, vocabularies...)

To load it, Capstan imports ``module`` from ``code/``, builds ``MyModel()`` with no arguments, calls
``load(data_dir)`` once with the ``data/`` folder (the model folder when there is none), then ``predict(x)`` with a
numpy array of rows for each request (return one prediction per row). Loading runs the class's code, so it happens
only for models from the registry, a run or a folder the user named on the command line (see
``docs/serving-models.md``).
"""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue

FLAVOR_NAME = "capstan_python"
CODE_DIR = "code"
DATA_DIR = "data"


def _class_ref(model_class: type | str) -> tuple[str, Path | None]:
    """``module:QualName`` of ``model_class`` and, for a class object, the file that defines its module."""
    if isinstance(model_class, str):
        module, sep, qualname = model_class.partition(":")
        if not sep or not module or not qualname:
            raise InvalidParameterValue(f"model_class: {model_class!r} is not 'module:ClassName'")
        return model_class, None
    module_name = model_class.__module__
    if module_name == "__main__":
        raise InvalidParameterValue(
            "model_class: a class defined in __main__ cannot be imported again; define it in its own module")
    source = inspect.getsourcefile(sys.modules[module_name])
    return f"{module_name}:{model_class.__qualname__}", Path(source) if source else None


def _check_methods(model_class: type | str) -> None:
    if isinstance(model_class, type):
        missing = [m for m in ("load", "predict") if not callable(getattr(model_class, m, None))]
        if missing:
            raise InvalidParameterValue(f"model_class: {model_class.__name__} has no {' or '.join(missing)} method")


def save_model(model_class: type | str, path: str | Path, *, code_paths: Sequence[str | Path] = (),
               data_path: str | Path | None = None, signature: Any = None,
               metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write a ``capstan_python`` model folder at ``path`` (new or empty); returns the ``MLmodel`` content.

    ``model_class`` is the class or ``"module:ClassName"``. ``code_paths`` are the files and folders copied into
    ``code/`` (default: the file defining the class's module). ``data_path`` is a file or folder copied into
    ``data/``. ``signature`` is an MLmodel-style mapping or an ``mlflow.models.ModelSignature``; its input schema
    becomes the served input (else the loaded object's ``n_features_in_``, else FP64 rows of any width).
    """
    import yaml

    from capstan.models.signature import normalize_signature

    ref, source = _class_ref(model_class)
    _check_methods(model_class)
    sources = [Path(p) for p in code_paths] or ([source] if source else [])
    if not sources:
        raise InvalidParameterValue("code_paths: name the files that define the class (it has no source file)")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise InvalidParameterValue(f"path: model folder {str(folder)!r} is not empty")
    code = folder / CODE_DIR
    code.mkdir()
    for item in sources:
        if item.is_dir():
            shutil.copytree(item, code / item.name, ignore=shutil.ignore_patterns("__pycache__"))
        elif item.is_file():
            shutil.copy2(item, code / item.name)
        else:
            raise InvalidParameterValue(f"code_paths: {str(item)!r} does not exist")
    data = None
    if data_path is not None:
        src = Path(data_path)
        if src.is_dir():
            shutil.copytree(src, folder / DATA_DIR)
        elif src.is_file():
            (folder / DATA_DIR).mkdir()
            shutil.copy2(src, folder / DATA_DIR / src.name)
        else:
            raise InvalidParameterValue(f"data_path: {str(src)!r} does not exist")
        data = DATA_DIR
    mlmodel: dict[str, Any] = {
        "flavors": {FLAVOR_NAME: {"class": ref, "code": CODE_DIR, "data": data}},
        "utc_time_created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
    }
    if signature is not None:
        mlmodel["signature"] = normalize_signature(signature)
    if metadata:
        mlmodel["metadata"] = dict(metadata)
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=True, default_flow_style=False))
    return mlmodel


def load_instance(folder: Path, conf: Mapping[str, Any]) -> Any:
    """Import the class named by the flavor entry ``conf`` from ``folder``'s code folder, build it and call
    ``load(data_dir)``. Runs the model's code: call it only for trusted sources."""
    ref = str(conf.get("class") or "")
    module_name, sep, qualname = ref.partition(":")
    if not sep or not module_name or not qualname:
        raise InvalidParameterValue(f"the {FLAVOR_NAME} flavor names no class as 'module:ClassName' (got {ref!r})")
    code = folder / str(conf.get("code") or CODE_DIR)
    if code.is_dir() and str(code) not in sys.path:
        sys.path.insert(0, str(code))
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise InvalidParameterValue(f"cannot import the model class {ref!r}: {exc}") from None
    instance = target()
    if not callable(getattr(instance, "predict", None)):
        raise InvalidParameterValue(f"the model class {ref!r} has no predict method")
    data = conf.get("data")
    loader = getattr(instance, "load", None)
    if callable(loader):
        loader(folder / str(data) if data else folder)
    return instance
