"""The access log's buffered line sink (capstan.serving.access_log.BufferedLineSink): behind the real serving app
on uvicorn every request's line is written by `close`; lines go out without `close` once the interval passes or
the byte limit is reached; batches keep their order."""

from __future__ import annotations

import threading

import httpx
import orjson
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.serving.access_log import AccessLogMiddleware, BufferedLineSink
from capstan.serving.app import serving_app
from capstan.serving.model import SklearnServedModel
from helpers.asgi_server import serve_app


class Writes:
    """Keeps what the sink writes and signals each write."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.written = threading.Event()

    def __call__(self, data: bytes) -> None:
        self.chunks.append(data)
        self.written.set()

    def lines(self) -> list[bytes]:
        text = b"".join(self.chunks)
        assert text.endswith(b"\n")
        return text.splitlines()


def test_every_request_line_is_written_by_close_without_logging() -> None:
    x, y = load_iris(return_X_y=True)
    model = SklearnServedModel("iris", "3", LogisticRegression(max_iter=500).fit(x, y), 4)
    writes = Writes()
    sink = BufferedLineSink(writes, interval_s=3600).start()  # only close writes here
    app = AccessLogMiddleware(serving_app({"iris": model}, max_body_bytes=4096, batching=None), sink=sink)
    with serve_app(app) as url, httpx.Client(base_url=url) as client:
        ids = [client.post("/v1/models/iris:predict", json={"instances": x[:1].tolist()},
                           headers={"X-Request-Id": f"r{i}"}).headers["x-request-id"] for i in range(20)]
    sink.close()
    records = [orjson.loads(line) for line in writes.lines()]
    assert [r["request_id"] for r in records] == ids == [f"r{i}" for i in range(20)]
    assert all(r["status"] == 200 and r["model"] == "iris" for r in records)
    assert len(writes.chunks) == 1  # one write for all of them


def test_lines_are_written_once_the_interval_passes() -> None:
    writes = Writes()
    sink = BufferedLineSink(writes, interval_s=0.02).start()
    try:
        sink.write_line(b'{"a":1}')
        assert writes.written.wait(10), "the line was not written after the interval"
        assert writes.lines() == [b'{"a":1}']
    finally:
        sink.close()
    assert writes.lines() == [b'{"a":1}']


def test_lines_are_written_once_the_byte_limit_is_reached_and_keep_their_order() -> None:
    writes = Writes()
    sink = BufferedLineSink(writes, limit_bytes=100, interval_s=3600).start()
    try:
        sink.write_line(b"x" * 50)
        assert not writes.chunks  # under the limit: kept
        sink.write_line(b"y" * 60)
        assert writes.written.wait(10), "the lines were not written at the byte limit"
        sink.write_line(b"z")
    finally:
        sink.close()
    assert writes.lines() == [b"x" * 50, b"y" * 60, b"z"]


def test_close_without_start_writes_what_is_left_and_nothing_when_empty() -> None:
    writes = Writes()
    BufferedLineSink(writes).close()
    assert writes.chunks == []
    sink = BufferedLineSink(writes)
    sink.write_line(b"only")
    sink.close()
    assert writes.chunks == [b"only\n"]
