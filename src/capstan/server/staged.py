"""Serving ``/health`` while the application is still being built (decision 0750).

Building the FastAPI application (importing the API modules, creating ~180 routes, the middleware stack) and
starting it (its lifespan: leader election, the controllers) takes about half a second, twice as long as opening
the stores. `StagedApp` is the ASGI application uvicorn serves instead: its lifespan start-up returns at once and
builds the real application on a thread, then runs that application's own lifespan. Until both are done,
``GET /health`` is answered here with the same store probe the application runs, and every other request waits
for the application and is then handed to it unchanged: its middleware (authentication, the browser guard, audit,
metrics) sees each request as before. A build or start-up that fails stops the server with exit status 3, as a
failed lifespan does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from capstan.server.asgi import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from capstan.services import Services

log = logging.getLogger("capstan.server")


HEALTH_PATH = "/health"


class StagedApp:
    """An ASGI application that builds ``build()`` in the background and answers health probes meanwhile.

    Args:
        build: makes the real application (run on a thread, once, at lifespan start-up).
        probe: the store probe of ``/health``: ``(status, body)``; run on a thread.
        on_failure: called (on the event loop) when the build or the real application's start-up failed; the
            server uses it to shut down.
    """

    def __init__(self, build: Callable[[], ASGIApp], probe: Callable[[], tuple[int, dict[str, Any]]],
                 on_failure: Callable[[], None] = lambda: None) -> None:
        self._build = build
        self._probe = probe
        self.on_failure = on_failure
        self._app: ASGIApp | None = None  # set once the real application has started
        self._ready: asyncio.Event | None = None
        self._starting: asyncio.Task[ASGIApp | None] | None = None
        self._inner: _InnerLifespan | None = None
        self.failed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        if app is not None:
            await app(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and scope.get("path") == HEALTH_PATH and scope.get("method") == "GET":
            await self._health(send)
            return
        ready = self._ready
        if ready is not None:
            await ready.wait()
        if self._app is None:
            await _unavailable(scope, send)
            return
        await self._app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":  # pragma: no cover - the ASGI spec's order
            return
        self._ready = asyncio.Event()
        self._starting = asyncio.create_task(self._start())
        await send({"type": "lifespan.startup.complete"})
        message = await receive()  # lifespan.shutdown
        app = await self._starting
        if app is not None and self._inner is not None:
            await self._inner.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def _start(self) -> ASGIApp | None:
        assert self._ready is not None
        try:
            app: ASGIApp = await _on_thread(self._build, "capstan-server-build")
            inner = _InnerLifespan(app)
            await inner.startup()
        except Exception:
            log.exception("the server application did not start")
            self.failed = True
            self._ready.set()
            self.on_failure()
            return None
        self._inner = inner
        self._app = app
        self._ready.set()
        return app

    async def _health(self, send: Send) -> None:
        status, body = await _on_thread(self._probe, "capstan-health")
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


class _InnerLifespan:
    """Drives the real application's lifespan: start-up now, shut-down when the server stops."""

    def __init__(self, app: ASGIApp) -> None:
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._task: asyncio.Future[None] = asyncio.ensure_future(app(scope, self._to_app.get, self._from_app.put))

    async def startup(self) -> None:
        await self._exchange("lifespan.startup")

    async def shutdown(self) -> None:
        await self._exchange("lifespan.shutdown")
        await self._task

    async def _exchange(self, kind: str) -> None:
        await self._to_app.put({"type": kind})
        reply: asyncio.Future[Any] = asyncio.ensure_future(self._from_app.get())
        waited: set[asyncio.Future[Any]] = {reply, self._task}
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if reply not in done:
            reply.cancel()
            self._task.result()  # raises what the lifespan raised
            raise RuntimeError(f"the application's lifespan ended without answering {kind}")
        message = reply.result()
        if message["type"] != f"{kind}.complete":
            raise RuntimeError(f"{kind} failed: {message.get('message', '')}")


async def _on_thread(fn: Callable[[], Any], name: str) -> Any:
    """``fn()`` on a thread of its own (not the loop's default executor, which the application also uses)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def store_probe(services: Services) -> tuple[int, dict[str, str]]:
    """What ``/health`` answers: 200 and ``{"status": "ok"}`` when the metadata store answers a query, else 503
    with the reason. The application's ``/health`` and `StagedApp` (while the application is built) both use it."""
    try:
        # A raw DBAPI round trip: no SQLAlchemy transaction, so no SQLite write lock is taken for a probe.
        raw = services.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchall()
            cursor.close()
        finally:
            raw.close()
    except Exception as exc:  # noqa: BLE001  # any store failure means "unhealthy", reported in the body
        log.warning("health check failed: %s", exc)
        return 503, {"status": "unavailable", "error_code": "TEMPORARILY_UNAVAILABLE",
                     "message": f"metadata store unreachable: {type(exc).__name__}"}
    return 200, {"status": "ok"}


async def _unavailable(scope: Scope, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE",
                       "message": "the server failed to start; see its log"}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
