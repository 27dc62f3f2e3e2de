"""Access logs (capstan.serving.access_log): the real serving app behind uvicorn, wrapped in `AccessLogMiddleware`;
each request gives one JSON line whose request id is the one in the response's ``X-Request-Id``."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.serving.access_log import LOGGER_NAME, AccessLogMiddleware
from capstan.serving.app import serving_app
from capstan.serving.model import SklearnServedModel
from helpers.asgi_server import serve_app


class Lines(logging.Handler):
    """Keeps the messages it handles."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Any]]:
    x, y = load_iris(return_X_y=True)
    model = SklearnServedModel("iris", "3", LogisticRegression(max_iter=500).fit(x, y), 4)
    app = AccessLogMiddleware(serving_app({"iris": model}, max_body_bytes=4096, batching=None))
    with serve_app(app) as url:
        yield url, x


@pytest.fixture
def lines() -> Iterator[list[str]]:
    logger = logging.getLogger(LOGGER_NAME)
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_one_json_line_per_request_with_the_response_request_id(served: tuple[str, Any], lines: list[str]) -> None:
    url, x = served
    body = orjson.dumps({"inputs": [{"name": "in", "shape": [2, 4], "datatype": "FP64",
                                     "data": x[:2].ravel().tolist()}]})
    with httpx.Client(base_url=url) as client:
        mine = client.post("/v2/models/iris/versions/3/infer", content=body, headers={"X-Request-Id": "abc-123"})
        generated = client.post("/v1/models/iris:predict", json={"instances": x[:1].tolist()})
        missing = client.get("/v2/models/nope")
        too_big = client.post("/invocations", content=b"x" * 5000)
    assert [r.status_code for r in (mine, generated, missing, too_big)] == [200, 200, 404, 413]
    records = [orjson.loads(line) for line in lines]
    assert len(records) == 4

    first = records[0]
    assert first["request_id"] == "abc-123" == mine.headers["x-request-id"]
    assert (first["method"], first["path"], first["status"]) == ("POST", "/v2/models/iris/versions/3/infer", 200)
    assert (first["model"], first["version"]) == ("iris", "3")
    assert first["bytes_in"] == len(body) and first["bytes_out"] == len(mine.content)
    assert first["duration_ms"] >= 0 and first["client"].startswith("127.0.0.1:")
    assert dt.datetime.fromisoformat(first["time"]).tzinfo is not None

    second = records[1]
    assert second["request_id"] == generated.headers["x-request-id"] and len(second["request_id"]) == 32
    assert second["model"] == "iris" and "version" not in second
    assert (records[2]["status"], records[2]["model"]) == (404, "nope")
    assert records[3]["status"] == 413 and "model" not in records[3]
    assert records[3]["request_id"] == too_big.headers["x-request-id"]


def test_nothing_is_logged_when_the_logger_is_off(served: tuple[str, Any]) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        assert httpx.get(f"{served[0]}/v2/health/live").status_code == 200
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.lines == []
