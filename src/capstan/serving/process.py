"""The ``capstan serve`` process: one loaded model composed with its observers into the app a worker runs.

`serve_process_app(model, reference, options, stores)` builds, in the process that will serve (with ``--workers``,
each forked worker, never the parent: the drift monitor's and the payload writer's threads and the stores' database
connections do not survive ``fork``):

- `capstan.serving.app.serving_app` for the model, observed by ``Observers([ServingMetrics, PayloadLogger?,
  DriftMonitor])``, with ``GET /metrics`` (always) and ``GET /drift`` (the monitor's report as JSON);
- the drift reference read from the model folder (``reference_profile.json``), else the first window of traffic;
- at shutdown (the app's lifespan): the payload logger writes what it holds, the drift monitor evaluates the
  windows already full, then the stores close;
- wrapped in `AccessLogMiddleware` unless the access log is off, its lines written on stderr by a
  `BufferedLineSink` (many lines per write, at least every 100 ms, the rest at shutdown).

Where drift events and payloads go is a `ServeStores`: `LocalStores` opens the local stores (the CLI passes
``Services.open(settings)``) on first use, in the thread that needs them, so a replica that never logs a payload
nor detects drift never connects; `RemoteStores` (``CAPSTAN_URL`` set: the stores belong to a server this process
cannot write events to) logs drift events on the ``capstan.serving`` logger and has no payload sink.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue, InvalidState
from capstan.events.records import Event

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp

    from capstan.events.ports import EventLog
    from capstan.serving.app import BatchingOptions, GrpcOptions
    from capstan.serving.drift_monitor import DriftMonitor, ModelReference
    from capstan.serving.model import ServedModel
    from capstan.serving.payload_log import PayloadSink

__all__ = [
    "EVENTS_LOGGER",
    "LocalStores",
    "LoggingEventLog",
    "OpenedStores",
    "RemoteStores",
    "ServeOptions",
    "ServeStores",
    "payload_prefix",
    "serve_process_app",
    "with_access_log",
]

EVENTS_LOGGER = "capstan.serving"
"""The logger drift events go to when this process cannot write to an event log (``CAPSTAN_URL`` set)."""


@dataclass(frozen=True)
class ServeOptions:
    """How one ``capstan serve`` process serves its model (the CLI's options, checked by `check`)."""

    max_body_bytes: int
    batching: BatchingOptions | None = None
    grpc: GrpcOptions | None = None
    payload_sample_rate: float = 0.0
    deployment: str | None = None
    project: str = ""
    drift_window: int = 1000
    access_log: bool = True

    def check(self, stores: ServeStores) -> None:
        """Refuse what cannot work, before anything listens: a sample rate outside 0..1, payload logging without
        pyarrow or without a payload sink, a drift window under 2 rows."""
        if not 0 <= self.payload_sample_rate <= 1:
            raise InvalidParameterValue(
                f"--payload-sample-rate must be between 0 and 1, got {self.payload_sample_rate}")
        if self.drift_window < 2:
            raise InvalidParameterValue(f"--drift-window must be at least 2 rows, got {self.drift_window}")
        if self.payload_sample_rate > 0:
            from capstan.serving.payload_log import require_pyarrow

            require_pyarrow()
            if not stores.has_payload_sink:
                raise InvalidState("--payload-sample-rate needs the local stores: payloads are written to the artifact "
                                   "store, which this process cannot reach with CAPSTAN_URL set")


def payload_prefix(model_name: str, deployment: str | None) -> str:
    """The artifact-store folder of this process's payload logs: ``deployments/<deployment>/payloads`` for a
    deployment's replica, else ``serve/<model name>/payloads``."""
    from capstan.serving.payload_log import deployment_payload_prefix

    return deployment_payload_prefix(deployment) if deployment else f"serve/{quote(model_name, safe='')}/payloads"


# ------------------------------------------------------------------------------------------------------ stores


class ServeStores(Protocol):
    """Where a serving process writes drift events and payloads."""

    @property
    def has_payload_sink(self) -> bool:
        """Whether `payload_sink` can be used."""
        ...

    def event_log(self) -> EventLog:
        """The event log drift events are appended to."""
        ...

    def payload_sink(self) -> PayloadSink:
        """Where payload Parquet files are written."""
        ...

    def close(self) -> None:
        """Release what was opened."""
        ...


class LoggingEventLog:
    """An `EventLog` that only logs: each event is one line on ``logger`` (Warning events at WARNING, others at
    INFO); nothing is stored, so `list` is empty."""

    def __init__(self, logger: logging.Logger | None = None, *, clock: Clock = system_clock) -> None:
        self.logger = logger or logging.getLogger(EVENTS_LOGGER)
        self.clock = clock

    def append(self, kind: str, object_id: str, reason: str, message: str = "", *, type: str = "Normal",
               project: str = "", data: Mapping[str, object] | None = None, time: int | None = None) -> Event:
        """Log the event and return it (id 0: it is not stored)."""
        event = Event(0, time or self.clock(), kind, object_id, type, reason, message, project, dict(data or {}))
        self._log(event)
        return event

    def append_many(self, events: Sequence[Event]) -> None:
        """Log each event."""
        for event in events:
            self._log(event)

    def append_within(self, conn: Connection, events: Sequence[Event]) -> None:
        """Log each event (there is no transaction to join)."""
        self.append_many(events)

    def list(self, kind: str | None = None, object_id: str | None = None, *, since_id: int = 0,
             limit: int = 1000, reason: str | None = None, newest_first: bool = False) -> tuple[Event, ...]:
        """Nothing: logged events are not kept."""
        return ()

    def _log(self, event: Event) -> None:
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        self.logger.log(level, "%s %s/%s: %s", event.reason, event.kind, event.object_id, event.message)


class OpenedStores(Protocol):
    """The stores `LocalStores` opens: `capstan.services.Services` is one."""

    @property
    def events(self) -> EventLog:
        """The event log."""
        ...

    @property
    def artifacts(self) -> PayloadSink:
        """The artifact store."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class LocalStores:
    """The local stores (``open_stores()``: the composition root's ``Services.open(settings)``), opened on first use
    by whichever thread needs them first (the drift monitor's or the payload writer's), and closed by `close`."""

    has_payload_sink = True

    def __init__(self, open_stores: Callable[[], OpenedStores]) -> None:
        self.open_stores = open_stores
        self._services: OpenedStores | None = None
        self._lock = threading.Lock()

    def services(self) -> OpenedStores:
        """The opened stores (opening them on the first call)."""
        with self._lock:
            if self._services is None:
                self._services = self.open_stores()
            return self._services

    def event_log(self) -> EventLog:
        """The local event log, opened when the first event is appended."""
        return _LazyEventLog(self)

    def payload_sink(self) -> PayloadSink:
        """The local artifact store, opened when the first file is written."""
        return _LazyArtifacts(self)

    def close(self) -> None:
        """Close the services if they were opened."""
        with self._lock:
            if self._services is not None:
                self._services.close()
                self._services = None


class _LazyEventLog:
    def __init__(self, stores: LocalStores) -> None:
        self.stores = stores

    def append(self, kind: str, object_id: str, reason: str, message: str = "", *, type: str = "Normal",
               project: str = "", data: Mapping[str, object] | None = None, time: int | None = None) -> Event:
        return self.stores.services().events.append(kind, object_id, reason, message, type=type, project=project,
                                                    data=data, time=time)

    def append_many(self, events: Sequence[Event]) -> None:
        self.stores.services().events.append_many(events)

    def append_within(self, conn: Connection, events: Sequence[Event]) -> None:
        self.stores.services().events.append_within(conn, events)

    def list(self, kind: str | None = None, object_id: str | None = None, *, since_id: int = 0,
             limit: int = 1000, reason: str | None = None, newest_first: bool = False) -> tuple[Event, ...]:
        return self.stores.services().events.list(kind, object_id, since_id=since_id, limit=limit, reason=reason,
                                                  newest_first=newest_first)


class _LazyArtifacts:
    def __init__(self, stores: LocalStores) -> None:
        self.stores = stores

    def put_bytes(self, path: str, data: bytes) -> object:
        return self.stores.services().artifacts.put_bytes(path, data)


class RemoteStores:
    """With ``CAPSTAN_URL`` set: drift events go to the ``capstan.serving`` logger; there is no payload sink."""

    has_payload_sink = False

    def event_log(self) -> EventLog:
        """A `LoggingEventLog`."""
        return LoggingEventLog()

    def payload_sink(self) -> PayloadSink:
        """None here: `ServeOptions.check` refuses payload logging first."""
        raise InvalidState("payload logging needs the local stores (CAPSTAN_URL is set)")

    def close(self) -> None:
        """Nothing to close."""


# --------------------------------------------------------------------------------------------------------- app


def serve_process_app(model: ServedModel, reference: ModelReference | None, options: ServeOptions,
                      stores: ServeStores) -> ASGIApp:
    """The app one serving process runs (see the module docstring). Call it in the process that serves: it starts
    the drift monitor's thread (and the payload writer's with a sample rate above 0)."""
    from starlette.routing import Route

    from capstan.serving.access_log import AccessLogMiddleware, BufferedLineSink
    from capstan.serving.app import serving_app
    from capstan.serving.drift_monitor import DriftMonitor
    from capstan.serving.metrics import ServingMetrics
    from capstan.serving.observe import Observers, ServingObserver

    metrics = ServingMetrics()
    drift = DriftMonitor(stores.event_log(), gauge=metrics, window_rows=options.drift_window,
                         deployment=options.deployment, project=options.project)
    drift.set_reference(model.name, str(model.version), reference)
    observers: list[ServingObserver] = [metrics, drift]
    closers = [drift.close, stores.close]
    if options.payload_sample_rate > 0:
        from capstan.serving.payload_log import PayloadLogger

        payloads = PayloadLogger(stores.payload_sink(), payload_prefix(model.name, options.deployment),
                                 options.payload_sample_rate)
        observers.insert(1, payloads)
        closers.insert(0, payloads.close)
    access_sink = BufferedLineSink(_write_stderr).start() if options.access_log else None
    if access_sink is not None:
        closers.append(access_sink.close)
    app = serving_app({model.name: model}, max_body_bytes=options.max_body_bytes, batching=options.batching,
                      observer=Observers(observers), metrics=metrics.exposition, grpc=options.grpc,
                      routes=[Route("/drift", _drift_endpoint(drift), methods=["GET"])], on_shutdown=closers)
    return AccessLogMiddleware(app, sink=access_sink) if access_sink is not None else app


def _write_stderr(data: bytes) -> None:
    """Write access-log lines on stderr (through its text layer, so they do not overtake lines logged there)."""
    import sys

    sys.stderr.write(data.decode())
    sys.stderr.flush()


def _drift_endpoint(monitor: DriftMonitor) -> Callable[[Request], Awaitable[Response]]:
    import orjson
    from starlette.responses import Response

    async def endpoint(request: Request) -> Response:
        return Response(orjson.dumps([r.to_dict() for r in monitor.report()]), media_type="application/json")

    return endpoint


def with_access_log(log_config: Mapping[str, Any], enabled: bool) -> dict[str, Any]:
    """``log_config`` (a `logging.config.dictConfig` document, as uvicorn takes it) with the access log
    (`capstan.serving.access_log`) written as JSON lines (format ``%(message)s``) on stderr, or switched off.

    It goes in the configuration uvicorn applies, not on the logger directly: each ``dictConfig`` resets the
    loggers below the ones it names (``capstan``)."""
    from capstan.serving.access_log import LOGGER_NAME

    config = copy.deepcopy(dict(log_config))
    config.setdefault("formatters", {})["capstan_access"] = {"format": "%(message)s"}
    config.setdefault("handlers", {})["capstan_access"] = {"class": "logging.StreamHandler",
                                                           "formatter": "capstan_access", "stream": "ext://sys.stderr"}
    config.setdefault("loggers", {})[LOGGER_NAME] = {"handlers": ["capstan_access"] if enabled else [],
                                                     "level": "INFO" if enabled else "WARNING", "propagate": False}
    return config
