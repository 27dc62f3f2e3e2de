"""`StagedApp`: /health answers while the application is built; everything else waits for it and then reaches it
unchanged; the application's lifespan runs; a failed build or start-up stops the server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from capstan.server.staged import StagedApp, store_probe
from capstan.services import Services
from capstan.settings import Settings


class Lifespan:
    def __init__(self) -> None:
        self.events: list[str] = []


def real_app(record: Lifespan, *, fail_startup: bool = False) -> Starlette:
    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if fail_startup:
            raise RuntimeError("no start")
        record.events.append("startup")
        yield
        record.events.append("shutdown")

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello {request.url.path}")

    async def health(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("real health")

    return Starlette(routes=[Route("/hello", hello), Route("/health", health)], lifespan=lifespan)


async def call(app: Any, path: str, method: str = "GET") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "headers": [(b"host", b"127.0.0.1")],
             "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000), "root_path": ""}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


class Server:
    """Drives ``app``'s lifespan as uvicorn does."""

    def __init__(self, app: StagedApp) -> None:
        self.app = app
        self.to_app: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self.task = asyncio.create_task(self.app({"type": "lifespan", "state": {}}, self.to_app.get,
                                                 self.from_app.put))
        await self.to_app.put({"type": "lifespan.startup"})
        return str((await self.from_app.get())["type"])

    async def stop(self) -> str:
        await self.to_app.put({"type": "lifespan.shutdown"})
        reply = str((await asyncio.wait_for(self.from_app.get(), 10))["type"])
        assert self.task is not None
        await self.task
        return reply


def test_health_answers_while_the_app_is_built_and_other_requests_wait_for_it() -> None:
    record = Lifespan()
    release = threading.Event()
    probes: list[int] = []

    def build() -> Any:
        assert release.wait(10)
        return real_app(record)

    def probe() -> tuple[int, dict[str, Any]]:
        probes.append(1)
        return 200, {"status": "ok"}

    async def scenario() -> None:
        server = Server(StagedApp(build, probe))
        assert await server.start() == "lifespan.startup.complete"  # at once, before the build
        assert await call(server.app, "/health") == (200, b'{"status": "ok"}')
        waiting = asyncio.create_task(call(server.app, "/hello"))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "a request must wait for the application"
        assert record.events == []
        release.set()
        assert await asyncio.wait_for(waiting, 10) == (200, b"hello /hello")
        assert record.events == ["startup"], "the application's own start-up ran before its first request"
        assert await call(server.app, "/health") == (200, b"real health"), "once built, the app answers /health"
        assert await server.stop() == "lifespan.shutdown.complete"
        assert record.events == ["startup", "shutdown"]

    asyncio.run(scenario())
    assert len(probes) == 1


@pytest.mark.parametrize("how", ["build", "startup"])
def test_a_failed_build_or_start_up_stops_the_server_and_answers_503(how: str) -> None:
    stopped: list[bool] = []

    def build() -> Any:
        if how == "build":
            raise RuntimeError("cannot build")
        return real_app(Lifespan(), fail_startup=True)

    async def scenario() -> None:
        app = StagedApp(build, lambda: (200, {"status": "ok"}), on_failure=lambda: stopped.append(True))
        server = Server(app)
        assert await server.start() == "lifespan.startup.complete"
        status, body = await asyncio.wait_for(call(app, "/hello"), 10)
        assert status == 503 and b"TEMPORARILY_UNAVAILABLE" in body
        assert app.failed and stopped == [True]
        assert await server.stop() == "lifespan.shutdown.complete"

    asyncio.run(scenario())


def test_store_probe_reports_an_unreachable_store(settings: Settings) -> None:
    services = Services.open(settings)
    try:
        assert store_probe(services) == (200, {"status": "ok"})
    finally:
        services.close()
    home = settings.home / "not-a-database"
    home.mkdir()
    broken = Services.open(replace(settings, db_url=f"sqlite:///{home}"), migrate=False)  # a folder, not a file
    try:
        status, body = store_probe(broken)
    finally:
        broken.close()
    assert status == 503 and body["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert body["message"].startswith("metadata store unreachable: ")


def test_a_server_whose_app_fails_to_build_exits_with_status_3() -> None:
    import uvicorn

    from capstan.server.runner import bind_socket, run_uvicorn, uvicorn_options

    def build() -> Any:
        raise RuntimeError("cannot build")

    app = StagedApp(build, lambda: (200, {"status": "ok"}))
    options = uvicorn_options("127.0.0.1", 0)
    sock = bind_socket(uvicorn.Config(app, **options), "127.0.0.1", 0)
    try:
        assert run_uvicorn(uvicorn.Config(app, **options), sock) == 3
    finally:
        sock.close()
    assert app.failed
