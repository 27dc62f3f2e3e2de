"""The Open Inference Protocol v2 codec against the real `tritonclient.http` encoders and decoders."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from capstan.errors import CapstanError, InvalidParameterValue
from capstan.serving.oip import (
    InferOutput,
    InferResponse,
    TensorMetadata,
    binary_outputs,
    decode_request,
    encode_response,
    model_metadata,
)

httpclient = pytest.importorskip("tritonclient.http")

ARRAYS: dict[str, np.ndarray[Any, Any]] = {
    "FP32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "FP64": np.array([[1e-300, -2.5], [np.pi, 1e300]], dtype=np.float64),
    "INT64": np.array([[-(2**62), 0, 2**62 + 1]], dtype=np.int64),
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "BYTES": np.array([[b"hello", b""], [b"caf\xc3\xa9", b"x" * 300]], dtype=np.object_),
}


def triton_request(
    arrays: dict[str, np.ndarray[Any, Any]], *, binary: bool, outputs: list[Any] | None = None, **kwargs: Any
) -> tuple[bytes, int | None]:
    inputs = []
    for name, arr in arrays.items():
        tensor = httpclient.InferInput(name, list(arr.shape), datatype_for(arr))
        tensor.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(tensor)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)
    return bytes(body), header_length


def datatype_for(arr: np.ndarray[Any, Any]) -> str:
    return {"f": "FP32" if arr.itemsize == 4 else "FP64", "i": "INT64", "b": "BOOL", "O": "BYTES"}[arr.dtype.kind]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_decodes_a_tritonclient_request(datatype: str, binary: bool) -> None:
    arr = ARRAYS[datatype]
    body, header_length = triton_request({f"in_{datatype}": arr}, binary=binary, request_id="r-1")
    assert (header_length is not None) == binary

    req = decode_request(body, header_length=header_length)

    assert req.id == "r-1"
    (tensor,) = req.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == (f"in_{datatype}", datatype, arr.shape)
    assert tensor.data.shape == arr.shape
    if datatype == "BYTES":
        assert tensor.data.dtype == np.object_
        assert tensor.data.tolist() == arr.tolist()
    else:
        assert tensor.data.dtype == arr.dtype
        np.testing.assert_array_equal(tensor.data, arr)
    # tritonclient asks for every output in binary when it names none
    assert binary_outputs(req) is True


def test_decodes_several_binary_and_json_inputs_in_order() -> None:
    inputs = []
    for name, arr in ARRAYS.items():
        tensor = httpclient.InferInput(name, list(arr.shape), name)
        # alternate binary and JSON so the binary tail skips the JSON inputs
        tensor.set_data_from_numpy(arr, binary_data=name in ("FP32", "BOOL", "BYTES"))
        inputs.append(tensor)
    out_a = httpclient.InferRequestedOutput("a", binary_data=True)
    out_b = httpclient.InferRequestedOutput("b", binary_data=False)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=[out_a, out_b], parameters={"custom": 3}
    )

    req = decode_request(body, header_length=header_length)

    assert [t.name for t in req.inputs] == list(ARRAYS)
    for name, arr in ARRAYS.items():
        assert req.input(name).data.tolist() == arr.tolist()
    assert [o.name for o in req.outputs] == ["a", "b"]
    assert req.parameters == {"custom": 3}
    assert binary_outputs(req) == {"a"}
    with pytest.raises(InvalidParameterValue, match="'nope'"):
        req.input("nope")


def test_numeric_inputs_are_views_of_the_body_not_copies() -> None:
    arr = np.arange(1000, dtype=np.float32)
    body, header_length = triton_request({"x": arr}, binary=True)
    tensor = decode_request(body, header_length=header_length).input("x")
    assert tensor.data.base is not None
    assert not tensor.data.flags.writeable


def test_nested_json_data_and_every_numeric_datatype() -> None:
    doc = {
        "inputs": [
            {"name": "nested", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]},
            {"name": "u8", "shape": [3], "datatype": "UINT8", "data": [0, 1, 255]},
            {"name": "u64", "shape": [1], "datatype": "UINT64", "data": [2**64 - 1]},
            {"name": "i8", "shape": [2], "datatype": "INT8", "data": [-128, 127]},
            {"name": "h", "shape": [2], "datatype": "FP16", "data": [0.5, 2]},
            {"name": "empty", "shape": [0, 3], "datatype": "FP32", "data": []},
        ]
    }
    req = decode_request(orjson.dumps(doc), header_length=None)
    assert req.input("nested").data.tolist() == [[1, 2], [3, 4]]
    assert req.input("nested").data.dtype == np.int32
    assert req.input("u8").data.dtype == np.uint8
    assert req.input("u64").data.tolist() == [2**64 - 1]
    assert req.input("i8").data.tolist() == [-128, 127]
    assert req.input("h").data.dtype == np.float16
    assert req.input("empty").data.shape == (0, 3)
    assert req.id is None
    assert binary_outputs(req) is False


# ------------------------------------------------------------------------------------------------ responses


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_encoded_response_parses_with_tritonclient(binary: bool) -> None:
    outputs = tuple(InferOutput.of(f"out_{name}", arr) for name, arr in ARRAYS.items())
    resp = InferResponse("m", "3", "r-9", outputs)

    body, header_length = encode_response(resp, binary_outputs=binary)

    assert (header_length is not None) == binary
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    got = result.get_response()
    assert (got["model_name"], got["model_version"], got["id"]) == ("m", "3", "r-9")
    for name, arr in ARRAYS.items():
        back = result.as_numpy(f"out_{name}")
        assert back.shape == arr.shape
        if name == "BYTES" and not binary:
            # JSON BYTES come back as text: tritonclient turns them into numpy strings
            assert [v.encode() for v in back.ravel().tolist()] == arr.ravel().tolist()
        elif name == "BYTES":
            assert back.tolist() == arr.tolist()
        else:
            assert back.dtype == arr.dtype
            np.testing.assert_array_equal(back, arr)


def test_response_binary_selection_follows_the_request() -> None:
    body, header_length = triton_request(
        {"x": ARRAYS["FP32"]},
        binary=False,
        outputs=[httpclient.InferRequestedOutput("a", binary_data=True), httpclient.InferRequestedOutput("b")],
    )
    req = decode_request(body, header_length=header_length)
    # tritonclient's InferRequestedOutput defaults to binary_data=True
    assert binary_outputs(req) == {"a", "b"}

    only_a = decode_request(
        orjson.dumps(
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}],
            }
        ),
        header_length=None,
    )
    selection = binary_outputs(only_a)
    assert selection == {"a"}
    resp = InferResponse("m", None, None, (InferOutput.of("a", ARRAYS["FP64"]), InferOutput.of("b", ARRAYS["INT64"])))
    body, header_length = encode_response(resp, binary_outputs=selection)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert "data" not in header["outputs"][0]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": ARRAYS["FP64"].nbytes}
    assert header["outputs"][1]["data"] == ARRAYS["INT64"].ravel().tolist()
    assert "model_version" not in header
    assert "id" not in header
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("a"), ARRAYS["FP64"])
    np.testing.assert_array_equal(result.as_numpy("b"), ARRAYS["INT64"])


def test_binary_data_output_parameter_with_an_output_override() -> None:
    req = decode_request(
        orjson.dumps(
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
                "parameters": {"binary_data_output": True},
            }
        ),
        header_length=None,
    )
    assert binary_outputs(req) == {"a"}


def test_response_output_errors_are_server_errors() -> None:
    bad = InferResponse("m", None, None, (InferOutput("y", (2, 2), "FP32", np.zeros(3, dtype=np.float32)),))
    with pytest.raises(CapstanError, match=r"'y' holds 3 elements but its shape \[2, 2\] needs 4"):
        encode_response(bad, binary_outputs=False)
    not_text = InferResponse("m", None, None, (InferOutput.of("t", np.array([b"\xff"], dtype=np.object_)),))
    with pytest.raises(InvalidParameterValue, match=r"'t'.*binary_data"):
        encode_response(not_text, binary_outputs=False)
    body, header_length = encode_response(not_text, binary_outputs={"t"})
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    assert result.as_numpy("t").tolist() == [b"\xff"]


def test_model_metadata_shape() -> None:
    doc = model_metadata(
        "iris",
        ["1", "2"],
        "sklearn",
        [TensorMetadata("x", "FP32", (-1, 4))],
        [TensorMetadata("label", "INT64", (-1,))],
    )
    assert doc == {
        "name": "iris",
        "versions": ["1", "2"],
        "platform": "sklearn",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
    with pytest.raises(CapstanError, match="'label'"):
        model_metadata("iris", [], "sklearn", [], [TensorMetadata("label", "INT128", (1,))])


# ------------------------------------------------------------------------------------------------ bad input


def json_body(*inputs: dict[str, Any]) -> bytes:
    return orjson.dumps({"inputs": list(inputs)})


def test_wrong_element_count_names_the_input_and_shape() -> None:
    body = json_body({"name": "feat", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5]})
    with pytest.raises(InvalidParameterValue, match=r"'feat' has 5 elements.*shape \[2, 3\] needs 6"):
        decode_request(body, header_length=None)


def test_wrong_binary_size_for_the_shape_names_the_input() -> None:
    arr = np.zeros((2, 3), dtype=np.float32)
    tensor = httpclient.InferInput("feat", [2, 3], "FP32")
    tensor.set_data_from_numpy(arr, binary_data=True)
    tensor.set_shape([2, 4])  # claims 8 elements, sends 6
    body, header_length = httpclient.InferenceServerClient.generate_request_body([tensor])
    with pytest.raises(InvalidParameterValue, match=r"'feat' \(FP32, shape \[2, 4\]\) needs 32 bytes.*is 24"):
        decode_request(body, header_length=header_length)


def test_unknown_datatype_names_the_input() -> None:
    body = json_body({"name": "feat", "shape": [1], "datatype": "FP128", "data": [1]})
    with pytest.raises(InvalidParameterValue, match="'feat': unknown datatype 'FP128'"):
        decode_request(body, header_length=None)


def test_truncated_binary_body_names_the_input() -> None:
    body, header_length = triton_request({"a": ARRAYS["FP32"], "b": ARRAYS["INT64"]}, binary=True)
    with pytest.raises(InvalidParameterValue, match=r"'b' declares binary_data_size 24.*truncated"):
        decode_request(body[:-5], header_length=header_length)


def test_truncated_bytes_tensor_names_the_input() -> None:
    header = orjson.dumps(
        {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}
    )
    tail = b"\x03\x00\x00\x00abc" + b"\x05\x00"  # second length prefix cut short
    with pytest.raises(InvalidParameterValue, match=r"'s' \(BYTES, shape \[2\]\): the binary data ends after 1 of 2"):
        decode_request(header + tail, header_length=len(header))
    tail = b"\x03\x00\x00\x00abc" + b"\x09\x00\x00\x00"
    header = header.replace(b"9", b"11")
    with pytest.raises(InvalidParameterValue, match=r"'s'.*element 1 declares 9 bytes"):
        decode_request(header + tail, header_length=len(header))


def test_sizes_that_do_not_add_up_name_the_inputs() -> None:
    body, header_length = triton_request({"a": ARRAYS["FP32"], "b": ARRAYS["BOOL"]}, binary=True)
    with pytest.raises(InvalidParameterValue, match=r"sizes of 'a', 'b' add up to 54 bytes, but 57 bytes follow"):
        decode_request(body + b"xyz", header_length=header_length)
    # binary inputs but the client forgot the Inference-Header-Content-Length header
    with pytest.raises(InvalidParameterValue):
        decode_request(body, header_length=None)
    with pytest.raises(InvalidParameterValue, match="Inference-Header-Content-Length is 9999"):
        decode_request(body, header_length=9999)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "x", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}, "'x' \\(INT32\\): 'data' must hold int"),
        ({"name": "x", "shape": [1], "datatype": "UINT8", "data": [256]}, "'x' \\(UINT8\\): values \\[256, 256\\]"),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": ["1", "2"]}, "'x' \\(FP32\\): 'data' must hold num"),
        ({"name": "x", "shape": [2], "datatype": "BOOL", "data": [1, 0]}, "'x' \\(BOOL\\): 'data' must hold bool"),
        ({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}, "'x' \\(FP32\\).*evenly nested"),
        ({"name": "x", "shape": [1], "datatype": "BYTES", "data": [3]}, "'x' \\(BYTES\\): 'data' must hold strings"),
        ({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}, "'x': 'shape' must be"),
        ({"name": "x", "shape": [1], "datatype": "FP32"}, "'x' has neither 'data'"),
        ({"shape": [1], "datatype": "FP32", "data": [1]}, r"inputs\[0\] needs a non-empty string 'name'"),
    ],
)
def test_malformed_json_inputs(tensor: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        decode_request(json_body(tensor), header_length=None)


def test_malformed_documents() -> None:
    with pytest.raises(InvalidParameterValue, match="not valid JSON"):
        decode_request(b"{", header_length=None)
    with pytest.raises(InvalidParameterValue, match="non-empty list"):
        decode_request(b'{"inputs": []}', header_length=None)
    dup = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    with pytest.raises(InvalidParameterValue, match="'x' appears more than once"):
        decode_request(json_body(dup, dup), header_length=None)
    header = orjson.dumps(
        {"inputs": [{"name": "flag", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}]}
    )
    with pytest.raises(InvalidParameterValue, match="'flag' \\(BOOL\\): binary elements must be 0 or 1"):
        decode_request(header + b"\x01\x07", header_length=len(header))
