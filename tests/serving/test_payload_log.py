"""Payload logging (capstan.serving.payload_log): the real serving app behind uvicorn with a `PayloadLogger` as its
observer, writing to a real artifact store; the Parquet files read back with pyarrow hold exactly the sampled rows."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.artifacts.store import ArtifactStore
from capstan.errors import InvalidParameterValue, InvalidState
from capstan.serving.app import BatchingOptions, serving_app
from capstan.serving.model import SklearnServedModel
from capstan.serving.payload_log import PayloadLogger, deployment_payload_prefix, is_sampled
from capstan.settings import Settings
from capstan.store.artifact_index_sql import SqlArtifactIndex
from capstan.store.engine import create_store_engine
from helpers.asgi_server import serve_app

Array = npt.NDArray[Any]


@pytest.fixture
def store(settings: Settings) -> Iterator[ArtifactStore]:
    engine = create_store_engine(settings)
    yield ArtifactStore(settings, SqlArtifactIndex(engine))
    engine.dispose()


def _tables(store: ArtifactStore, prefix: str) -> list[tuple[str, Any]]:
    return [(item.path, pq.read_table(io.BytesIO(store.read_bytes(item.path))))
            for item in store.list(prefix, recursive=True)]


def test_sampled_requests_are_written_to_parquet(store: ArtifactStore) -> None:
    x, y = load_iris(return_X_y=True)
    estimator = LogisticRegression(max_iter=500).fit(x, y)
    prefix = deployment_payload_prefix("iris-prod")
    logger = PayloadLogger(store, prefix, 0.5, flush_rows=10_000, flush_seconds=3600)
    app = serving_app({"iris": SklearnServedModel("iris", "3", estimator, 4)}, max_body_bytes=1 << 20,
                      batching=BatchingOptions(max_batch_size=8), observer=logger)
    ids = [f"req-{i}" for i in range(40)]
    sizes = {rid: 1 + i % 3 for i, rid in enumerate(ids)}
    with serve_app(app) as url, httpx.Client(base_url=url) as client:
        for i, rid in enumerate(ids):
            rows = x[i:i + sizes[rid]]
            body = {"inputs": [{"name": "in", "shape": list(rows.shape), "datatype": "FP64",
                                "data": rows.ravel().tolist()}]}
            response = client.post("/v2/models/iris/infer", json=body, headers={"X-Request-Id": rid})
            assert response.status_code == 200
    logger.close()

    sampled = [rid for rid in ids if is_sampled(rid, 0.5)]
    assert 0 < len(sampled) < len(ids)
    ((path, table),) = _tables(store, prefix)
    assert path.startswith("deployments/iris-prod/payloads/iris/3/date=") and path.endswith(".parquet")
    assert table.column_names == ["time", "request_id", "model", "version", "row", "input", "prediction"]
    data = table.to_pydict()
    assert sorted(set(data["request_id"])) == sorted(sampled)
    assert len(data["request_id"]) == sum(sizes[rid] for rid in sampled) == logger.rows_written
    assert set(data["model"]) == {"iris"} and set(data["version"]) == {"3"}
    for rid, row, values, prediction in zip(data["request_id"], data["row"], data["input"], data["prediction"],
                                            strict=True):
        index = ids.index(rid) + row
        np.testing.assert_array_equal(values, x[index])
        assert prediction == estimator.predict(x[index:index + 1])[0]
    assert all(t.tzinfo is not None for t in data["time"])


def test_a_full_buffer_is_flushed_by_the_background_thread(store: ArtifactStore) -> None:
    logger = PayloadLogger(store, "serve/m/payloads", 1.0, flush_rows=5, flush_seconds=3600)
    try:
        for i in range(3):
            logger.predicted("m", "1", f"r{i}", np.arange(4.0).reshape(2, 2), np.array(["a", "b"]))
        deadline = time.monotonic() + 30
        while logger.files_written == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert logger.files_written == 1  # 6 rows >= 5 woke the writer before close
    finally:
        logger.close()
    ((_, table),) = _tables(store, "serve/m/payloads")
    assert table.column("prediction").to_pylist() == ["a", "b"] * 3
    assert table.column("row").to_pylist() == [0, 1] * 3


def test_overflow_is_dropped_and_rate_zero_logs_nothing(store: ArtifactStore) -> None:
    logger = PayloadLogger(store, "p", 1.0, flush_rows=4, max_pending_rows=4, flush_seconds=3600)
    logger.predicted("m", "1", "a", np.zeros((3, 2)), np.zeros(3))
    logger.predicted("m", "1", "b", np.zeros((3, 2)), np.zeros(3))  # would exceed 4 pending rows
    logger.close()
    assert (logger.rows_written, logger.dropped_rows) == (3, 3)
    silent = PayloadLogger(store, "q", 0.0)
    silent.predicted("m", "1", "a", np.zeros((3, 2)), np.zeros(3))
    silent.close()
    assert store.list("q", recursive=True) == []


def test_sampling_is_deterministic_by_request_id() -> None:
    ids = [f"id-{i}" for i in range(2000)]
    chosen = [rid for rid in ids if is_sampled(rid, 0.25)]
    assert chosen == [rid for rid in ids if is_sampled(rid, 0.25)]
    assert 400 < len(chosen) < 600
    assert not any(is_sampled(rid, 0.0) for rid in ids) and all(is_sampled(rid, 1.0) for rid in ids)


def test_bad_rate_and_missing_pyarrow_are_one_line_errors(store: ArtifactStore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidParameterValue, match="sample_rate must be between 0 and 1"):
        PayloadLogger(store, "p", 1.5)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(InvalidState, match=r"pip install 'capstan\[parquet\]'") as caught:
        PayloadLogger(store, "p", 0.5)
    assert "\n" not in str(caught.value)
