"""Model signatures and input examples in MLflow's on-disk format (pure functions over numpy/pandas data).

A signature is stored in ``MLmodel`` as ``{"inputs": "<json>", "outputs": "<json>", "params": null}`` where each
JSON string is a list of column specs (``{"type": "double", "name": "x", "required": true}``) or tensor specs
(``{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from capstan.errors import InvalidParameterValue

EXAMPLE_FILE = "input_example.json"
SERVING_EXAMPLE_FILE = "serving_input_example.json"

# numpy dtype kind/size -> MLflow column type
_COLUMN_TYPES = {("f", 8): "double", ("f", 4): "float", ("i", 8): "long", ("i", 4): "integer",
                 ("i", 2): "integer", ("i", 1): "integer", ("u", 1): "integer", ("u", 2): "integer",
                 ("u", 4): "long", ("b", 1): "boolean"}


def _is_dataframe(data: object) -> bool:
    return type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame"


def _is_series(data: object) -> bool:
    return type(data).__module__.startswith("pandas") and type(data).__name__ == "Series"


def _column_type(dtype: Any, values: Any = None) -> str:
    kind, size = dtype.kind, dtype.itemsize
    if (kind, size) in _COLUMN_TYPES:
        return _COLUMN_TYPES[(kind, size)]
    if kind == "M":
        return "datetime"
    if kind in ("U", "T"):
        return "string"
    if kind == "S":
        return "binary"
    if kind == "O" and values is not None:
        sample = [v for v in values if v is not None][:100]
        if sample and all(isinstance(v, str) for v in sample):
            return "string"
        if sample and all(isinstance(v, bytes) for v in sample):
            return "binary"
        if sample and all(isinstance(v, bool) for v in sample):
            return "boolean"
    if str(dtype) in ("string", "str"):
        return "string"
    raise InvalidParameterValue(f"signature: cannot infer a column type for dtype {dtype}")


def infer_schema(data: Any) -> list[dict[str, Any]]:
    """The MLflow schema (a list of column or tensor specs) describing ``data``: a pandas DataFrame or Series,
    a numpy array, or a list convertible to one."""
    import numpy as np

    if _is_dataframe(data):
        return [{"type": _column_type(data[col].dtype, data[col].values), "name": str(col), "required": True}
                for col in data.columns]
    if _is_series(data):
        spec: dict[str, Any] = {"type": _column_type(data.dtype, data.values), "required": True}
        if data.name is not None:
            spec["name"] = str(data.name)
        return [spec]
    array = data if isinstance(data, np.ndarray) else np.asarray(data)
    if array.dtype.kind == "O":
        raise InvalidParameterValue("signature: cannot infer a tensor type for an array of Python objects")
    shape = [-1, *array.shape[1:]] if array.ndim else []
    return [{"type": "tensor", "tensor-spec": {"dtype": str(array.dtype), "shape": shape}}]


def infer_signature(inputs: Any, outputs: Any = None) -> dict[str, Any]:
    """An MLmodel ``signature`` entry for model inputs (and outputs, when given)."""
    return {"inputs": json.dumps(infer_schema(inputs)),
            "outputs": None if outputs is None else json.dumps(infer_schema(outputs)),
            "params": None}


def normalize_signature(signature: Any) -> dict[str, Any]:
    """Accept an MLmodel-style mapping (schemas as lists or JSON strings) or an object with ``to_dict()``
    (such as ``mlflow.models.ModelSignature``) and return the MLmodel ``signature`` entry."""
    if hasattr(signature, "to_dict"):
        signature = signature.to_dict()
    if not isinstance(signature, Mapping) or "inputs" not in signature:
        raise InvalidParameterValue("signature: expected a mapping with 'inputs' (and optionally 'outputs')")
    out: dict[str, Any] = {"inputs": None, "outputs": None, "params": None}
    for key in ("inputs", "outputs", "params"):
        value = signature.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            try:
                json.loads(value)
            except ValueError:
                raise InvalidParameterValue(f"signature: {key} is not valid JSON") from None
            out[key] = value
        else:
            out[key] = json.dumps(value)
    return out


@dataclass(frozen=True, slots=True)
class SavedExample:
    """An input example serialised the way MLflow stores it."""

    info: dict[str, Any]
    example_json: str
    serving_json: str


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def serialize_example(example: Any) -> SavedExample:
    """``input_example.json`` and ``serving_input_example.json`` for a DataFrame, array or list example."""
    import numpy as np

    info: dict[str, Any] = {"artifact_path": EXAMPLE_FILE, "serving_input_path": SERVING_EXAMPLE_FILE}
    if _is_dataframe(example):
        split = {"columns": [str(c) for c in example.columns],
                 "data": [_clean(row) for row in example.astype(object).values.tolist()]}
        info.update({"type": "dataframe", "pandas_orient": "split"})
        return SavedExample(info, json.dumps(split), json.dumps({"dataframe_split": split}, indent=2))
    array = example if isinstance(example, np.ndarray) else np.asarray(example)
    if array.dtype.kind == "O":
        raise InvalidParameterValue("input_example: expected a pandas DataFrame, a numpy array or a list of rows")
    data = _clean(array.tolist())
    info["type"] = "ndarray"
    return SavedExample(info, json.dumps(data), json.dumps({"inputs": data}, indent=2))


def load_example(model_dir: Any, info: Mapping[str, Any]) -> Any:
    """The input example saved with a model (a DataFrame for ``dataframe`` examples, else a numpy array)."""
    from pathlib import Path

    path = Path(model_dir) / str(info.get("artifact_path", EXAMPLE_FILE))
    data = json.loads(path.read_text())
    if info.get("type") == "dataframe":
        import pandas as pd

        return pd.DataFrame(data["data"], columns=data["columns"])
    import numpy as np

    return np.asarray(data)
