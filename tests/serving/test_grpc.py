"""OIP v2 over gRPC (capstan.serving.grpc_server) started by the serving app's lifespan behind a real uvicorn.

The client is the real ``tritonclient.grpc`` (raw tensor contents, its default) and, for typed contents, its
generated stub. A recording observer checks what the serving core reports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.serving.app import BatchingOptions, GrpcOptions, serving_app
from capstan.serving.model import SklearnServedModel
from capstan.serving.oip import TensorMetadata
from helpers.asgi_server import serve_app
from helpers.server import free_port

Array = npt.NDArray[Any]
MAX_BODY = 1024 * 1024


class Recorder:
    """An observer that records every call (from any thread)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def _add(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def request_done(self, model: str, version: str, protocol: str, status: int, seconds: float) -> None:
        self._add("request_done", model, version, protocol, status, seconds)

    def predicted(self, model: str, version: str, request_id: str, inputs: Array, outputs: Array) -> None:
        self._add("predicted", model, version, request_id, inputs, outputs)

    def batch_done(self, model: str, version: str, rows: int, seconds: float) -> None:
        self._add("batch_done", model, version, rows, seconds)

    def queue_depth(self, model: str, version: str, rows: int) -> None:
        self._add("queue_depth", model, version, rows)

    def of(self, hook: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [call[1:] for call in self.calls if call[0] == hook]

    def wait_for(self, hook: str, predicate: Any, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not any(predicate(call) for call in self.of(hook)):
            assert time.monotonic() < deadline, f"no {hook} call matched: {self.of(hook)}"
            time.sleep(0.005)


class Broken:
    """A ready model whose predict raises."""

    name, version, platform, ready = "broken", "1", "test", True
    inputs = (TensorMetadata("x", "FP64", (-1, 4)),)
    outputs = (TensorMetadata("y", "FP64", (-1,)),)

    def predict(self, x: Array) -> Array:
        raise RuntimeError("secret internal detail")


class Gated(SklearnServedModel):
    """predict blocks until the test opens the gate; ``entered`` tells when a batch reached it."""

    def __init__(self, estimator: Any) -> None:
        super().__init__("gated", "1", estimator, 4)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def predict(self, x: Array) -> Array:
        self.entered.set()
        assert self.gate.wait(30)
        return super().predict(x)


@pytest.fixture(scope="module")
def iris() -> tuple[LogisticRegression, Array]:
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y), x


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def target(iris: tuple[LogisticRegression, Array], recorder: Recorder) -> Iterator[str]:
    model, _ = iris
    models = {
        "iris": SklearnServedModel("iris", "3", model, 4),
        "broken": Broken(),
        "cold": SklearnServedModel("cold", "1", model, 4, ready=False),
    }
    port = free_port()
    app = serving_app(models, max_body_bytes=MAX_BODY, batching=None, observer=recorder,
                      grpc=GrpcOptions(port=port))
    with serve_app(app):
        yield f"127.0.0.1:{port}"


@pytest.fixture()
def client(target: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(target) as c:
        yield c


def infer(client: triton.InferenceServerClient, model: str, data: Array, datatype: str, **kwargs: Any) -> Any:
    tensor = triton.InferInput("anything", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor], **kwargs)


def grpc_error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


# --------------------------------------------------------------------------------------------------- health


def test_live_ready_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert not client.is_server_ready()  # "cold" is not ready
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "3")
    assert not client.is_model_ready("cold")
    meta = client.get_model_metadata("iris", as_json=True)
    assert meta["name"] == "iris" and meta["versions"] == ["3"] and meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": ["-1", "4"]}]
    assert meta["outputs"] == [{"name": "output-0", "datatype": "INT64", "shape": ["-1"]}]
    assert client.get_server_metadata().name == "capstan"


def test_unknown_model_or_version_is_not_found(client: triton.InferenceServerClient) -> None:
    error = grpc_error(lambda: client.get_model_metadata("nope"))
    assert error.status() == "StatusCode.NOT_FOUND" and "'nope'" in str(error.message())
    assert grpc_error(lambda: client.is_model_ready("iris", "9")).status() == "StatusCode.NOT_FOUND"
    error = grpc_error(lambda: infer(client, "nope", np.zeros((1, 4)), "FP64"))
    assert error.status() == "StatusCode.NOT_FOUND"


# --------------------------------------------------------------------------------------------------- infer


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT32", "INT64", "UINT8"])
def test_infer_raw_contents(client: triton.InferenceServerClient, iris: tuple[LogisticRegression, Array],
                            datatype: str) -> None:
    model, x = iris
    rows = (x[40:47] * (10 if datatype[0] in "IU" else 1)).astype(triton.triton_to_np_dtype(datatype))
    result = infer(client, "iris", rows, datatype)
    expected = model.predict(rows.astype(np.float64))
    assert result.as_numpy("output-0").tolist() == expected.tolist()
    response = result.get_response()
    assert response.model_name == "iris" and response.model_version == "3"
    assert response.outputs[0].datatype == "INT64" and list(response.outputs[0].shape) == [7]
    assert len(response.raw_output_contents) == 1


def test_infer_typed_contents(target: str, iris: tuple[LogisticRegression, Array]) -> None:
    model, x = iris
    request = service_pb2.ModelInferRequest(model_name="iris", id="req-7")
    tensor = request.inputs.add(name="feats", datatype="FP32", shape=[3, 4])
    tensor.contents.fp32_contents.extend(x[100:103].astype(np.float32).ravel().tolist())
    with grpc.insecure_channel(target) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert response.id == "req-7" and not response.raw_output_contents
        assert list(response.outputs[0].contents.int64_contents) == model.predict(x[100:103]).tolist()
        request.inputs[0].datatype = "FP64"  # fp32_contents no longer match the datatype
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fp64_contents" in str(caught.value.details())


def test_bad_input_is_invalid_argument_naming_it(client: triton.InferenceServerClient) -> None:
    error = grpc_error(lambda: infer(client, "iris", np.zeros((2, 3), dtype=np.float32), "FP32"))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'anything'" in str(error.message()) and "[-1, 4]" in str(error.message())
    error = grpc_error(lambda: infer(client, "iris", np.array([[b"a"] * 4], dtype=np.object_), "BYTES"))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "'anything'" in str(error.message())
    error = grpc_error(lambda: infer(client, "iris", np.zeros((MAX_BODY // 32 + 1, 4)), "FP64"))
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"  # over max_body_bytes
    wrong_output = [triton.InferRequestedOutput("nope")]
    error = grpc_error(lambda: infer(client, "iris", np.zeros((1, 4)), "FP64", outputs=wrong_output))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "'nope'" in str(error.message())


def test_not_ready_and_failing_models(client: triton.InferenceServerClient) -> None:
    error = grpc_error(lambda: infer(client, "cold", np.zeros((1, 4)), "FP64"))
    assert error.status() == "StatusCode.UNAVAILABLE"
    error = grpc_error(lambda: infer(client, "broken", np.zeros((1, 4)), "FP64", headers={"x-request-id": "rq-42"}))
    assert error.status() == "StatusCode.INTERNAL"
    assert "rq-42" in str(error.message()) and "secret" not in str(error.message())
    assert client.is_server_live()  # still serving


def test_observer_hears_every_request(client: triton.InferenceServerClient, recorder: Recorder) -> None:
    infer(client, "iris", np.zeros((2, 4)), "FP64", headers={"x-request-id": "obs-1"})
    grpc_error(lambda: infer(client, "iris", np.zeros((2, 3)), "FP64"))
    grpc_error(lambda: infer(client, "ghost", np.zeros((2, 4)), "FP64", model_version="5"))
    done = recorder.of("request_done")
    assert ("iris", "3", "v2-grpc", 200) in [call[:4] for call in done]
    assert ("iris", "3", "v2-grpc", 400) in [call[:4] for call in done]
    assert ("ghost", "5", "v2-grpc", 404) in [call[:4] for call in done]
    assert all(call[4] >= 0 for call in done)
    (predicted,) = [call for call in recorder.of("predicted") if call[2] == "obs-1"]
    assert predicted[:2] == ("iris", "3") and predicted[3].shape == (2, 4) and predicted[4].shape == (2,)
    assert ("iris", "3", 2) in [call[:3] for call in recorder.of("batch_done")]


# --------------------------------------------------------------------------------------------------- batching


def test_batched_concurrent_requests_get_their_own_predictions(iris: tuple[LogisticRegression, Array]) -> None:
    model, x = iris
    port = free_port()
    app = serving_app({"iris": SklearnServedModel("iris", "1", model, 4)}, max_body_bytes=MAX_BODY,
                      batching=BatchingOptions(max_batch_size=16, max_delay_ms=20, max_queue=1000),
                      grpc=GrpcOptions(port=port))
    with serve_app(app), triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        def call(i: int) -> tuple[int, list[int]]:
            rows = x[i : i + 1 + i % 3]
            return i, infer(client, "iris", rows, "FP64").as_numpy("output-0").tolist()

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, range(0, 140, 2)))
    for i, predictions in results:
        assert predictions == model.predict(x[i : i + 1 + i % 3]).tolist()


def test_rest_and_grpc_share_one_batcher(iris: tuple[LogisticRegression, Array]) -> None:
    model, x = iris
    gated, recorder, port = Gated(model), Recorder(), free_port()
    app = serving_app({"gated": gated}, max_body_bytes=MAX_BODY, observer=recorder, grpc=GrpcOptions(port=port),
                      batching=BatchingOptions(max_batch_size=64, max_delay_ms=1, max_queue=100))
    with serve_app(app) as url, triton.InferenceServerClient(f"127.0.0.1:{port}") as client, \
            ThreadPoolExecutor(3) as pool:
        first = pool.submit(httpx.post, f"{url}/invocations", json={"instances": x[:1].tolist()}, timeout=30)
        assert gated.entered.wait(10)  # the first batch (one row) is in flight; the next two queue behind it
        over_rest = pool.submit(httpx.post, f"{url}/v1/models/gated:predict", json={"instances": x[1:3].tolist()},
                                timeout=30)
        recorder.wait_for("queue_depth", lambda call: call[2] == 2)
        over_grpc = pool.submit(infer, client, "gated", x[3:6].astype(np.float32), "FP32")
        recorder.wait_for("queue_depth", lambda call: call[2] == 5)
        gated.gate.set()
        assert first.result(timeout=10).json()["predictions"] == model.predict(x[:1]).tolist()
        assert over_rest.result(timeout=10).json()["predictions"] == model.predict(x[1:3]).tolist()
        assert over_grpc.result(timeout=10).as_numpy("output-0").tolist() == model.predict(x[3:6]).tolist()
    assert [call[2] for call in recorder.of("batch_done")] == [1, 5]  # REST and gRPC rows in one batch
    protocols = sorted(call[2] for call in recorder.of("request_done"))
    assert protocols == ["mlflow", "v1", "v2-grpc"]


# --------------------------------------------------------------------------------------------------- server


def test_workers_share_the_port(iris: tuple[LogisticRegression, Array]) -> None:
    model, x = iris
    port = free_port()

    def app() -> Any:
        return serving_app({"iris": SklearnServedModel("iris", "1", model, 4)}, max_body_bytes=MAX_BODY,
                           batching=None, grpc=GrpcOptions(port=port))

    first, second = app(), app()
    with serve_app(first), serve_app(second), triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        assert first.state.grpc_port == second.state.grpc_port == port
        assert infer(client, "iris", x[:2], "FP64").as_numpy("output-0").tolist() == model.predict(x[:2]).tolist()


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    paths: dict[str, Path] = {}

    def issue(name: str, issuer: tuple[x509.Name, Any] | None, *, ca: bool = False) -> tuple[x509.Name, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
        cert = builder.issuer_name(issuer_name).sign(issuer_key, hashes.SHA256())
        paths[f"{name}.crt"] = directory / f"{name}.crt"
        paths[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{name}.key"] = directory / f"{name}.key"
        paths[f"{name}.key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        return subject, key

    authority = issue("ca", None, ca=True)
    issue("server", authority)
    issue("client", authority)
    return paths


def test_mutual_tls(iris: tuple[LogisticRegression, Array], tmp_path: Path) -> None:
    model, x = iris
    pem, port = _certificates(tmp_path), free_port()
    options = GrpcOptions(port=port, tls_cert=pem["server.crt"], tls_key=pem["server.key"],
                          tls_client_ca=pem["ca.crt"])
    app = serving_app({"iris": SklearnServedModel("iris", "1", model, 4)}, max_body_bytes=MAX_BODY, batching=None,
                      grpc=options)
    with serve_app(app):
        with triton.InferenceServerClient(f"127.0.0.1:{port}", ssl=True, root_certificates=str(pem["ca.crt"]),
                                          private_key=str(pem["client.key"]),
                                          certificate_chain=str(pem["client.crt"])) as client:
            assert infer(client, "iris", x[:2], "FP64").as_numpy("output-0").tolist() == \
                model.predict(x[:2]).tolist()
        with triton.InferenceServerClient(f"127.0.0.1:{port}", ssl=True,
                                          root_certificates=str(pem["ca.crt"])) as anonymous:
            assert grpc_error(anonymous.is_server_live).status() == "StatusCode.UNAVAILABLE"
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as plaintext:
            assert grpc_error(plaintext.is_server_live).status() == "StatusCode.UNAVAILABLE"


def test_options_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterValue, match="certificate and a key"):
        GrpcOptions(port=1, tls_cert=tmp_path / "cert.pem").validate()
    with pytest.raises(InvalidParameterValue, match="65535"):
        GrpcOptions(port=70000).validate()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else real(name, *a))
    with pytest.raises(InvalidState, match=r"pip install 'capstan\[grpc\]'"):
        serving_app({}, max_body_bytes=MAX_BODY, batching=None, grpc=GrpcOptions(port=1))
