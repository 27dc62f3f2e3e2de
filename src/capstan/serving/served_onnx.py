"""ONNX models (MLflow's ``onnx`` flavor layout) served through onnxruntime, the ``onnx`` extra.

The flavor entry names the graph file (``data: model.onnx``) and the execution providers (``providers``, a list of
names or ``[name, options]`` pairs); providers this onnxruntime build lacks are skipped, and the CPU provider is
always the last resort. The graph's first input and first output are the served ones; a graph with several inputs
is refused. An ONNX file holds no code, so it is loaded from any source.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from capstan.errors import InvalidParameterValue
from capstan.serving.oip import TensorMetadata
from capstan.serving.served_function import Array, FunctionServedModel, input_from_signature

FLAVOR_NAME = "onnx"
PLATFORM = "onnxruntime_onnx"

_ONNX_DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
                   "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16",
                   "tensor(int8)": "INT8", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
                   "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
                   "tensor(string)": "BYTES"}


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime  # type: ignore[import-untyped]  # onnxruntime ships no type information
    except ImportError:
        raise InvalidParameterValue(
            "this model is an ONNX model, which needs onnxruntime: pip install 'capstan[onnx]'") from None
    return onnxruntime


def _providers(ort: Any, conf: Mapping[str, Any]) -> list[Any]:
    wanted = conf.get("providers") or ["CPUExecutionProvider"]
    if isinstance(wanted, str):
        wanted = [wanted]
    available = set(ort.get_available_providers())
    chosen: list[Any] = []
    for item in wanted:
        provider = item[0] if isinstance(item, list | tuple) else item
        if provider in available:
            chosen.append(tuple(item) if isinstance(item, list | tuple) else item)
    if "CPUExecutionProvider" not in [c[0] if isinstance(c, tuple) else c for c in chosen]:
        chosen.append("CPUExecutionProvider")
    return chosen


def _tensor(node: Any, fallback: str, what: str) -> TensorMetadata:
    datatype = _ONNX_DATATYPES.get(str(node.type))
    if datatype is None:
        raise InvalidParameterValue(f"the ONNX graph's {what} {node.name!r} has type {node.type}, which cannot be "
                                    "served as one tensor")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or ()))
    return TensorMetadata(str(node.name or fallback), datatype, shape)


def load_onnx(folder: Path, conf: Mapping[str, Any], *, name: str, version: str,
              signature: Mapping[str, Any] | None) -> FunctionServedModel:
    """The ONNX graph of the model folder ``folder`` (flavor entry ``conf``) in an onnxruntime session."""
    ort = _import_onnxruntime()
    file = folder / str(conf.get("data") or "model.onnx")
    if not file.is_file():
        raise InvalidParameterValue(f"model folder {str(folder)!r} has no ONNX file {file.name!r}")
    options = ort.SessionOptions()
    for key, value in (conf.get("onnx_session_options") or {}).items():
        if key in ("intra_op_num_threads", "inter_op_num_threads") and isinstance(value, int):
            setattr(options, key, value)
    try:
        session = ort.InferenceSession(str(file), sess_options=options, providers=_providers(ort, conf))
    except Exception as exc:  # noqa: BLE001  # onnxruntime raises its own untyped errors for a bad graph
        raise InvalidParameterValue(f"model {name!r}: onnxruntime cannot load {file.name!r}: {exc}") from None
    graph_inputs, graph_outputs = session.get_inputs(), session.get_outputs()
    if len(graph_inputs) != 1:
        raise InvalidParameterValue(f"model {name!r}: the ONNX graph has {len(graph_inputs)} inputs; serving takes one")
    graph_input = _tensor(graph_inputs[0], "input-0", "input")
    output = _tensor(graph_outputs[0], "output-0", "output")
    declared = input_from_signature(signature)
    served_input = graph_input if declared is None else TensorMetadata(
        declared.name, graph_input.datatype, declared.shape)
    input_name, output_name = graph_inputs[0].name, graph_outputs[0].name

    def predict(x: Array) -> Array:
        return np.asarray(session.run([output_name], {input_name: x})[0])

    return FunctionServedModel(name, version, PLATFORM, predict, served_input, output)
