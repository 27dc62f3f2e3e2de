"""TCP_NODELAY on every accepted connection, including uvicorn's multi-worker mode (uvicorn#3149).

With Nagle's algorithm on, a small response written in two parts waits for the client's delayed ACK, which makes
each keep-alive round trip take ~40 ms on Linux instead of ~1 ms. The live test measures exactly that.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from pathlib import Path

import pytest

from capstan.server.runner import NoDelayH11Protocol, protocol_class, set_nodelay, settings_environment
from capstan.settings import Settings
from helpers.server import start_server


class _Transport(asyncio.BaseTransport):
    def __init__(self, sock: socket.socket | None) -> None:
        super().__init__()
        self._sock = sock

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._sock if name == "socket" else default


def test_set_nodelay_on_a_socket_asyncio_would_skip() -> None:
    # uvicorn binds with socket.socket(family) (protocol number 0), so asyncio's own TCP_NODELAY logic skips it.
    listener = socket.socket(socket.AF_INET)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        assert accepted.proto == 0
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert set_nodelay(_Transport(accepted)) is True
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert set_nodelay(_Transport(None)) is False
        unix_a, unix_b = socket.socketpair(socket.AF_UNIX)
        assert set_nodelay(_Transport(unix_a)) is False
        unix_a.close()
        unix_b.close()
    finally:
        for sock in (accepted, client, listener):
            sock.close()
    assert issubclass(protocol_class(), asyncio.Protocol)
    assert protocol_class() is NoDelayH11Protocol or protocol_class().__name__ == "_NoDelayHttpTools"


def test_worker_settings_round_trip(tmp_path: Path) -> None:
    settings = Settings.for_home(tmp_path, project="p1", artifact_max_bytes=1234, s3_endpoint="http://s3:9000")
    env = settings_environment(settings, "0.0.0.0")
    rebuilt = Settings.from_env(env)
    assert (rebuilt.home, rebuilt.db_url, rebuilt.artifacts, rebuilt.project, rebuilt.artifact_max_bytes,
            rebuilt.s3_endpoint) == (settings.home, settings.db_url, settings.artifacts, "p1", 1234,
                                     "http://s3:9000")
    assert rebuilt.server_host == "0.0.0.0"


def _round_trips(port: int, request: bytes, count: int) -> list[float]:
    """Milliseconds per request/response on one keep-alive connection (the client itself has Nagle off)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(10)
    buffer = b""
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(request)
            while True:
                head, sep, rest = buffer.partition(b"\r\n\r\n")
                if sep:
                    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:"))
                    if len(rest) >= length:
                        buffer = rest[length:]
                        break
                chunk = sock.recv(65536)
                assert chunk, "server closed the connection"
                buffer += chunk
            times.append((time.perf_counter() - started) * 1000)
    finally:
        sock.close()
    return times


@pytest.mark.slow
def test_small_requests_are_fast_with_two_workers(tmp_path: Path) -> None:
    with start_server(tmp_path / "home", workers=2) as server:
        port = int(server.url.rsplit(":", 1)[1])
        get = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
        body = b"{}"
        post = (b"POST /api/2.0/mlflow/experiments/search HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        for request in (get, post):
            times = _round_trips(port, request, 60)[10:]  # the first ones warm the worker up
            # ~1 ms with TCP_NODELAY; Nagle plus the client's delayed ACK makes every round trip >= ~40 ms. The lower
            # quartile keeps the check meaningful on a loaded machine, where some round trips wait for a CPU.
            quartile = statistics.quantiles(times, n=4)[0]
            assert quartile < 25, f"lower-quartile round trip {quartile:.1f} ms (median {statistics.median(times):.1f})"
