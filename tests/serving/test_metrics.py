"""Serving metrics (capstan.serving.metrics): a real serving app behind uvicorn with `ServingMetrics` as its observer
and ``GET /metrics``, the exposition parsed with prometheus_client's parser; the controller's and drift setters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.serving.app import BatchingOptions, serving_app
from capstan.serving.metrics import CONTENT_TYPE, ServingMetrics
from capstan.serving.model import SklearnServedModel
from helpers.asgi_server import serve_app


def _samples(text: str) -> dict[str, list[Sample]]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, ServingMetrics, Any]]:
    x, y = load_iris(return_X_y=True)
    metrics = ServingMetrics()
    model = SklearnServedModel("iris", "3", LogisticRegression(max_iter=500).fit(x, y), 4)
    app = serving_app({"iris": model}, max_body_bytes=1 << 20, batching=BatchingOptions(max_batch_size=8),
                      observer=metrics, metrics=metrics.exposition)
    with serve_app(app) as url:
        yield url, metrics, x


def test_requests_latency_and_batch_sizes_per_model_version(served: tuple[str, ServingMetrics, Any]) -> None:
    url, _, x = served
    with httpx.Client(base_url=url) as client:
        for n in (1, 2, 3):
            body = {"inputs": [{"name": "in", "shape": [n, 4], "datatype": "FP64", "data": x[:n].ravel().tolist()}]}
            assert client.post("/v2/models/iris/infer", json=body).status_code == 200
        assert client.post("/v1/models/iris:predict", json={"instances": x[:5].tolist()}).status_code == 200
        assert client.post("/invocations", json={"inputs": x[:4].tolist()}).status_code == 200
        bad = {"inputs": [{"name": "in", "shape": [1, 3], "datatype": "FP64", "data": [1.0, 2.0, 3.0]}]}
        assert client.post("/v2/models/iris/infer", json=bad).status_code == 400
        scrape = client.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"] == CONTENT_TYPE
    samples = _samples(scrape.text)

    requests = samples["capstan_serving_requests"]
    mine = {"model": "iris", "version": "3"}
    assert _value(requests, "capstan_serving_requests_total", **mine, protocol="v2", code="200") == 3
    assert _value(requests, "capstan_serving_requests_total", **mine, protocol="v2", code="400") == 1
    assert _value(requests, "capstan_serving_requests_total", **mine, protocol="v1", code="200") == 1
    assert _value(requests, "capstan_serving_requests_total", **mine, protocol="mlflow", code="200") == 1
    latency = samples["capstan_serving_request_duration_seconds"]
    assert _value(latency, "capstan_serving_request_duration_seconds_count", **mine, protocol="v2") == 4
    assert _value(latency, "capstan_serving_request_duration_seconds_bucket", **mine, protocol="v2", le="+Inf") == 4

    batches = samples["capstan_serving_batch_size"]
    assert _value(batches, "capstan_serving_batch_size_sum", **mine) == 1 + 2 + 3 + 5 + 4  # rows predicted
    assert _value(batches, "capstan_serving_batch_size_bucket", **mine, le="1.0") >= 1
    assert _value(samples["capstan_serving_predict_duration_seconds"],
                  "capstan_serving_predict_duration_seconds_count", **mine) == _value(
        batches, "capstan_serving_batch_size_count", **mine)
    assert _value(samples["capstan_serving_queue_depth"], "capstan_serving_queue_depth", **mine) == 0


def test_controller_and_drift_series_and_forget() -> None:
    metrics = ServingMetrics()
    metrics.set_replicas("m", "1", {"ready": 2, "starting": 1})
    metrics.set_replicas("m", "2", {"ready": 1})
    metrics.cold_start("m", "1", 0.8)
    metrics.cold_start("m", "1", 1.2)
    metrics.set_drift("m", "1", "age", "psi", 0.31)
    metrics.request_done("m", "1", "v2", 200, 0.01)
    body, content_type = metrics.exposition()
    assert content_type == CONTENT_TYPE
    samples = _samples(body.decode())
    replicas = samples["capstan_serving_replicas"]
    assert _value(replicas, "capstan_serving_replicas", model="m", version="1", state="ready") == 2
    assert _value(replicas, "capstan_serving_replicas", model="m", version="1", state="starting") == 1
    assert _value(replicas, "capstan_serving_replicas", model="m", version="1", state="failed") == 0
    cold = samples["capstan_serving_cold_start_duration_seconds"]
    assert _value(samples["capstan_serving_cold_starts"], "capstan_serving_cold_starts_total", version="1") == 2
    assert _value(cold, "capstan_serving_cold_start_duration_seconds_sum", version="1") == pytest.approx(2.0)
    assert _value(cold, "capstan_serving_cold_start_duration_seconds_bucket", version="1", le="1.0") == 1
    drift = samples["capstan_feature_drift"]
    assert _value(drift, "capstan_feature_drift", model="m", version="1", feature="age", stat="psi") == 0.31

    metrics.forget("m", "1")
    samples = _samples(metrics.exposition()[0].decode())
    remaining = [s for family in samples.values() for s in family]
    assert remaining and all(s.labels.get("version") == "2" for s in remaining)


def test_each_instance_has_its_own_registry() -> None:
    first, second = ServingMetrics(), ServingMetrics()
    first.request_done("m", "1", "v1", 200, 0.001)
    counted = _samples(first.exposition()[0].decode())["capstan_serving_requests"]
    assert _value(counted, "capstan_serving_requests_total", model="m") == 1
    assert _samples(second.exposition()[0].decode())["capstan_serving_requests"] == []
