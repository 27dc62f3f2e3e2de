"""Python-code models: Capstan's ``capstan_python`` class flavor, and MLflow pyfunc models through mlflow.

Both run code from the model folder (an import, or unpickling), so `capstan.serving.loading` calls them only for
trusted sources. An MLflow ``python_function`` model without a flavor Capstan reads natively (a pickled
``mlflow.pyfunc.PythonModel``, an eager PyTorch module...) is unpickled by mlflow itself: it loads when mlflow is
installed, and is refused with a message naming mlflow otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from capstan.errors import InvalidParameterValue
from capstan.models import python_class
from capstan.serving.oip import TensorMetadata
from capstan.serving.served_function import (
    Array,
    FunctionServedModel,
    column_names,
    input_from_signature,
    output_from_signature,
)

PLATFORM = "python"


def _io(signature: Mapping[str, Any] | None, native: Any) -> tuple[TensorMetadata, TensorMetadata]:
    declared = input_from_signature(signature)
    if declared is None:
        width = getattr(native, "n_features_in_", None)
        declared = TensorMetadata("input-0", "FP64", (-1, width if isinstance(width, int) and width > 0 else -1))
    return declared, output_from_signature(signature) or TensorMetadata("output-0", "FP64", (-1,))


def load_python_class(folder: Path, conf: Mapping[str, Any], *, name: str, version: str,
                      signature: Mapping[str, Any] | None) -> FunctionServedModel:
    """The ``capstan_python`` model in ``folder``: its class built and loaded, ``predict`` served."""
    instance = python_class.load_instance(folder, conf)
    served_input, output = _io(signature, instance)
    return FunctionServedModel(name, version, PLATFORM, instance.predict, served_input, output)


def load_mlflow_pyfunc(folder: Path, flavors: Mapping[str, Any], *, name: str, version: str,
                       signature: Mapping[str, Any] | None) -> FunctionServedModel:
    """A ``python_function`` model loaded by ``mlflow.pyfunc.load_model`` (mlflow must be installed)."""
    loader = (flavors.get("python_function") or {}).get("loader_module") or "?"
    try:
        import mlflow.pyfunc
    except ImportError:
        raise InvalidParameterValue(
            f"model {name!r} is an MLflow pyfunc model (flavors: {', '.join(sorted(flavors))}; loader {loader}) "
            "that only mlflow can unpickle: pip install mlflow, or log it in a format Capstan reads without "
            "mlflow (sklearn, ONNX, TorchScript, or a capstan_python class)") from None

    model = mlflow.pyfunc.load_model(str(folder))
    served_input, output = _io(signature, None)
    columns = column_names(signature)

    def predict(x: Array) -> Array:
        data: Any = x
        if columns is not None and x.ndim == 2 and x.shape[1] == len(columns):
            import pandas as pd

            data = pd.DataFrame(x, columns=columns)
        return np.asarray(model.predict(data))

    return FunctionServedModel(name, version, PLATFORM, predict, served_input, output)
