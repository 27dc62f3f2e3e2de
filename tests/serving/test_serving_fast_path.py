"""The serving app's fast path (inference routes answered in front of Starlette) against its Starlette path, request
ids, and the uvicorn protocols' write coalescing.

The parity tests send each request to the same app twice as ASGI calls: once through `ServingApp.__call__` (the
fast path) and once through `Starlette.__call__` (its router and middleware), and compare status, headers and body.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import httpx
import numpy.typing as npt
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from starlette.applications import Starlette
from starlette.routing import Match

from capstan.server.runner import CoalescingTransport
from capstan.serving.app import ServingApp, serving_app
from capstan.serving.core import RequestIds, request_id_of
from capstan.serving.model import SklearnServedModel
from capstan.serving.oip import TensorMetadata
from capstan.serving.rest import inference_route
from helpers.asgi_server import serve_app

Array = npt.NDArray[Any]
MAX_BODY = 4096
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class Broken:
    """A ready model whose predict raises."""

    name, version, platform, ready = "broken", "1", "test", True
    inputs = (TensorMetadata("x", "FP64", (-1, 4)),)
    outputs = (TensorMetadata("y", "FP64", (-1,)),)

    def predict(self, x: Array) -> Array:
        raise RuntimeError("secret internal detail")


@pytest.fixture(scope="module")
def app() -> ServingApp:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300).fit(x, y)
    return serving_app({"iris": SklearnServedModel("iris", "3", model, 4), "broken": Broken()},
                       max_body_bytes=MAX_BODY, batching=None)


async def _call(handler: Any, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]],
                chunks: int = 1) -> Answer:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"test"), *headers], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    size = -(-len(body) // chunks) or 1
    messages = [{"type": "http.request", "body": body[i:i + size], "more_body": i + size < len(body)}
                for i in range(0, max(len(body), 1), size)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await handler(scope, receive, send)
    start, *bodies = sent
    return start["status"], list(start["headers"]), b"".join(m.get("body", b"") for m in bodies)


def _both(app: ServingApp, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
          chunks: int = 1) -> tuple[Answer, Answer]:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def run() -> tuple[Answer, Answer]:
        fast = await _call(app, method, path, body, raw, chunks)
        slow = await _call(lambda s, r, w: Starlette.__call__(app, s, r, w), method, path, body, raw, chunks)
        return fast, slow

    return asyncio.run(run())


def _json(document: object) -> bytes:
    return httpx.Request("POST", "http://x", json=document).content


V2_OK = _json({"id": "a", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [1.0] * 8}]})
V2_BINARY = _json({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}],
                   "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
CASES = [
    ("POST", "/v2/models/iris/infer", V2_OK, {}),
    ("POST", "/v2/models/iris/versions/3/infer", V2_OK, {"Content-Type": "application/json"}),
    ("POST", "/v2/models/iris/infer", V2_BINARY, {}),
    ("POST", "/v2/models/iris/versions/9/infer", V2_OK, {}),
    ("POST", "/v2/models/nope/infer", V2_OK, {}),
    ("POST", "/v2/models/iris/infer", b"{not json", {}),
    ("POST", "/v2/models/iris/infer", _json({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64",
                                                          "data": [1, 2, 3]}]}), {}),
    ("POST", "/v2/models/iris/infer", V2_OK, {"Inference-Header-Content-Length": "x"}),
    ("POST", "/v2/models/iris/infer", b"x" * (MAX_BODY + 1), {}),
    ("POST", "/v2/models/iris/infer", b"x" * (MAX_BODY + 1), {"Content-Length": str(MAX_BODY + 1)}),
    ("POST", "/v2/models/broken/infer", _json({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                                                            "data": [1, 2, 3, 4]}]}), {}),
    ("POST", "/v1/models/iris:predict", _json({"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}), {}),
    ("POST", "/v1/models/iris:predict", _json({"instances": [[1, 2]]}), {}),
    ("POST", "/v1/models/iris:predict", _json({"instances": [[1, 2, 3, 4]]}), {"Content-Type": "text/csv"}),
    ("POST", "/v1/models/broken:predict", _json({"instances": [[1, 2, 3, 4]]}), {}),
    ("POST", "/invocations", _json({"dataframe_split": {"columns": list("abcd"), "data": [[1, 2, 3, 4]]}}), {}),
    ("POST", "/invocations", _json({"inputs": [[1, 2, 3, 4]], "extra": 1}), {}),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), CASES)
def test_the_fast_path_answers_as_starlette_does(app: ServingApp, method: str, path: str, body: bytes,
                                                  headers: dict[str, str]) -> None:
    fast, slow = _both(app, method, path, body, {**headers, "X-Request-Id": "req-7"}, chunks=3)
    assert fast == slow
    assert fast[1][-1] == (b"x-request-id", b"req-7")


def test_generated_request_ids_differ_but_the_rest_is_the_same(app: ServingApp) -> None:
    (f_status, f_headers, f_body), (s_status, s_headers, s_body) = _both(app, "POST", "/v2/models/iris/infer", V2_OK,
                                                                        {"X-Request-Id": "not a valid id!"})
    assert (f_status, f_body, f_headers[:-1]) == (s_status, s_body, s_headers[:-1]) and f_status == 200
    ids = [f_headers[-1][1].decode(), s_headers[-1][1].decode()]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids) and ids[0] != ids[1]


def test_other_routes_and_methods_still_go_through_starlette(app: ServingApp) -> None:
    for method, path in [("GET", "/v2/models/iris/infer"), ("POST", "/v2/models/iris/infer/"),
                         ("GET", "/v2/models/iris"), ("POST", "/v2/models/a/b/infer"), ("GET", "/nowhere")]:
        fast, slow = _both(app, method, path, headers={"X-Request-Id": "r"})
        assert fast == slow and fast[0] in (200, 307, 404, 405)


def test_middleware_added_later_sees_inference_requests(app: ServingApp) -> None:
    x, y = load_iris(return_X_y=True)
    wrapped = serving_app({"iris": SklearnServedModel("iris", "3", LogisticRegression(max_iter=300).fit(x, y), 4)},
                          max_body_bytes=MAX_BODY, batching=None)
    seen: list[str] = []

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope.get("path", ""))
            await self.inner(scope, receive, send)

    wrapped.add_middleware(Spy)
    fast, _ = _both(wrapped, "POST", "/v2/models/iris/infer", V2_OK)
    assert fast[0] == 200 and seen == ["/v2/models/iris/infer", "/v2/models/iris/infer"]


@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v2/models/m/versions/2/infer", "/v2/models/versions/infer",
                                  "/v2/models//infer", "/v2/models/m/versions//infer", "/v2/models/m/x/2/infer",
                                  "/v2/models/m/versions/2/3/infer", "/v1/models/m:predict", "/v1/models/a:b:predict",
                                  "/v1/models/:predict", "/v1/models/a/b:predict", "/invocations", "/invocations/",
                                  "/v2/models/m/infer/", "/v2/models/infer"])
def test_inference_route_matches_as_the_starlette_routes(app: ServingApp, path: str) -> None:
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    starlette = None
    for route in app.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            params = child.get("path_params", {})
            starlette = (params.get("name", ""), params.get("version"))
            break
    mine = inference_route(path)
    assert (mine[1:] if mine else None) == starlette


def test_request_ids_are_unique_and_new_in_a_forked_process() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(10_000)]
    assert len(set(made)) == len(made) and all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in made[:100])
    assert RequestIds().new()[:16] != made[0][:16]
    assert ids.of("client-id:1.2") == "client-id:1.2" and ids.of("") != ids.of("")
    assert request_id_of("x" * 129) != "x" * 129 and request_id_of("ok", lambda: "new") == "ok"
    assert request_id_of("bad id", lambda: "new") == "new"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a worker forked after the parent made ids
        os.write(write, ids.new().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child[:16] != made[0][:16] and child not in made


def test_live_inference_through_uvicorn_on_the_fast_path(app: ServingApp) -> None:
    with serve_app(app) as url:
        answer = httpx.post(f"{url}/v2/models/iris/infer", content=V2_OK)
        assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [2]
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
        assert httpx.get(f"{url}/v2/models/iris/infer").status_code == 405


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return f"info:{name}"


def test_coalescing_transport_joins_a_header_and_its_body() -> None:
    async def run() -> None:
        inner = _Recorder()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]  # a fake
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert inner.writes == [] and transport.get_write_buffer_size() == 19
        transport.write(b"body")
        assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        transport.write(b"alone")  # nothing follows in this iteration: it goes out once the loop turns
        await asyncio.sleep(0)
        assert inner.writes[-1] == b"alone"
        transport.write(b"")
        transport.write(b"last")
        transport.close()
        assert inner.writes[-1] == b"last" and inner.closed
        assert transport.get_extra_info("socket") == "info:socket"
        transport.write(b"dropped")
        transport.abort()
        await asyncio.sleep(0)
        assert inner.writes[-1] == b"last" and inner.aborted

    asyncio.run(run())
