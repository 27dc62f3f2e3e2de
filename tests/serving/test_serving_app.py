"""The serving app (capstan.serving.app) behind a real uvicorn server on a loopback port.

Clients are the real ones: tritonclient's HTTP client for the Open Inference Protocol v2 (JSON and binary tensors),
httpx for KServe v1 and the MLflow scoring payloads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.serving.app import BatchingOptions, serving_app
from capstan.serving.model import SklearnServedModel
from capstan.serving.oip import TensorMetadata
from helpers.asgi_server import serve_app

Array = npt.NDArray[Any]
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def iris() -> tuple[LogisticRegression, Array]:
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y), x


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
def server(iris: tuple[LogisticRegression, Array]) -> Iterator[str]:
    model, _ = iris
    models = {
        "iris": SklearnServedModel("iris", "3", model, 4),
        "broken": Broken(),
        "cold": SklearnServedModel("cold", "1", model, 4, ready=False),
    }
    with serve_app(serving_app(models, max_body_bytes=MAX_BODY, batching=None)) as url:
        yield url


@pytest.fixture(scope="module")
def batched(iris: tuple[LogisticRegression, Array]) -> Iterator[str]:
    model, _ = iris
    app = serving_app({"iris": SklearnServedModel("iris", "1", model, 4)}, max_body_bytes=MAX_BODY,
                      batching=BatchingOptions(max_batch_size=16, max_delay_ms=20, max_queue=1000))
    with serve_app(app) as url:
        yield url


def triton_client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=url.removeprefix("http://"))


# --------------------------------------------------------------------------------------------------- OIP v2


def test_tritonclient_health_and_metadata(server: str) -> None:
    client = triton_client(server)
    assert client.is_server_live()
    assert not client.is_server_ready()  # "cold" is not ready
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", model_version="3")
    assert not client.is_model_ready("cold")
    meta = client.get_model_metadata("iris")
    assert meta["name"] == "iris" and meta["versions"] == ["3"] and meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert meta["outputs"][0]["name"] == "output-0"
    assert client.get_server_metadata()["name"] == "capstan"


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64"])
def test_tritonclient_infer(server: str, iris: tuple[LogisticRegression, Array], binary: bool,
                            datatype: str) -> None:
    model, x = iris
    rows = x[::7].astype(triton.triton_to_np_dtype(datatype))
    tensor = triton.InferInput("features", list(rows.shape), datatype)  # any name for a single-input model
    tensor.set_data_from_numpy(rows, binary_data=binary)
    wanted = triton.InferRequestedOutput("output-0", binary_data=binary)
    result = triton_client(server).infer("iris", [tensor], outputs=[wanted], request_id="r-1")
    got = result.as_numpy("output-0")
    assert got is not None
    np.testing.assert_array_equal(got, model.predict(rows.astype(np.float64)))
    assert result.get_response()["id"] == "r-1"
    assert result.get_response()["model_version"] == "3"


def test_infer_without_content_type_and_version_route(server: str, iris: tuple[LogisticRegression, Array]) -> None:
    model, x = iris
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": x[:2].ravel().tolist()}]}
    import orjson

    raw = orjson.dumps(body)
    r = httpx.post(f"{server}/v2/models/iris/versions/3/infer", content=raw, headers={"Content-Type": ""})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == model.predict(x[:2]).tolist()
    assert r.headers["x-request-id"]


# --------------------------------------------------------------------------------------------------- KServe v1


def test_kserve_v1(server: str, iris: tuple[LogisticRegression, Array]) -> None:
    model, x = iris
    assert httpx.get(f"{server}/v1/models/iris").json() == {"name": "iris", "ready": True}
    r = httpx.post(f"{server}/v1/models/iris:predict", json={"instances": x[:5].tolist()})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": model.predict(x[:5]).tolist()}


# --------------------------------------------------------------------------------------------------- MLflow


def test_mlflow_payloads(batched: str, iris: tuple[LogisticRegression, Array]) -> None:
    model, x = iris
    rows = x[10:14]
    columns = ["a", "b", "c", "d"]
    expected = {"predictions": model.predict(rows).tolist()}
    payloads = [
        {"dataframe_split": {"columns": columns, "data": rows.tolist()}},
        {"dataframe_records": [dict(zip(columns, row, strict=True)) for row in rows.tolist()]},
        {"instances": rows.tolist()},
        {"inputs": rows.tolist()},
    ]
    for payload in payloads:
        r = httpx.post(f"{batched}/invocations", json=payload)
        assert r.status_code == 200, (payload, r.text)
        assert r.json() == expected
    assert httpx.get(f"{batched}/ping").status_code == 200
    assert httpx.get(f"{batched}/health").status_code == 200
    assert httpx.get(f"{batched}/version").text


# --------------------------------------------------------------------------------------------------- batching


def test_batching_concurrent_requests_get_their_own_predictions(
    batched: str, iris: tuple[LogisticRegression, Array]
) -> None:
    model, x = iris

    def call(i: int) -> tuple[int, list[int]]:
        rows = x[i : i + 1 + i % 3]
        r = httpx.post(f"{batched}/v1/models/iris:predict", json={"instances": rows.tolist()}, timeout=30)
        assert r.status_code == 200, r.text
        return i, r.json()["predictions"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(0, 140, 2)))
    for i, predictions in results:
        assert predictions == model.predict(x[i : i + 1 + i % 3]).tolist()


def test_queue_full_is_503_with_retry_after(iris: tuple[LogisticRegression, Array]) -> None:
    model, x = iris
    gated = Gated(model)
    app = serving_app({"gated": gated}, max_body_bytes=MAX_BODY,
                      batching=BatchingOptions(max_batch_size=1, max_delay_ms=0, max_queue=1))
    with serve_app(app) as url:
        def call() -> httpx.Response:
            return httpx.post(f"{url}/invocations", json={"instances": x[:1].tolist()}, timeout=30)

        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(call)
            assert gated.entered.wait(10)  # the first request's batch is in flight
            others = [pool.submit(call), pool.submit(call)]
            rejected = None
            for future in others:  # exactly one of the two fits the queue of one row
                try:
                    rejected = future.result(timeout=5)
                    break
                except TimeoutError:
                    continue
            assert rejected is not None
            assert rejected.status_code == 503, rejected.text
            assert int(rejected.headers["retry-after"]) >= 1
            assert "queue is full" in rejected.json()["error"]
            gated.gate.set()
            assert first.result(timeout=10).status_code == 200
            statuses = sorted(f.result(timeout=10).status_code for f in others)
            assert statuses == [200, 503]


# --------------------------------------------------------------------------------------------------- errors


def test_bad_input_is_400_naming_the_input(server: str) -> None:
    body = {"inputs": [{"name": "feats", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    r = httpx.post(f"{server}/v2/models/iris/infer", json=body)
    assert r.status_code == 400
    assert "'feats'" in r.json()["error"] and "[1, 3]" in r.json()["error"]
    body = {"inputs": [{"name": "feats", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}
    r = httpx.post(f"{server}/v2/models/iris/infer", json=body)
    assert r.status_code == 400 and "'feats'" in r.json()["error"]
    r = httpx.post(f"{server}/v2/models/iris/infer", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = httpx.post(f"{server}/v1/models/iris:predict", json={"instances": [[1, 2]]})
    assert r.status_code == 400 and "[1, 2]" in r.json()["error"]
    r = httpx.post(f"{server}/v1/models/iris:predict", json={"rows": []})
    assert r.status_code == 400 and "instances" in r.json()["error"]


def test_unknown_model_version_or_route_is_404(server: str) -> None:
    for path in ("/v2/models/nope", "/v2/models/iris/versions/9", "/v2/models/nope/ready", "/v1/models/nope",
                 "/v2/nothing"):
        r = httpx.get(f"{server}{path}")
        assert r.status_code == 404, path
        assert "error" in r.json()
    r = httpx.post(f"{server}/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404 and "'nope'" in r.json()["error"]
    r = httpx.post(f"{server}/invocations", json={"instances": [[1, 2, 3, 4]]})  # three models here
    assert r.status_code == 404


def test_body_over_the_limit_is_413(server: str) -> None:
    r = httpx.post(f"{server}/v1/models/iris:predict", content=b"x" * (MAX_BODY + 1))
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024

    r = httpx.post(f"{server}/v2/models/iris/infer", content=chunks())
    assert r.status_code == 413


def test_failing_model_is_500_with_request_id(server: str) -> None:
    r = httpx.post(f"{server}/v1/models/broken:predict", json={"instances": [[1, 2, 3, 4]]},
                   headers={"X-Request-Id": "abc-123"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["request_id"] == "abc-123" and "abc-123" in r.json()["error"]
    assert "secret" not in r.text


def test_not_ready_model_is_503(server: str) -> None:
    r = httpx.post(f"{server}/v1/models/cold:predict", json={"instances": [[1, 2, 3, 4]]})
    assert r.status_code == 503 and "not ready" in r.json()["error"]
    assert httpx.get(f"{server}/v2/models/cold/ready").status_code == 503
    assert httpx.get(f"{server}/v2/health/ready").status_code == 503


def test_every_response_has_a_request_id(server: str) -> None:
    generated = httpx.get(f"{server}/v2/health/live").headers["x-request-id"]
    assert len(generated) == 32
    assert httpx.get(f"{server}/nowhere", headers={"X-Request-Id": "mine"}).headers["x-request-id"] == "mine"


# --------------------------------------------------------------------------------------------------- observer


class Calls:
    """An observer recording its calls; ``fail`` makes every call raise after recording it."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail

    def _add(self, *call: Any) -> None:
        self.calls.append(call)
        if self.fail:
            raise RuntimeError("observer bug")

    def request_done(self, model: str, version: str, protocol: str, status: int, seconds: float) -> None:
        self._add("request_done", model, version, protocol, status)

    def predicted(self, model: str, version: str, request_id: str, inputs: Array, outputs: Array) -> None:
        self._add("predicted", model, version, request_id, inputs.shape, outputs.tolist())

    def batch_done(self, model: str, version: str, rows: int, seconds: float) -> None:
        self._add("batch_done", model, version, rows)

    def queue_depth(self, model: str, version: str, rows: int) -> None:
        self._add("queue_depth", model, version, rows)


def test_observer_hears_every_inference_request(iris: tuple[LogisticRegression, Array]) -> None:
    model, x = iris
    calls = Calls()
    app = serving_app({"iris": SklearnServedModel("iris", "3", model, 4), "broken": Broken()},
                      max_body_bytes=MAX_BODY, batching=None, observer=calls)
    with serve_app(app) as url:
        ok = httpx.post(f"{url}/v2/models/iris/infer", headers={"X-Request-Id": "r-1"},
                        json={"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64",
                                          "data": x[:2].ravel().tolist()}]})
        assert ok.status_code == 200
        assert httpx.post(f"{url}/v1/models/iris:predict", json={"instances": [[1, 2]]}).status_code == 400
        assert httpx.post(f"{url}/v1/models/iris:predict", content=b"x" * (MAX_BODY + 1)).status_code == 413
        assert httpx.post(f"{url}/v2/models/iris/versions/9/infer", json={}).status_code == 404
        assert httpx.post(f"{url}/v1/models/broken:predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 500
        assert httpx.post(f"{url}/invocations", json={"instances": [[1, 2, 3, 4]]}).status_code == 404
        assert httpx.get(f"{url}/v2/models/iris").status_code == 200  # metadata: not an inference request
    assert [c[1:] for c in calls.calls if c[0] == "request_done"] == [
        ("iris", "3", "v2", 200), ("iris", "3", "v1", 400), ("iris", "3", "v1", 413), ("iris", "9", "v2", 404),
        ("broken", "1", "v1", 500), ("", "", "mlflow", 404),
    ]
    assert [c[1:] for c in calls.calls if c[0] == "predicted"] == [
        ("iris", "3", "r-1", (2, 4), model.predict(x[:2]).tolist()),
    ]
    assert [c[1:] for c in calls.calls if c[0] == "batch_done"] == [("iris", "3", 2), ("broken", "1", 1)]


def test_a_failing_observer_does_not_fail_the_request(iris: tuple[LogisticRegression, Array]) -> None:
    model, x = iris
    calls = Calls(fail=True)
    app = serving_app({"iris": SklearnServedModel("iris", "3", model, 4)}, max_body_bytes=MAX_BODY,
                      batching=BatchingOptions(max_batch_size=4, max_delay_ms=1, max_queue=100), observer=calls)
    with serve_app(app) as url:
        r = httpx.post(f"{url}/invocations", json={"instances": x[:3].tolist()})
    assert r.status_code == 200 and r.json()["predictions"] == model.predict(x[:3]).tolist()
    assert {c[0] for c in calls.calls} >= {"request_done", "predicted", "batch_done"}


def test_metrics_route_answers_the_given_exposition(iris: tuple[LogisticRegression, Array]) -> None:
    model, _ = iris
    models = {"iris": SklearnServedModel("iris", "3", model, 4)}
    exposition = (b"# TYPE up gauge\nup 1\n", "text/plain; version=0.0.4; charset=utf-8")
    with serve_app(serving_app(models, max_body_bytes=MAX_BODY, batching=None, metrics=lambda: exposition)) as url:
        r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200 and r.content == exposition[0]
    assert r.headers["content-type"] == exposition[1]
    with serve_app(serving_app(models, max_body_bytes=MAX_BODY, batching=None)) as url:
        assert httpx.get(f"{url}/metrics").status_code == 404
