"""The protobuf messages of OIP v2's ``inference.GRPCInferenceService``, built from a table at run time.

The messages Capstan answers (ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelInfer and
their parts) are written here from the protocol, field by field and number by number, and turned into message
classes through ``google.protobuf.descriptor_pb2`` and ``message_factory`` in a descriptor pool of their own (so
they never clash with another copy of package ``inference``, e.g. tritonclient's, in the same process). No
generated code is committed: why is recorded in ``docs/decisions/0306-oip-grpc.md``.

`inference_messages` needs ``protobuf`` (the ``grpc`` extra) and builds the classes once per process.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["PACKAGE", "SERVICE", "inference_messages"]

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

# protobuf FieldDescriptorProto types used below
_BOOL, _INT32, _INT64, _UINT32, _UINT64 = 8, 5, 3, 13, 4
_FLOAT, _DOUBLE, _STRING, _BYTES, _MESSAGE = 2, 1, 9, 12, 11

_Field = tuple[str, int, int | str, bool]
"""(name, number, scalar type or message type name relative to the package, repeated)."""

_MESSAGES: dict[str, list[_Field]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, _BOOL, False)],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, _BOOL, False)],
    "ModelReadyRequest": [("name", 1, _STRING, False), ("version", 2, _STRING, False)],
    "ModelReadyResponse": [("ready", 1, _BOOL, False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        ("name", 1, _STRING, False), ("version", 2, _STRING, False), ("extensions", 3, _STRING, True),
    ],
    "ModelMetadataRequest": [("name", 1, _STRING, False), ("version", 2, _STRING, False)],
    "ModelMetadataResponse.TensorMetadata": [
        ("name", 1, _STRING, False), ("datatype", 2, _STRING, False), ("shape", 3, _INT64, True),
    ],
    "ModelMetadataResponse": [
        ("name", 1, _STRING, False), ("versions", 2, _STRING, True), ("platform", 3, _STRING, False),
        ("inputs", 4, "ModelMetadataResponse.TensorMetadata", True),
        ("outputs", 5, "ModelMetadataResponse.TensorMetadata", True),
    ],
    "InferParameter": [  # one oneof, parameter_choice
        ("bool_param", 1, _BOOL, False), ("int64_param", 2, _INT64, False), ("string_param", 3, _STRING, False),
        ("double_param", 4, _DOUBLE, False), ("uint64_param", 5, _UINT64, False),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, _BOOL, True), ("int_contents", 2, _INT32, True), ("int64_contents", 3, _INT64, True),
        ("uint_contents", 4, _UINT32, True), ("uint64_contents", 5, _UINT64, True),
        ("fp32_contents", 6, _FLOAT, True), ("fp64_contents", 7, _DOUBLE, True), ("bytes_contents", 8, _BYTES, True),
    ],
    "ModelInferRequest.InferInputTensor": [
        ("name", 1, _STRING, False), ("datatype", 2, _STRING, False), ("shape", 3, _INT64, True),
        ("parameters", 4, "map:InferParameter", True), ("contents", 5, "InferTensorContents", False),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [
        ("name", 1, _STRING, False), ("parameters", 2, "map:InferParameter", True),
    ],
    "ModelInferRequest": [
        ("model_name", 1, _STRING, False), ("model_version", 2, _STRING, False), ("id", 3, _STRING, False),
        ("parameters", 4, "map:InferParameter", True), ("inputs", 5, "ModelInferRequest.InferInputTensor", True),
        ("outputs", 6, "ModelInferRequest.InferRequestedOutputTensor", True),
        ("raw_input_contents", 7, _BYTES, True),
    ],
    "ModelInferResponse.InferOutputTensor": [
        ("name", 1, _STRING, False), ("datatype", 2, _STRING, False), ("shape", 3, _INT64, True),
        ("parameters", 4, "map:InferParameter", True), ("contents", 5, "InferTensorContents", False),
    ],
    "ModelInferResponse": [
        ("model_name", 1, _STRING, False), ("model_version", 2, _STRING, False), ("id", 3, _STRING, False),
        ("parameters", 4, "map:InferParameter", True), ("outputs", 5, "ModelInferResponse.InferOutputTensor", True),
        ("raw_output_contents", 6, _BYTES, True),
    ],
}


@functools.cache
def inference_messages() -> dict[str, Any]:
    """The message classes by name (``"ModelInferRequest"``, ``"ModelInferResponse.InferOutputTensor"``...)."""
    from google.protobuf import (  # type: ignore[import-untyped]  # protobuf ships no type information
        descriptor_pb2,
        descriptor_pool,
        message_factory,
    )

    file = descriptor_pb2.FileDescriptorProto(name="capstan/serving/oip_v2_grpc.proto", package=PACKAGE,
                                              syntax="proto3")
    protos: dict[str, Any] = {}
    for path in sorted(_MESSAGES, key=lambda p: p.count(".")):  # parents before their nested types
        parent, _, leaf = path.rpartition(".")
        protos[path] = (protos[parent].nested_type if parent else file.message_type).add(name=leaf)
    for path, fields in _MESSAGES.items():
        for field in fields:
            _add_map_aware(protos[path], path, field, descriptor_pb2)
    protos["InferParameter"].oneof_decl.add(name="parameter_choice")
    for field in protos["InferParameter"].field:
        field.oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {path: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{path}"))
            for path in _MESSAGES}


def _add_map_aware(message: Any, path: str, field: _Field, descriptor_pb2: Any) -> None:
    name, number, kind, repeated = field
    proto = message.field.add(name=name, number=number)
    proto.label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if repeated else \
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    if isinstance(kind, int):
        proto.type = kind
        return
    proto.type = _MESSAGE
    if not kind.startswith("map:"):
        proto.type_name = f".{PACKAGE}.{kind}"
        return
    entry_name = "".join(part.capitalize() for part in name.split("_")) + "Entry"
    entry = message.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    entry.field.add(name="key", number=1, type=_STRING, label=optional)
    entry.field.add(name="value", number=2, type=_MESSAGE, label=optional, type_name=f".{PACKAGE}.{kind[4:]}")
    proto.type_name = f".{PACKAGE}.{path}.{entry_name}"
