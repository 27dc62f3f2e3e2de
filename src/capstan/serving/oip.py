"""The Open Inference Protocol v2 ("predict protocol v2" of KServe and Triton) as a pure codec.

`decode_request` turns an HTTP request body into an `InferRequest`: the JSON tensor format (flat row-major or
nested ``data``) and the binary tensor data extension (the ``Inference-Header-Content-Length`` header gives the
length of the JSON header; inputs with ``parameters.binary_data_size`` take their bytes, in input order, from the
body after it; BYTES elements carry 4-byte little-endian length prefixes). `encode_response` writes an
`InferResponse` back as JSON, or as a JSON header and a binary tail; `decode_response` reads such a body as a
client does (the gRPC front of the deployment router turns a replica's REST answer into a gRPC one with it).
`model_metadata` builds the model metadata document.

Every problem with a request raises `InvalidParameterValue` (HTTP 400) naming the input and what was expected. An
output that does not match its own shape or datatype is a bug of the server and raises `CapstanError` (500).

Numeric tensors are decoded with `numpy.frombuffer` / `numpy.asarray`, never element by element in Python; only
BYTES elements (variable-length by nature) are split one by one. No I/O, no clock: the HTTP layer reads the body
and the header and calls this module.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from capstan.errors import CapstanError, InvalidParameterValue

__all__ = [
    "DATATYPES",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "RequestedOutput",
    "TensorMetadata",
    "binary_outputs",
    "datatype_of",
    "decode_request",
    "decode_response",
    "encode_response",
    "model_metadata",
]

#: Protocol datatype -> the little-endian numpy dtype of one element (BYTES: Python ``bytes`` objects).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

# numpy kinds a JSON ``data`` list may parse to, per target kind (an empty list parses to float64 and always fits).
_JSON_KINDS: dict[str, frozenset[str]] = {
    "b": frozenset("b"),
    "u": frozenset("iu"),
    "i": frozenset("iu"),
    "f": frozenset("iuf"),
}

_LENGTH = struct.Struct("<I")

# Input parameters of other extensions this codec does not implement.
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class InferInput:
    """One decoded input tensor: ``data`` has ``shape`` and the numpy dtype of ``datatype`` (BYTES: ``bytes``)."""

    name: str
    shape: tuple[int, ...]
    datatype: str
    data: npt.NDArray[Any]
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    """An entry of the request's ``outputs``: a name and its parameters (``binary_data``, ``classification``...)."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request. ``outputs`` is empty when the client asked for every output."""

    id: str | None
    inputs: tuple[InferInput, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> InferInput:
        """The input called ``name``; `InvalidParameterValue` naming the inputs sent when there is none."""
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        sent = ", ".join(repr(t.name) for t in self.inputs)
        raise InvalidParameterValue(f"the request has no input {name!r} (inputs: {sent})")


@dataclass(frozen=True)
class InferOutput:
    """One output tensor of a response; ``data`` must hold ``prod(shape)`` elements of ``datatype``."""

    name: str
    shape: tuple[int, ...]
    datatype: str
    data: npt.NDArray[Any]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, data: npt.ArrayLike, *, datatype: str | None = None) -> InferOutput:
        """An output from an array: its shape, and its datatype unless given (see `datatype_of`)."""
        array = np.asarray(data)
        return cls(name, tuple(int(d) for d in array.shape), datatype or datatype_of(array.dtype), array)


@dataclass(frozen=True)
class InferResponse:
    """An inference response; ``model_version`` and ``id`` are left out of the JSON when `None`."""

    model_name: str
    model_version: str | None
    id: str | None
    outputs: tuple[InferOutput, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorMetadata:
    """An input or output of the model metadata; ``-1`` in ``shape`` is a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def datatype_of(dtype: npt.DTypeLike) -> str:
    """The protocol datatype of a numpy dtype (strings, bytes and objects are BYTES)."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    for name, known in DATATYPES.items():
        if name != "BYTES" and known.kind == dt.kind and known.itemsize == dt.itemsize:
            return name
    raise CapstanError(f"numpy dtype {dt} has no Open Inference Protocol datatype")


# --------------------------------------------------------------------------------------------------- decoding


def decode_request(body: bytes, *, header_length: int | None) -> InferRequest:
    """Decode a request body; ``header_length`` is the ``Inference-Header-Content-Length`` header, if sent.

    Without ``header_length`` the whole body is the JSON document. With it, the first ``header_length`` bytes are
    the JSON document and the rest is the binary data of the inputs that declare ``parameters.binary_data_size``,
    in input order; the sizes must add up to exactly the rest of the body.
    """
    document, tail = _split_body(body, header_length, "request")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidParameterValue("the request's 'id' must be a string")
    parameters = _parameters(document, "the request")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidParameterValue("the request's 'inputs' must be a non-empty list of tensors")
    inputs = _tensors(raw_inputs, tail, len(body) - len(tail), "input")
    return InferRequest(request_id, tuple(InferInput(*t) for t in inputs), _requested_outputs(document), parameters)


def decode_response(body: bytes, *, header_length: int | None) -> InferResponse:
    """Decode a response body as a client reads it (the inverse of `encode_response`): JSON, or, with
    ``header_length`` (the ``Inference-Header-Content-Length`` response header), a JSON header followed by the
    binary data of the outputs that declare ``parameters.binary_data_size``. A ``null`` element of a floating-point
    output is NaN (JSON holds no NaN). `InvalidParameterValue` naming the output for anything malformed."""
    document, tail = _split_body(body, header_length, "response")
    for key in ("model_name", "model_version", "id"):
        if document.get(key) is not None and not isinstance(document[key], str):
            raise InvalidParameterValue(f"the response's {key!r} must be a string")
    raw_outputs = document.get("outputs")
    if not isinstance(raw_outputs, list):
        raise InvalidParameterValue("the response's 'outputs' must be a list of tensors")
    outputs = _tensors(raw_outputs, tail, len(body) - len(tail), "output")
    return InferResponse(str(document.get("model_name") or ""), document.get("model_version"), document.get("id"),
                         tuple(InferOutput(*t) for t in outputs), _parameters(document, "the response"))


def _split_body(body: bytes, header_length: int | None, what: str) -> tuple[dict[str, Any], memoryview]:
    """The JSON document of a request or response body and the binary data after it."""
    view = memoryview(body)
    if header_length is None:
        header_length = len(view)
    elif not 0 < header_length <= len(view):
        raise InvalidParameterValue(
            f"Inference-Header-Content-Length is {header_length} but the {what} body holds {len(view)} bytes"
        )
    try:
        document = orjson.loads(view[:header_length])
    except orjson.JSONDecodeError as exc:
        raise InvalidParameterValue(f"the inference {what} header is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidParameterValue(f"the inference {what} must be a JSON object")
    return document, view[header_length:]


_Tensor = tuple[str, tuple[int, ...], str, npt.NDArray[Any], dict[str, Any]]


def _tensors(raws: list[Any], tail: memoryview, header_length: int, kind: str) -> list[_Tensor]:
    """The tensors of a request's ``inputs`` or a response's ``outputs`` (``kind``), with their data from JSON
    ``data`` or from ``tail`` in order; the binary sizes must add up to exactly the tail."""
    offset = 0
    tensors: list[_Tensor] = []
    binary_names: list[str] = []
    for index, raw in enumerate(raws):
        name, shape, datatype, params = _tensor_header(raw, index, kind)
        if any(tensor[0] == name for tensor in tensors):
            raise InvalidParameterValue(f"{kind} {name!r} appears more than once in the {_owner(kind)}")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in raw:
                raise InvalidParameterValue(f"{kind} {name!r} has both 'data' and parameters.binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidParameterValue(
                    f"{kind} {name!r}: parameters.binary_data_size must be a non-negative integer, got {size!r}"
                )
            if offset + size > len(tail):
                raise InvalidParameterValue(
                    f"{kind} {name!r} declares binary_data_size {size} at offset {offset} of the binary data, but "
                    f"only {len(tail)} bytes follow the {header_length}-byte JSON header (truncated body?)"
                )
            data = _from_binary(name, shape, datatype, tail[offset : offset + size], kind)
            offset += size
            binary_names.append(name)
        elif "data" in raw:
            data = _from_json(name, shape, datatype, raw["data"], kind)
        else:
            raise InvalidParameterValue(
                f"{kind} {name!r} has neither 'data' nor parameters.binary_data_size (shape {list(shape)})"
            )
        tensors.append((name, shape, datatype, data, params))

    if offset != len(tail):
        sized = ", ".join(repr(n) for n in binary_names) or f"no {kind}"
        raise InvalidParameterValue(
            f"the binary data sizes of {sized} add up to {offset} bytes, but {len(tail)} bytes follow the "
            f"{header_length}-byte JSON header"
        )
    return tensors


def _owner(kind: str) -> str:
    return "request" if kind == "input" else "response"


def _parameters(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidParameterValue(f"the 'parameters' of {what} must be a JSON object")
    return params


def _tensor_header(raw: object, index: int, kind: str) -> tuple[str, tuple[int, ...], str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise InvalidParameterValue(f"{kind}s[{index}] must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidParameterValue(f"{kind}s[{index}] needs a non-empty string 'name'")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidParameterValue(f"{kind} {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        known = ", ".join(DATATYPES)
        raise InvalidParameterValue(f"{kind} {name!r}: unknown datatype {datatype!r} (known: {known})")
    params = _parameters(raw, f"{kind} {name!r}")
    for key in _SHARED_MEMORY:
        if key in params:
            raise InvalidParameterValue(f"{kind} {name!r}: the shared-memory extension ({key}) is not supported")
    return name, tuple(shape), datatype, params


def _from_binary(name: str, shape: tuple[int, ...], datatype: str, raw: memoryview,
                 kind: str) -> npt.NDArray[Any]:
    if datatype == "BYTES":
        return _split_bytes(name, shape, raw, kind).reshape(shape)
    return numeric_from_bytes(name, shape, datatype, raw, source="binary data", size_of="binary_data_size",
                              kind=kind)


def numeric_from_bytes(name: str, shape: tuple[int, ...], datatype: str, raw: bytes | memoryview, *,
                       source: str, size_of: str, kind: str = "input") -> npt.NDArray[Any]:
    """The little-endian elements of a numeric or BOOL tensor, as sent in the binary extension or gRPC's
    ``raw_input_contents`` (``source`` and ``size_of`` name them in the error, ``kind`` says whether the tensor is
    an input or an output): checked against the shape, not copied."""
    count = math.prod(shape)
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidParameterValue(
            f"{kind} {name!r} ({datatype}, shape {list(shape)}) needs {expected} bytes of {source} "
            f"({count} elements of {dtype.itemsize} bytes), but {size_of} is {len(raw)}"
        )
    if datatype == "BOOL":
        octets = np.frombuffer(raw, dtype=np.uint8)
        if count and int(octets.max()) > 1:
            raise InvalidParameterValue(f"{kind} {name!r} (BOOL): binary elements must be 0 or 1")
        return octets.view(np.bool_).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _split_bytes(name: str, shape: tuple[int, ...], raw: memoryview, kind: str) -> npt.NDArray[Any]:
    count = math.prod(shape)
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise InvalidParameterValue(
                f"{kind} {name!r} (BYTES, shape {list(shape)}): the binary data ends after {i} of {count} elements "
                f"({len(raw)} bytes)"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidParameterValue(
                f"{kind} {name!r} (BYTES, shape {list(shape)}): element {i} declares {length} bytes but only "
                f"{len(raw) - offset} remain of binary_data_size {len(raw)}"
            )
        out[i] = bytes(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidParameterValue(
            f"{kind} {name!r} (BYTES, shape {list(shape)}): {count} elements use {offset} bytes, but "
            f"binary_data_size is {len(raw)}"
        )
    return out


def _from_json(name: str, shape: tuple[int, ...], datatype: str, data: object, kind: str) -> npt.NDArray[Any]:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _json_bytes(name, shape, data, kind)
    target = DATATYPES[datatype]
    try:
        parsed = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidParameterValue(
            f"{kind} {name!r} ({datatype}): 'data' must be a flat or evenly nested list of numbers for shape "
            f"{list(shape)}"
        ) from None
    if parsed.dtype == np.object_ and target.kind == "f" and kind == "output":
        parsed = _nulls_as_nan(data, parsed)  # encode_response writes NaN and infinities as null
    if parsed.size != count:
        raise InvalidParameterValue(
            f"{kind} {name!r} has {parsed.size} elements in 'data' but shape {list(shape)} needs {count}"
        )
    if count and parsed.dtype.kind not in _JSON_KINDS[target.kind]:
        want = {"b": "booleans", "u": "integers", "i": "integers", "f": "numbers"}[target.kind]
        raise InvalidParameterValue(f"{kind} {name!r} ({datatype}): 'data' must hold {want}, got {parsed.dtype}")
    if count and target.kind in "iu":
        info = np.iinfo(target)
        low, high = int(parsed.min()), int(parsed.max())
        if low < info.min or high > info.max:
            raise InvalidParameterValue(
                f"{kind} {name!r} ({datatype}): values [{low}, {high}] are outside [{info.min}, {info.max}]"
            )
    return parsed.astype(target, copy=False).reshape(shape)


def _nulls_as_nan(data: object, parsed: npt.NDArray[Any]) -> npt.NDArray[Any]:
    try:
        return np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError):
        return parsed


def _json_bytes(name: str, shape: tuple[int, ...], data: object, kind: str) -> npt.NDArray[Any]:
    count = math.prod(shape)
    flat: list[bytes] = []

    def walk(value: object) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            flat.append(value.encode())
        else:
            raise InvalidParameterValue(f"{kind} {name!r} (BYTES): 'data' must hold strings, got {value!r}")

    walk(data)
    if len(flat) != count:
        raise InvalidParameterValue(
            f"{kind} {name!r} has {len(flat)} elements in 'data' but shape {list(shape)} needs {count}"
        )
    out = np.empty(count, dtype=np.object_)
    out[:] = flat
    return out.reshape(shape)


def _requested_outputs(document: Mapping[str, Any]) -> tuple[RequestedOutput, ...]:
    raw_outputs = document.get("outputs")
    if raw_outputs is None:
        return ()
    if not isinstance(raw_outputs, list):
        raise InvalidParameterValue("the request's 'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for index, raw in enumerate(raw_outputs):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidParameterValue(f"outputs[{index}] must be a JSON object with a string 'name'")
        outputs.append(RequestedOutput(raw["name"], _parameters(raw, f"output {raw['name']!r}")))
    return tuple(outputs)


# --------------------------------------------------------------------------------------------------- encoding


def binary_outputs(request: InferRequest) -> set[str] | bool:
    """Which outputs the client wants as binary data: the ``binary_outputs`` argument of `encode_response`.

    An output's own ``parameters.binary_data`` wins; otherwise the request's ``binary_data_output`` parameter
    (default false) decides. When the request names no outputs, every output follows ``binary_data_output``.
    """
    default = request.parameters.get("binary_data_output") is True
    if not request.outputs:
        return default
    return {
        out.name
        for out in request.outputs
        if (out.parameters["binary_data"] is True if "binary_data" in out.parameters else default)
    }


def encode_response(resp: InferResponse, *, binary_outputs: set[str] | bool) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the length of its JSON header.

    ``binary_outputs`` is `True` (every output binary), `False` (all JSON) or the names of the binary outputs. The
    header length goes into the ``Inference-Header-Content-Length`` response header; `None` means a plain JSON body.
    Floats that JSON cannot hold (NaN, infinities) are written as ``null``; send them as binary data instead.
    """
    document: dict[str, Any] = {"model_name": resp.model_name}
    if resp.model_version is not None:
        document["model_version"] = resp.model_version
    if resp.id is not None:
        document["id"] = resp.id
    if resp.parameters:
        document["parameters"] = dict(resp.parameters)
    outputs: list[dict[str, Any]] = []
    tail: list[bytes] = []
    for out in resp.outputs:
        flat = _checked_output(out)
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        params = dict(out.parameters)
        if binary_outputs is True or (isinstance(binary_outputs, set) and out.name in binary_outputs):
            raw = _bytes_payload(flat) if out.datatype == "BYTES" else flat.tobytes()
            params["binary_data_size"] = len(raw)
            tail.append(raw)
            entry["parameters"] = params
        else:
            if params:
                entry["parameters"] = params
            entry["data"] = _json_data(out, flat)
        outputs.append(entry)
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tail:
        return header, None
    return header + b"".join(tail), len(header)


def _checked_output(out: InferOutput) -> npt.NDArray[Any]:
    """The output's elements, flat, row-major, C-contiguous and in the datatype's little-endian dtype."""
    if out.datatype not in DATATYPES:
        raise CapstanError(f"output {out.name!r}: unknown datatype {out.datatype!r}")
    count = math.prod(out.shape)
    data = np.asarray(out.data)
    if data.size != count:
        raise CapstanError(
            f"output {out.name!r} holds {data.size} elements but its shape {list(out.shape)} needs {count}"
        )
    flat = data.reshape(-1)
    if out.datatype == "BYTES":
        return flat
    target = DATATYPES[out.datatype]
    if flat.dtype.kind not in "biuf":
        raise CapstanError(f"output {out.name!r} ({out.datatype}) holds {flat.dtype} values")
    return np.ascontiguousarray(flat.astype(target, copy=False))


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def _bytes_payload(flat: npt.NDArray[Any]) -> bytes:
    parts: list[bytes] = []
    for value in flat.tolist():
        raw = _as_bytes(value)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _json_data(out: InferOutput, flat: npt.NDArray[Any]) -> object:
    if out.datatype != "BYTES":
        return flat  # orjson writes a 1-D numpy array as a JSON list in C
    try:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in flat.tolist()]
    except UnicodeDecodeError:
        raise InvalidParameterValue(
            f"output {out.name!r} (BYTES) is not UTF-8 text and cannot be sent as JSON; ask for it with "
            "parameters.binary_data=true"
        ) from None


# --------------------------------------------------------------------------------------------------- metadata


def model_metadata(
    name: str,
    versions: Iterable[str],
    platform: str,
    inputs: Sequence[TensorMetadata],
    outputs: Sequence[TensorMetadata],
) -> dict[str, Any]:
    """The model metadata document (``GET /v2/models/{name}[/versions/{v}]``)."""

    def tensors(items: Sequence[TensorMetadata], kind: str) -> list[dict[str, Any]]:
        for item in items:
            if item.datatype not in DATATYPES:
                raise CapstanError(f"model {name!r} {kind} {item.name!r}: unknown datatype {item.datatype!r}")
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": platform,
        "inputs": tensors(inputs, "input"),
        "outputs": tensors(outputs, "output"),
    }
