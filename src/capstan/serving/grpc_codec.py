"""OIP v2 gRPC tensors to numpy and back: ``ModelInferRequest`` inputs in, a ``ModelInferResponse`` out.

An input's data comes either from ``raw_input_contents`` (one little-endian byte string per input, what
``tritonclient.grpc`` sends by default) or from the typed ``contents`` field of its datatype (``fp32_contents``,
``int_contents``...). The response's output is written the same way the request's inputs came: raw bytes in
``raw_output_contents`` after raw inputs, typed contents otherwise (FP16, which has no typed field, is always raw).

Every problem with a request raises `InvalidParameterValue` naming the input and what was expected. Numeric data is
read with ``numpy.frombuffer`` (raw) or one ``numpy.asarray`` per tensor (typed), never element by element.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from capstan.errors import CapstanError, InvalidParameterValue
from capstan.serving import oip

__all__ = ["CONTENTS_FIELDS", "decode_inputs", "encode_response"]

Array = npt.NDArray[Any]

#: Protocol datatype -> the ``InferTensorContents`` field that carries it (FP16 has none: raw contents only).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_LENGTH = struct.Struct("<I")


def decode_inputs(request: Any) -> tuple[list[oip.InferInput], bool]:
    """The request's inputs as numpy tensors, and whether they came as raw contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidParameterValue(
            f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents (one per input)"
        )
    if not request.inputs:
        raise InvalidParameterValue("the request has no inputs")
    inputs: list[oip.InferInput] = []
    for index, tensor in enumerate(request.inputs):
        name, datatype, shape = _header(tensor, index)
        if any(done.name == name for done in inputs):
            raise InvalidParameterValue(f"input {name!r} appears more than once in the request")
        data = _from_raw(name, shape, datatype, raw[index]) if raw else _from_contents(name, shape, datatype, tensor)
        inputs.append(oip.InferInput(name, shape, datatype, data))
    return inputs, bool(raw)


def _header(tensor: Any, index: int) -> tuple[str, str, tuple[int, ...]]:
    name = str(tensor.name)
    if not name:
        raise InvalidParameterValue(f"inputs[{index}] needs a non-empty name")
    datatype = str(tensor.datatype)
    if datatype not in oip.DATATYPES:
        known = ", ".join(oip.DATATYPES)
        raise InvalidParameterValue(f"input {name!r}: unknown datatype {datatype!r} (known: {known})")
    if datatype == "BYTES":
        raise InvalidParameterValue(
            f"input {name!r} (BYTES): the model takes integers or floats (FP32, FP64, INT*, UINT*)"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidParameterValue(f"input {name!r}: the shape must hold non-negative sizes, got {list(shape)}")
    return name, datatype, shape


def _from_raw(name: str, shape: tuple[int, ...], datatype: str, raw: bytes) -> Array:
    return oip.numeric_from_bytes(name, shape, datatype, raw, source="raw_input_contents",
                                  size_of="its length")


def _from_contents(name: str, shape: tuple[int, ...], datatype: str, tensor: Any) -> Array:
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidParameterValue(f"input {name!r} ({datatype}) has no typed contents field: send raw_input_contents")
    others = sorted(f.name for f, _ in tensor.contents.ListFields() if f.name != field)
    if others:
        raise InvalidParameterValue(f"input {name!r} ({datatype}) must use contents.{field}, got {', '.join(others)}")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidParameterValue(
            f"input {name!r} has {len(values)} elements in contents.{field} but shape {list(shape)} needs {count}"
        )
    target = oip.DATATYPES[datatype]
    data = np.asarray(values, dtype=np.int64 if target.kind == "i" else np.uint64 if target.kind == "u" else target)
    if count and target.kind in "iu" and target.itemsize < 8:
        info = np.iinfo(target)
        low, high = int(data.min()), int(data.max())
        if low < info.min or high > info.max:
            raise InvalidParameterValue(
                f"input {name!r} ({datatype}): values [{low}, {high}] are outside [{info.min}, {info.max}]"
            )
    return data.astype(target, copy=False).reshape(shape)


def encode_response(messages: dict[str, Any], *, model: str, version: str, request_id: str, output: str,
                    datatype: str, result: Array, raw: bool) -> Any:
    """A ``ModelInferResponse`` with one output; raw contents when ``raw`` (or when the datatype has no field)."""
    response = messages["ModelInferResponse"](model_name=model, model_version=version, id=request_id)
    tensor = response.outputs.add(name=output, datatype=datatype, shape=list(result.shape))
    flat = _checked_flat(output, datatype, result)
    field = CONTENTS_FIELDS.get(datatype)
    if raw or field is None:
        response.raw_output_contents.append(_bytes_payload(flat) if datatype == "BYTES" else flat.tobytes())
    elif datatype == "BYTES":
        getattr(tensor.contents, field).extend(_as_bytes(value) for value in flat.tolist())
    else:
        getattr(tensor.contents, field).extend(flat.tolist())
    return response


def _checked_flat(name: str, datatype: str, result: Array) -> Array:
    """The output's elements, flat and row-major, in the datatype's little-endian dtype."""
    flat = np.asarray(result).reshape(-1)
    if datatype == "BYTES":
        return flat
    if flat.dtype.kind not in "biuf":
        raise CapstanError(f"output {name!r} ({datatype}) holds {flat.dtype} values")
    return np.ascontiguousarray(flat.astype(oip.DATATYPES[datatype], copy=False))


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _bytes_payload(flat: Array) -> bytes:
    """BYTES elements as raw contents: each one a 4-byte little-endian length, then its bytes."""
    parts: list[bytes] = []
    for value in flat.tolist():
        raw = _as_bytes(value)
        parts += [_LENGTH.pack(len(raw)), raw]
    return b"".join(parts)
