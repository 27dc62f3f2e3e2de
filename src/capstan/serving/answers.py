"""Reading predictions out of a replica's answer, and comparing two answers. Pure.

The router records what each version predicted (for A/B quality and shadow comparison) without knowing which of
the three protocols a client spoke, so `predictions_of` recognises the answer's shape:

- Open Inference Protocol v2: ``{"outputs": [{"shape": [...], "data": [...]}, ...]}`` (the first output), or the
  binary tensor extension (a JSON header of ``Inference-Header-Content-Length`` bytes, then the raw tensors);
- KServe v1 and MLflow scoring: ``{"predictions": [...]}`` (MLflow 1's bare list too).

Predictions come back as a list with one entry per row (a row of a 2-D output is itself a list).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

__all__ = ["disagree", "predictions_json", "predictions_of"]

_BINARY_DTYPES = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1", "INT16": "<i2",
    "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
_REL_TOL = 1e-9
_ABS_TOL = 1e-12


def predictions_of(body: bytes, *, header_length: int | None = None) -> list[Any] | None:
    """The predictions in a replica's successful answer ``body``, one per row; None when the body is not an answer
    this module recognises (an error, a metadata document, a BYTES tensor in binary form)."""
    try:
        if header_length is not None:
            if not 0 < header_length <= len(body):
                return None
            return _binary_answer(orjson.loads(body[:header_length]), memoryview(body)[header_length:])
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        return None
    if isinstance(document.get("predictions"), list):
        return list(document["predictions"])
    output = _first_output(document)
    if output is None or not isinstance(output.get("data"), list):
        return None
    return _rows(output["data"], output.get("shape"))


def predictions_json(predictions: list[Any] | None) -> str | None:
    """``predictions`` as JSON text for an `Outcome` (None stays None)."""
    return None if predictions is None else orjson.dumps(predictions, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def disagree(live: str | None, challenger: str | None) -> bool | None:
    """Whether two recorded predictions (JSON text) differ: floats beyond a relative tolerance of 1e-9, anything
    else by value, or a different number of rows. None when either side is unknown."""
    if live is None or challenger is None:
        return None
    try:
        return not _same(orjson.loads(live), orjson.loads(challenger))
    except orjson.JSONDecodeError:
        return None


def _first_output(document: dict[str, Any]) -> dict[str, Any] | None:
    outputs = document.get("outputs")
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        return None
    return outputs[0]


def _binary_answer(header: object, payload: memoryview) -> list[Any] | None:
    if not isinstance(header, dict):
        return None
    output = _first_output(header)
    if output is None:
        return None
    if isinstance(output.get("data"), list):
        return _rows(output["data"], output.get("shape"))
    parameters = output.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    dtype = _BINARY_DTYPES.get(str(output.get("datatype", "")))
    if not isinstance(size, int) or dtype is None or size > len(payload):
        return None
    try:
        flat = np.frombuffer(payload[:size], dtype=dtype)
    except ValueError:  # a size that is not a multiple of the item size: not an answer we can read
        return None
    return _rows(flat.tolist(), output.get("shape"))


def _rows(flat: list[Any], shape: object) -> list[Any]:
    """``flat`` (row-major data) as one entry per row of ``shape``."""
    if not isinstance(shape, list) or len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        return flat
    width = math.prod(shape[1:])
    if width <= 1 or len(flat) % width:
        return flat
    return [flat[i:i + width] for i in range(0, len(flat), width)]


def _same(a: object, b: object) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)
    return a == b
