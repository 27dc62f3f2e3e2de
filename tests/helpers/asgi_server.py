"""A real uvicorn server for an in-process ASGI app, on a free loopback port, in a background thread.

    from helpers.asgi_server import serve_app

    with serve_app(app) as url:
        httpx.get(f"{url}/ping")

Same HTTP protocol class as ``capstan server`` (TCP_NODELAY on every connection); the lifespan runs, so startup
and shutdown hooks are exercised.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from capstan.server.runner import protocol_class


@contextmanager
def serve_app(app: Any, *, timeout: float = 30) -> Iterator[str]:
    """Serve ``app`` on ``127.0.0.1`` (a free port); yield its base URL once it accepts; stop it after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http=protocol_class(), lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
