"""Structured access logs of the serving app: one JSON line per HTTP request on the ``capstan.serving.access`` logger.

`AccessLogMiddleware` wraps the serving app (outside its request-id middleware, so the ``X-Request-Id`` it sees on
the response is the one the client gets) and, once the response is sent, logs at INFO one orjson-encoded object:

    {"time": "2025-01-02T03:04:05.678Z", "request_id": "...", "method": "POST", "path": "/v2/models/m/infer",
     "status": 200, "duration_ms": 1.234, "bytes_in": 160, "bytes_out": 120, "client": "127.0.0.1:51234",
     "model": "m", "version": "3"}

``model``/``version`` come from the scope keys `MODEL_KEY`/`VERSION_KEY` when the serving core set them (the
version it answered with), else from the route's ``name``/``version`` path parameters; they are left out when
neither is known. When the logger is not enabled for INFO the middleware costs one check per request.

Given a `LineSink` instead, the middleware hands it each line's bytes and makes no ``logging`` record:
`BufferedLineSink` collects them and writes many lines in one call (``capstan serve`` uses it on stderr).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capstan.clock import Clock, monotonic_of, system_clock

__all__ = ["LOGGER_NAME", "MODEL_KEY", "VERSION_KEY", "AccessLogMiddleware", "BufferedLineSink", "IsoTimestamps",
           "LineSink", "access_record"]

LOGGER_NAME = "capstan.serving.access"
MODEL_KEY = "capstan.serving.model"
"""Scope key where the serving core may put the model name that answered (the access log reads it)."""
VERSION_KEY = "capstan.serving.version"
"""Scope key where the serving core may put the model version that answered."""

_REQUEST_ID = b"x-request-id"
_SCOPE_REQUEST_ID = "capstan.request_id"  # where capstan.serving.app's request-id middleware keeps the id


class LineSink(Protocol):
    """Where the access log's lines go when not through ``logging``."""

    def write_line(self, line: bytes) -> None:
        """Take one line (UTF-8 JSON, without its newline); called on the event loop, so it must not block."""
        ...


class AccessLogMiddleware:
    """ASGI middleware logging one JSON line per HTTP request (see the module docstring): to ``sink`` when given,
    else on ``logger`` (default: the ``capstan.serving.access`` logger)."""

    def __init__(self, app: ASGIApp, *, logger: logging.Logger | None = None, clock: Clock = system_clock,
                 sink: LineSink | None = None) -> None:
        self.app = app
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.sink = sink
        self.clock = clock
        self.monotonic = monotonic_of(clock)
        self.timestamps = IsoTimestamps()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.sink is None and not self.logger.isEnabledFor(logging.INFO)):
            await self.app(scope, receive, send)
            return
        meter = _Meter(self, scope, receive, send)
        try:
            await self.app(scope, meter.receive, meter.send)
        finally:
            meter.log()  # when the app failed before the last body message (else already logged)


class _Meter:
    """Wraps ``receive`` and ``send``: counts body bytes both ways, keeps the status and the response's request id,
    and logs the line just before the response's last body message goes out (so it is written by the time the
    client has the whole response)."""

    __slots__ = ("_owner", "_receive", "_scope", "_send", "bytes_in", "bytes_out", "logged", "request_id",
                 "start", "started_ms", "status")

    def __init__(self, owner: AccessLogMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self._owner = owner
        self._scope = scope
        self._receive = receive
        self._send = send
        self.started_ms = owner.clock()
        self.start = owner.monotonic()
        self.bytes_in = 0
        self.bytes_out = 0
        self.status = 500  # what a request counts as when the app fails before responding
        self.request_id = ""
        self.logged = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.bytes_in += len(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            self.bytes_out += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.log()
        elif kind == "http.response.start":
            self.status = int(message["status"])
            for key, value in message.get("headers", ()):
                if key.lower() == _REQUEST_ID:
                    self.request_id = value.decode("latin-1")
        await self._send(message)

    def log(self) -> None:
        if self.logged:
            return
        self.logged = True
        owner = self._owner
        record = access_record(self._scope, time=owner.timestamps.format(self.started_ms),
                               seconds=owner.monotonic() - self.start,
                               status=self.status, request_id=self.request_id, bytes_in=self.bytes_in,
                               bytes_out=self.bytes_out)
        if owner.sink is not None:
            owner.sink.write_line(orjson.dumps(record))
            return
        logger = owner.logger
        # makeRecord + handle is logger.info without the caller lookup (a quarter of the cost; the caller is known)
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, orjson.dumps(record).decode(),
                                        (), None, "access_log"))


def access_record(scope: Scope, *, time: str, seconds: float, status: int, request_id: str,
                  bytes_in: int, bytes_out: int) -> dict[str, Any]:
    """The access-log object of one request (``scope`` after the app ran: routing has filled its path parameters);
    ``time`` is when it started, as `IsoTimestamps.format` writes it."""
    client = scope.get("client")
    record: dict[str, Any] = {
        "time": time,
        "request_id": request_id or str(scope.get(_SCOPE_REQUEST_ID) or ""),
        "method": scope.get("method", ""),
        "path": scope.get("path", ""),
        "status": status,
        "duration_ms": round(seconds * 1000.0, 3),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "client": f"{client[0]}:{client[1]}" if client else None,
    }
    params = scope.get("path_params") or {}
    model = scope.get(MODEL_KEY) or params.get("name")
    if model:
        record["model"] = str(model)
        version = scope.get(VERSION_KEY) or params.get("version")
        if version:
            record["version"] = str(version)
    return record


class IsoTimestamps:
    """Formats epoch milliseconds as ``2025-01-02T03:04:05.678Z``, formatting each second's prefix once (a datetime
    ``strftime`` costs more than the rest of the access-log line)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, epoch_ms: int) -> str:
        """The ISO 8601 UTC text of ``epoch_ms``, to the millisecond."""
        second, millis = divmod(epoch_ms, 1000)
        if second != self._second:
            self._prefix = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            self._second = second
        return f"{self._prefix}{millis:03d}Z"


class BufferedLineSink:
    """A `LineSink` that collects lines and passes them to ``write`` (newline-terminated, many in one call) from its
    own thread: every ``interval_s`` seconds, as soon as ``limit_bytes`` have accumulated, and at `close` (which
    writes every line taken before it). Start it with `start`; ``write`` errors are the writer's to handle."""

    def __init__(self, write: Callable[[bytes], object], *, limit_bytes: int = 64 * 1024,
                 interval_s: float = 0.1) -> None:
        self._write = write
        self._limit = limit_bytes
        self._interval = interval_s
        self._lines: list[bytes] = []
        self._size = 0
        self._lock = threading.Lock()  # guards _lines and _size
        self._write_lock = threading.Lock()  # keeps the batches in order between the thread and close
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="capstan-access-log", daemon=True)

    def start(self) -> BufferedLineSink:
        """Start the flushing thread; returns the sink."""
        self._thread.start()
        return self

    def write_line(self, line: bytes) -> None:
        """Keep ``line`` for the next write (O(1); wakes the thread once ``limit_bytes`` are waiting)."""
        with self._lock:
            self._lines.append(line)
            self._size += len(line) + 1
            full = self._size >= self._limit
        if full:
            self._wake.set()

    def flush(self) -> None:
        """Write every line taken so far, in one call (nothing when there is none)."""
        with self._write_lock:
            with self._lock:
                lines, self._lines, self._size = self._lines, [], 0
            if lines:
                lines.append(b"")
                self._write(b"\n".join(lines))

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stopped = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush()
