"""`FunctionServedModel`: any blocking ``predict`` function as a `ServedModel`, and the signature -> tensor helpers.

The format loaders (`capstan.serving.loading` and the ``served_*`` modules) turn an ONNX session, a TorchScript
module, a custom Python class or an MLflow pyfunc model into one of these: one input, one output, a platform string.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from capstan.errors import InvalidParameterValue
from capstan.serving.oip import DATATYPES, TensorMetadata, datatype_of

__all__ = ["FunctionServedModel", "column_names", "input_from_signature", "output_from_signature"]

Array = npt.NDArray[Any]

_COLUMN_DATATYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL"}
"""MLflow column types the serving app can carry as one numeric tensor."""


class FunctionServedModel:
    """A `ServedModel` whose ``predict`` is the given function (one input, one output)."""

    def __init__(self, name: str, version: str, platform: str, predict: Callable[[Array], Any],
                 input: TensorMetadata, output: TensorMetadata, *, ready: bool = True) -> None:
        self.name = name
        self.version = str(version)
        self.platform = platform
        self.ready = ready
        self.inputs: tuple[TensorMetadata, ...] = (input,)
        self.outputs: tuple[TensorMetadata, ...] = (output,)
        self._predict = predict

    def predict(self, x: Array) -> Array:
        """The wrapped function's predictions for the rows of ``x``, as an array."""
        return np.asarray(self._predict(x))


def _schema(signature: Mapping[str, Any] | None, key: str) -> list[dict[str, Any]] | None:
    raw = (signature or {}).get(key)
    if not raw:
        return None
    specs = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(specs, list) or not specs or not all(isinstance(s, dict) for s in specs):
        raise InvalidParameterValue(f"the model's signature has an invalid {key} schema")
    return specs


def _tensor(spec: Mapping[str, Any], fallback_name: str) -> TensorMetadata:
    tensor = spec.get("tensor-spec") or {}
    try:
        datatype = datatype_of(np.dtype(str(tensor.get("dtype"))))
    except (TypeError, ValueError):
        raise InvalidParameterValue(f"the model's signature has an unknown tensor dtype {tensor.get('dtype')!r}") \
            from None
    shape = tuple(int(d) for d in tensor.get("shape") or (-1,))
    return TensorMetadata(str(spec.get("name") or fallback_name), datatype, shape)


def _columns(specs: list[dict[str, Any]], fallback_name: str, what: str) -> TensorMetadata:
    kinds = [str(s.get("type")) for s in specs]
    unknown = sorted({k for k in kinds if k not in _COLUMN_DATATYPES})
    if unknown:
        raise InvalidParameterValue(
            f"the model's {what} has column types {', '.join(unknown)}; serving takes numeric columns only")
    types = {_COLUMN_DATATYPES[k] for k in kinds}
    datatype = types.pop() if len(types) == 1 else ("FP64" if types & {"FP64", "FP32"} else "INT64")
    return TensorMetadata(fallback_name, datatype, (-1, len(specs)))


def _from_schema(specs: list[dict[str, Any]], fallback_name: str, what: str) -> TensorMetadata:
    if all(s.get("type") == "tensor" for s in specs):
        if len(specs) != 1:
            raise InvalidParameterValue(f"the model's {what} has {len(specs)} tensors; serving takes one")
        return _tensor(specs[0], fallback_name)
    if any(s.get("type") == "tensor" for s in specs):
        raise InvalidParameterValue(f"the model's {what} mixes tensors and columns")
    return _columns(specs, fallback_name, what)


def input_from_signature(signature: Mapping[str, Any] | None) -> TensorMetadata | None:
    """The model's one input as the signature declares it (``None`` without an input schema): a tensor spec as is,
    numeric columns as one ``[-1, n_columns]`` tensor."""
    specs = _schema(signature, "inputs")
    return None if specs is None else _from_schema(specs, "input-0", "signature inputs")


def output_from_signature(signature: Mapping[str, Any] | None) -> TensorMetadata | None:
    """The model's first output as the signature declares it (``None`` without an output schema)."""
    specs = _schema(signature, "outputs")
    if specs is None:
        return None
    if all(s.get("type") == "tensor" for s in specs):
        return _tensor(specs[0], "output-0")
    kinds = {str(s.get("type")) for s in specs}
    datatype = _COLUMN_DATATYPES.get(kinds.pop(), "BYTES") if len(kinds) == 1 else "FP64"
    return TensorMetadata("output-0", datatype if datatype in DATATYPES else "FP64", (-1,))


def column_names(signature: Mapping[str, Any] | None) -> list[str] | None:
    """The input column names of a column-based signature (``None`` for tensors or no signature)."""
    specs = _schema(signature, "inputs")
    if specs is None or any(s.get("type") == "tensor" for s in specs):
        return None
    names = [s.get("name") for s in specs]
    return [str(n) for n in names] if all(names) else None
