"""The scikit-learn flavor, laid out as MLflow's ``mlflow.sklearn`` does so either tool can load the other's models.

Serialisation formats: ``skops`` (safe; needs ``pip install skops``), ``cloudpickle`` and ``pickle``. The default is
``skops`` when it is installed, else ``pickle``. Loading a pickle or cloudpickle file runs code from the file: only
load models from sources you trust.
"""

from __future__ import annotations

import importlib.util
import pickle
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue

FLAVOR_NAME = "sklearn"
FORMATS = ("skops", "pickle", "cloudpickle")
_FILES = {"skops": "model.skops", "pickle": "model.pkl", "cloudpickle": "model.pkl"}


@dataclass(frozen=True, slots=True)
class SavedFlavor:
    """What a flavor wrote: its own MLmodel entry, the ``python_function`` entry and pip requirements."""

    flavor_conf: dict[str, Any]
    pyfunc_conf: dict[str, Any]
    requirements: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def accepts(model: object) -> bool:
    """True for scikit-learn estimators (including pipelines)."""
    if importlib.util.find_spec("sklearn") is None:
        return False
    from sklearn.base import BaseEstimator

    return isinstance(model, BaseEstimator)


def default_format() -> str:
    """``skops`` when installed, else ``pickle``."""
    return "skops" if importlib.util.find_spec("skops") is not None else "pickle"


class _HideTorch:
    """A meta-path finder under which ``import torch`` fails as if torch were not installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden while skops.io is imported)", name=name)


def _import_skops() -> Any:
    """``skops.io``, imported without torch when torch is not imported yet.

    Importing ``skops.io`` lists scikit-learn's estimators (``sklearn.utils.all_estimators``), which imports every
    public scikit-learn module, ``sklearn.externals.array_api_compat.torch`` among them, and with it torch when it
    is installed: seconds and ~180 MiB for a type list that holds no torch type. torch is hidden for that import
    only (``all_estimators`` skips a module that fails to import), so a later ``import torch`` works as usual.
    """
    hider = _HideTorch() if "torch" not in sys.modules else None
    if hider is not None:
        sys.meta_path.insert(0, hider)
    try:
        import skops.io
    except ImportError:
        raise InvalidParameterValue(
            "this model is stored in the skops format, which needs the skops package: pip install skops") from None
    finally:
        if hider is not None:
            sys.meta_path.remove(hider)
    return skops.io


def save(model: Any, path: Path, *, serialization_format: str | None = None) -> SavedFlavor:
    """Write ``model`` into the model folder ``path``; returns the MLmodel entries."""
    import sklearn

    fmt = serialization_format or default_format()
    if fmt not in FORMATS:
        raise InvalidParameterValue(f"serialization_format: {fmt!r} is not one of {', '.join(FORMATS)}")
    file = _FILES[fmt]
    trusted: list[str] | None = None
    requirements = [f"scikit-learn=={sklearn.__version__}"]
    if fmt == "skops":
        sio = _import_skops()
        sio.dump(model, path / file)
        # The caller built this model in-process, so its own types are trusted; recording them lets both Capstan
        # and MLflow load it again (MLflow passes `skops_trusted_types` to skops.io.load).
        trusted = list(sio.get_untrusted_types(file=path / file)) or None
        requirements.append(_pin("skops"))
    elif fmt == "cloudpickle":
        try:
            import cloudpickle
        except ImportError:
            raise InvalidParameterValue("serialization_format 'cloudpickle' needs: pip install cloudpickle") from None
        with open(path / file, "wb") as fh:
            cloudpickle.dump(model, fh)
        requirements.append(_pin("cloudpickle"))
    else:
        with open(path / file, "wb") as fh:
            pickle.dump(model, fh, protocol=pickle.DEFAULT_PROTOCOL)
    requirements += [_pin("numpy"), _pin("scipy")]
    flavor = {"code": None, "pickled_model": file, "serialization_format": fmt,
              "sklearn_version": sklearn.__version__, "skops_trusted_types": trusted}
    pyfunc = {"env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"}, "loader_module": "mlflow.sklearn",
              "model_path": file, "predict_fn": "predict", "python_version": platform.python_version()}
    return SavedFlavor(flavor, pyfunc, tuple(r for r in requirements if r))


PICKLE_FORMATS = ("pickle", "cloudpickle", "joblib")
"""Formats whose loading runs code from the file (Python's pickle underneath)."""


def model_file(path: Path, conf: Mapping[str, Any]) -> tuple[Path, str]:
    """The model file of model folder ``path`` and its serialization format, from the flavor entry ``conf``."""
    file = path / str(conf.get("pickled_model") or conf.get("model_path") or "model.pkl")
    default = {".skops": "skops", ".joblib": "joblib"}.get(file.suffix, "pickle")
    return file, str(conf.get("serialization_format") or default)


def load(path: Path, conf: Mapping[str, Any], *, trust_recorded_types: bool = True) -> Any:
    """Load the estimator from model folder ``path`` given its ``sklearn`` (or ``python_function``) entry.

    A skops file loads with skops' own trusted types plus those the logger recorded in ``skops_trusted_types``
    (only when ``trust_recorded_types``); any other type in the file is refused, naming it."""
    file, fmt = model_file(path, conf)
    if not file.is_file():
        raise InvalidParameterValue(f"model folder {str(path)!r} has no model file {file.name!r}")
    if fmt == "skops":
        return _load_skops(file, conf.get("skops_trusted_types") if trust_recorded_types else None)
    if fmt == "cloudpickle":
        try:
            import cloudpickle
        except ImportError:
            raise InvalidParameterValue(
                "this model is stored with cloudpickle, which needs: pip install cloudpickle") from None
        with open(file, "rb") as fh:
            return cloudpickle.load(fh)
    if fmt == "joblib":
        import joblib  # type: ignore[import-untyped]  # joblib ships no type information

        return joblib.load(file)  # only load models you trust (documented), as with MLflow
    if fmt == "pickle":
        with open(file, "rb") as fh:
            return pickle.load(fh)  # only load models you trust (documented), as with MLflow
    raise InvalidParameterValue(f"model file {file.name!r} uses the unknown serialization format {fmt!r}")


def _load_skops(file: Path, recorded: Any) -> Any:
    sio = _import_skops()
    trusted = [str(t) for t in recorded] if isinstance(recorded, list | tuple) else []
    untrusted = sorted(set(sio.get_untrusted_types(file=file)) - set(trusted))
    if untrusted:
        raise InvalidParameterValue(
            f"model file {file.name!r} holds types that are not trusted: {', '.join(untrusted)} (only skops' "
            "defaults and the skops_trusted_types recorded when the model was logged are trusted)")
    return sio.load(file, trusted=trusted or None)


def _pin(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{dist}=={version(dist)}"
    except PackageNotFoundError:
        return ""
